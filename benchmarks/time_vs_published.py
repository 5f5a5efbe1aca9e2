"""planner's time model against published training runs (issue 22 item 3): tokens/s per GPU, signed error.

    python benchmarks/time_vs_published.py           # writes reports/time_accuracy.md and .csv
    python benchmarks/time_vs_published.py --check   # exit 1 if the committed reports differ from a fresh run

Every row of benchmarks/published_runs.csv (sources and conversions: benchmarks/published_runs.md) is
estimated with planner's time model through the functions `planner.estimate.throughput.throughput` calls
(count_params, split_params, step_time with the row's global batch, flops_per_token, throughput_from_step),
twice: with the per-phase model (``mfu=None``, the figure the acceptance bound is about) and with the --mfu
override at 0.4 (``OVERRIDE_MFU``: what `planner estimate` printed by default before the per-phase model). The
memory estimator is not run: the time model does not read it.

    python benchmarks/time_vs_published.py --calibrate   # the grid search that set the matmul constants

Error is signed, (planner - published) / published: negative means planner predicts fewer tokens/s than the
run reported (pessimistic). Rows are split once into a calibration half and a held-back half by a fixed
rule (``split_of`` below; the `split` column of the CSV records it): the time model may be tuned on the
calibration half only, and the held-back half is what issue 22's acceptance bound is measured on. Rows whose
setup planner cannot state (their ``not_represented`` column says why) stay in the reports, with planner's
bounds where it has them, and count in neither the calibration nor the acceptance figure; the report gives
the figures with them too. The report itself (summaries, the Markdown and CSV) is time_published_report.py.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from planner import catalog  # noqa: E402
from planner.estimate.count.params import count_params, split_params  # noqa: E402
from planner.estimate.throughput import (  # noqa: E402
    StepTime,
    flops_per_token,
    step_time,
    throughput_from_step,
)
from planner.models import spec_from_config  # noqa: E402
from planner.specs import (  # noqa: E402
    AttnImpl,
    Cluster,
    Method,
    ModelSpec,
    Parallelism,
    PeftDtype,
    Precision,
    TrainSpec,
)
from planner.specs.train import LoraSpec  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from time_published_report import (  # noqa: E402  (the report half of this script, beside it)
    BOUND_MAX_ABS,
    BOUND_MEDIAN_ABS,
    OVERRIDE_MFU,
    SPLITS,
    Summary,
    _pct,
    report_csv,
    report_md,
    summarise,
)

RUNS_CSV = ROOT / "benchmarks" / "published_runs.csv"
REPORT_MD = ROOT / "reports" / "time_accuracy.md"
REPORT_CSV = ROOT / "reports" / "time_accuracy.csv"



REQUIRED_COLUMNS = (
    "run_id", "source", "source_path", "source_version", "table", "model_published", "model", "gpu_published",
    "gpu", "num_gpus", "num_nodes", "inter_node_gbit_s_per_node", "engine_published", "zero_stage", "method", "lora",
    "seq_len",
    "micro_batch", "grad_accum", "global_batch", "checkpointing_published", "grad_checkpointing",
    "selective_ac", "precision_published", "precision", "attn_published", "attn_impl", "compile",
    "published_tokens_per_s_per_gpu", "published_metric", "source_num_params", "approximated", "not_represented",
    "split",
)

# The calibration grid (``--calibrate``): matmul shares of peak for A100 and H100 and the half-width of the
# narrow-layer penalty, scored by the mean |log(planner / published)| over the calibration half only.
GRID_A100 = (0.64, 0.66, 0.68, 0.70, 0.72, 0.74, 0.76, 0.78)
GRID_H100 = (0.46, 0.48, 0.50, 0.52, 0.54, 0.56, 0.58)
GRID_HALF_HIDDEN = (128, 192, 256, 384, 512, 768)


def load_runs(path: Path = RUNS_CSV) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def split_of(rows: list[dict[str, str]]) -> dict[str, str]:
    """The fixed split: inside each source file (source, source_path), rows sorted by run_id alternate,
    the first to calibration. Both halves spread over publishers, GPUs and sizes, and rows added from a new
    file never move an existing row from one half to the other."""
    groups: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        groups.setdefault((r["source"], r["source_path"]), []).append(r["run_id"])
    return {run_id: SPLITS[i % 2] for ids in groups.values() for i, run_id in enumerate(sorted(ids))}


def model_for(row: dict[str, str]) -> ModelSpec:
    """A catalog name, or a config under benchmarks/ (MPT as its GPT-2 module layout; n_positions follows the
    run's sequence length as llm-foundry's benchmark sweep sets max_seq_len, which makes planner's
    parameter count equal the source's NumParams column)."""
    name = row["model"]
    if name.endswith(".json"):
        cfg = json.loads((ROOT / name).read_text())
        cfg["n_positions"] = int(row["seq_len"])
        return spec_from_config(cfg, Path(name).stem, name)
    return spec_from_config(catalog.model_config(name), name, "catalog")


def lora_for(row: dict[str, str]) -> LoraSpec:
    """The ``lora`` column, ``rank;alpha;dropout;targets`` (targets ``,``-separated); planner's default if empty."""
    if not row["lora"]:
        return LoraSpec()
    rank, alpha, dropout, targets = row["lora"].split(";")
    return LoraSpec(rank=int(rank), alpha=int(alpha), dropout=float(dropout), targets=tuple(targets.split(",")))


def train_for(row: dict[str, str]) -> TrainSpec:
    method = Method(row["method"])
    # 16-bit adapters with a pure 16-bit base (the LoRA rows' frameworks create adapters in the base's dtype)
    lora_dtype = PeftDtype.BIT16 if method is not Method.FULL and row["precision"] == "bf16" else PeftDtype.FP32
    return TrainSpec(
        method=method,
        lora=lora_for(row),
        lora_dtype=lora_dtype,
        precision=Precision(row["precision"]),
        parallelism=Parallelism.from_zero(int(row["zero_stage"])),
        micro_batch=int(row["micro_batch"]),
        seq_len=int(row["seq_len"]),
        grad_accum=int(row["grad_accum"]),
        grad_checkpointing=row["grad_checkpointing"] == "true",
        selective_ac=row["selective_ac"],
        attn_impl=AttnImpl(row["attn_impl"]),
    )


def cluster_for(row: dict[str, str]) -> Cluster:
    kw = {}
    if row["inter_node_gbit_s_per_node"]:
        kw["inter_node_bytes_per_s"] = int(float(row["inter_node_gbit_s_per_node"]) * 1e9 / 8)
    return Cluster(gpu=catalog.gpu(row["gpu"]), num_gpus=int(row["num_gpus"]), num_nodes=int(row["num_nodes"]), **kw)


@dataclass(frozen=True)
class Compared:
    row: dict[str, str]
    split: str
    published: float
    planner: float  # the per-phase model (mfu=None)
    step: StepTime
    planner_override: float  # --mfu OVERRIDE_MFU
    planner_full_ckpt: float | None  # selective checkpointing rows: the per-phase model with full checkpointing

    @property
    def represented(self) -> bool:
        """False where the published setup is one planner cannot state (the row's not_represented says why):
        kept in the table and the report, left out of the calibration and the acceptance figures."""
        return not self.row["not_represented"]

    @property
    def error(self) -> float:
        return (self.planner - self.published) / self.published

    @property
    def error_override(self) -> float:
        return (self.planner_override - self.published) / self.published


def _tokens_per_s(row: dict[str, str], mfu: float | None, *, full_ckpt: bool = False) -> tuple[float, StepTime]:
    model, train, cluster = model_for(row), train_for(row), cluster_for(row)
    if full_ckpt:
        train = dataclasses.replace(train, grad_checkpointing=True, selective_ac="")
    counts = count_params(model)
    split_p = split_params(counts, train)
    st = step_time(model, train, cluster, mfu=mfu, global_batch_size=int(row["global_batch"]), counts=counts,
                   split=split_p)
    fpt = flops_per_token(model, train, counts, split_p)
    tp = throughput_from_step(st, fpt, cluster, mfu=mfu, num_tokens=0, price_per_gpu_hour=0.0)
    return tp.tokens_per_s_per_gpu, st


def compare_row(row: dict[str, str], split: str) -> Compared:
    modelled, st = _tokens_per_s(row, None)
    override, _ = _tokens_per_s(row, OVERRIDE_MFU)
    # Selective checkpointing recomputes less than full and more than none: both bounds are shown.
    full = _tokens_per_s(row, None, full_ckpt=True)[0] if row["checkpointing_published"].startswith("selective") \
        else None
    return Compared(row=row, split=split, published=float(row["published_tokens_per_s_per_gpu"]),
                    planner=modelled, step=st, planner_override=override, planner_full_ckpt=full)


def compare_all(rows: list[dict[str, str]] | None = None) -> list[Compared]:
    rows = load_runs() if rows is None else rows
    splits = split_of(rows)
    return [compare_row(r, splits[r["run_id"]]) for r in rows]


def calibrate(rows: list[dict[str, str]] | None = None) -> list[tuple[float, float, float, int]]:
    """Score every grid point on the calibration half only: (mean |log error|, A100, H100, half-hidden),
    best first. Patches the module constants for the duration and restores them."""
    import math

    from planner.estimate import throughput as th

    rows = load_runs() if rows is None else rows
    splits = split_of(rows)
    cal = [r for r in rows if splits[r["run_id"]] == "calibration" and not r["not_represented"]]
    saved = th.KERNEL_EFFICIENCY, th.MATMUL_HALF_HIDDEN
    scores = []
    try:
        for a100 in GRID_A100:
            for h100 in GRID_H100:
                for half in GRID_HALF_HIDDEN:
                    a = th.KernelEfficiency(a100, th._A100.attention, "grid")
                    h = th.KernelEfficiency(h100, th._H100.attention, "grid")
                    th.KERNEL_EFFICIENCY = (("a100-", a), ("a800-", a), ("h100-", h), ("h200-", h))
                    th.MATMUL_HALF_HIDDEN = half
                    errs = [_tokens_per_s(r, None)[0] / float(r["published_tokens_per_s_per_gpu"]) for r in cal]
                    scores.append((statistics.mean(abs(math.log(e)) for e in errs), a100, h100, half))
    finally:
        th.KERNEL_EFFICIENCY, th.MATMUL_HALF_HIDDEN = saved
    return sorted(scores)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed reports, write nothing")
    ap.add_argument("--calibrate", action="store_true", help="print the calibration grid's best points, write nothing")
    args = ap.parse_args(argv)
    if args.calibrate:
        for score, a100, h100, half in calibrate()[:10]:
            print(f"mean |log err| {score:.4f}  A100 matmul {a100:.2f}  H100 matmul {h100:.2f}  half-hidden {half}")
        return 0
    results = compare_all()
    md, rows_csv = report_md(results), report_csv(results)
    if args.check:
        same = REPORT_MD.read_text() == md and REPORT_CSV.read_text() == rows_csv
        print("reports/time_accuracy.* up to date" if same else "reports/time_accuracy.* differ from a fresh run")
        return 0 if same else 1
    REPORT_MD.write_text(md)
    REPORT_CSV.write_text(rows_csv)
    for name in SPLITS + ("all",):
        part = [c for c in results if c.represented and (name == "all" or c.split == name)]
        for label, s in (("per-phase", summarise(name, part)), ("--mfu 0.4", summarise(name, part, override=True))):
            print(f"{name:12s} {label:10s} n={s.n:3d} median |err| {_pct(s.median_abs):>6s}  "
                  f"max |err| {_pct(s.max_abs):>6s}  median signed {_pct(s.median_signed, True)}")
    return 0


__all__ = ["BOUND_MAX_ABS", "BOUND_MEDIAN_ABS", "OVERRIDE_MFU", "SPLITS", "Compared", "Summary", "calibrate",
           "compare_all", "compare_row", "load_runs", "report_csv", "report_md", "split_of", "summarise"]


if __name__ == "__main__":
    sys.exit(main())
