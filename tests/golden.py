"""Golden outputs that a refactoring must leave byte-identical (issue 15).

``estimates()``: the JSON of ``planner estimate --json`` for every catalog model on 1, 8 and 64 GPUs with the
default flags, with the one field that describes the machine rather than the estimate (``modelled.installed``,
the package versions found here) left out. ``accuracy_rows()``: every estimated column of the AVX2-path
accuracy table (``reports/avx2/accuracy.csv``), re-estimated from the cell inputs on that path (no oneDNN
workspaces, so no measurement is needed to reproduce it on any machine).

``python tests/golden.py --update`` rewrites ``tests/data/golden_estimates.json.gz`` after a change that is
meant to move an estimate; commit it on its own, with the reason.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOLDEN_ESTIMATES = ROOT / "tests" / "data" / "golden_estimates.json.gz"
AVX2_ACCURACY = ROOT / "reports" / "avx2" / "accuracy.csv"
GPU_COUNTS = (1, 8, 64)


def _cli_json(*args: str) -> dict:
    from planner.cli.app import app

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            app(list(args), standalone_mode=False)
        except SystemExit as exc:  # typer exits 0 after a command
            if exc.code:
                raise RuntimeError(f"planner {' '.join(args)} exited {exc.code}: {err.getvalue()}") from None
    return json.loads(out.getvalue())


def estimates() -> dict[str, dict]:
    from planner import catalog

    out = {}
    for name in sorted(catalog.model_names()):
        for n in GPU_COUNTS:
            d = _cli_json("estimate", "--model", name, "--gpus", str(n), "--json")
            d.get("modelled", {}).pop("installed", None)
            out[f"{name} --gpus {n}"] = d
    return out


def load_golden() -> dict[str, dict]:
    with gzip.open(GOLDEN_ESTIMATES, "rt", encoding="utf-8") as f:
        return json.load(f)


def differences(a, b, path: str = "") -> list[str]:
    """Where two JSON values differ (paths, at most a few per branch)."""
    if type(a) is not type(b):
        return [f"{path}: {a!r} != {b!r}"]
    if isinstance(a, dict):
        out = [f"{path}.{k}: only in one" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            out += differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def accuracy_rows() -> list[tuple[str, dict[str, str], dict[str, str]]]:
    """(cell id, committed estimated columns, re-estimated columns) for every compared rank of the AVX2 table."""
    from planner import catalog
    from planner.estimate.core import estimate
    from planner.estimate.step.cpu_kernels import LEGACY
    from planner.specs import Cluster
    from planner.validate.matrix import LATE_FIELDS, Cell
    from planner.validate.results import CATEGORIES

    names = {f.name: f.type for f in fields(Cell)}
    out = []
    with open(AVX2_ACCURACY, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["status"] != "ok" or row["rank"] == "":
                continue
            kwargs = {}
            for k, typ in names.items():
                if k in LATE_FIELDS and not row.get(k):  # a table from before the column: the default
                    continue
                v = row[k]
                kwargs[k] = (v == "True") if typ in ("bool", bool) else float(v) if k == "lora_dropout" else (
                    int(v) if typ in ("int", int) else v)
            cell = Cell(**kwargs)
            assert cell.id == row["id"], (cell.id, row["id"])
            cluster = Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=cell.num_ranks)
            est = estimate(cell.model_spec(), cell.train_spec(), cluster, device="cpu", allow_longer=True,
                           rank=int(row["rank"]), cpu=LEGACY)
            keys = [f"estimated_{c}_bytes" for c in CATEGORIES if c != "other"] + ["estimated_peak_phase"]
            mine = {f"estimated_{c}_bytes": str(getattr(est.per_gpu, f"{c}_bytes")) for c in CATEGORIES
                    if c != "other"} | {"estimated_peak_phase": est.peak_phase}  # fmt: skip
            out.append((f"{cell.id} rank {row['rank']}", {k: row[k] for k in keys}, mine))
    return out


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/golden.py --update")
    data = estimates()
    tmp = GOLDEN_ESTIMATES.with_suffix(".tmp")
    with gzip.GzipFile(tmp, "wb", mtime=0) as f:
        f.write(json.dumps(data, sort_keys=True, indent=0).encode())
    tmp.replace(GOLDEN_ESTIMATES)
    print(f"{GOLDEN_ESTIMATES}: {len(data)} estimates")
