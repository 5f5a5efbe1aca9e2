"""The published-runs table (benchmarks/published_runs.csv) and its comparison harness (issue 22 item 3).

The table's rows are copied from their sources (benchmarks/published_runs.md); these tests check what can
be checked without the sources: every row names one, its numbers are positive and consistent, its model and
GPU resolve, the MPT configs reproduce the source's NumParams, the split follows its rule, and a fresh run of
benchmarks/time_vs_published.py reproduces the committed reports/time_accuracy.md and .csv.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from planner import catalog
from planner.estimate.params import count_params

ROOT = Path(__file__).resolve().parent.parent


def _harness():
    spec = importlib.util.spec_from_file_location("time_vs_published", ROOT / "benchmarks" / "time_vs_published.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("time_vs_published", mod)
    spec.loader.exec_module(mod)
    return mod


H = _harness()
ROWS = H.load_runs()
MIN_ROWS = 15  # issue 22: "at least 15 published runs"
KNOWN_APPROXIMATIONS = {"engine", "checkpointing", "gpu", "model"}


def test_table_has_enough_rows_with_unique_ids():
    assert len(ROWS) >= MIN_ROWS
    ids = [r["run_id"] for r in ROWS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["run_id"])
def test_row_schema(row):
    assert tuple(row) == H.REQUIRED_COLUMNS
    for col in ("source", "source_path", "source_version", "table", "model_published", "gpu_published",
                "engine_published", "checkpointing_published", "precision_published", "published_metric"):
        assert row[col].strip(), f"{row['run_id']}: {col} is empty"
    assert "/" in row["source"], "source is owner/repository"
    for col in ("num_gpus", "num_nodes", "seq_len", "micro_batch", "grad_accum", "global_batch"):
        assert int(row[col]) > 0, col
    assert float(row["published_tokens_per_s_per_gpu"]) > 0
    assert int(row["global_batch"]) == int(row["micro_batch"]) * int(row["grad_accum"]) * int(row["num_gpus"])
    assert int(row["num_gpus"]) % int(row["num_nodes"]) == 0
    assert int(row["zero_stage"]) in (0, 1, 2, 3)
    assert row["grad_checkpointing"] in ("true", "false")
    if row["inter_node_gbit_s_per_node"]:
        assert float(row["inter_node_gbit_s_per_node"]) > 0
    marks = {m for m in row["approximated"].split(";") if m}
    assert marks <= KNOWN_APPROXIMATIONS
    if "FSDP" in row["engine_published"] or "FULL_SHARD" in row["engine_published"]:
        assert "engine" in marks, "FSDP is estimated as ZeRO-3: say so"
    if row["checkpointing_published"].startswith("selective"):
        assert "checkpointing" in marks


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["run_id"])
def test_row_resolves(row):
    """The GPU is in the catalog, the model loads, and the specs the harness builds are valid."""
    assert catalog.gpu(row["gpu"]).name == row["gpu"]
    model = H.model_for(row)
    H.train_for(row)
    H.cluster_for(row)
    if row["source_num_params"]:
        assert count_params(model).num_params == int(row["source_num_params"])


def test_split_follows_its_rule_and_halves():
    rule = H.split_of(ROWS)
    assert {r["run_id"]: r["split"] for r in ROWS} == rule
    counts = [sum(1 for r in ROWS if r["split"] == s) for s in H.SPLITS]
    assert abs(counts[0] - counts[1]) <= 1


def test_committed_report_reproduces():
    results = H.compare_all(ROWS)
    assert len(results) == len(ROWS)
    assert all(c.planner > 0 for c in results)
    assert (ROOT / "reports" / "time_accuracy.csv").read_text() == H.report_csv(results)
    assert (ROOT / "reports" / "time_accuracy.md").read_text() == H.report_md(results)
