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
from planner.estimate.count.params import count_params

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
KNOWN_APPROXIMATIONS = {"engine", "checkpointing", "gpu", "model", "attention", "lora", "kernels"}


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
    assert row["method"] in ("full", "lora", "qlora")
    assert bool(row["lora"]) == (row["method"] != "full"), "an adapter row states its rank, alpha, dropout, targets"
    assert row["grad_checkpointing"] in ("true", "false")
    if row["inter_node_gbit_s_per_node"]:
        assert float(row["inter_node_gbit_s_per_node"]) > 0
    marks = {m for m in row["approximated"].split(";") if m}
    assert marks <= KNOWN_APPROXIMATIONS
    if "FSDP" in row["engine_published"] or "FULL_SHARD" in row["engine_published"]:
        assert "engine" in marks, "FSDP is estimated as ZeRO-3: say so"
    if row["checkpointing_published"].startswith("selective"):
        # torchtitan's selective policy, stated as --selective-ac (the op policy, or every N-th layer)
        assert row["selective_ac"] == "op" or row["selective_ac"].isdigit(), "state the selective policy"
        assert row["grad_checkpointing"] == "false", "selective and full checkpointing are exclusive"
    else:
        assert row["selective_ac"] == ""
    if row["not_represented"]:
        assert len(row["not_represented"]) > 40, "not_represented gives the reason in words"


def test_rows_planner_cannot_represent_stay_in_the_report_and_out_of_the_acceptance():
    results = H.compare_all(ROWS)
    out = [c for c in results if not c.represented]
    selective = [c for c in results if c.row["selective_ac"]]
    # the selective rows are estimated with their policy and shown beside full checkpointing's figure
    assert selective and all(c.represented and c.planner_full_ckpt is not None for c in selective)
    held = [c for c in results if c.represented and c.split == "held_back"]
    assert H.summarise("held_back", held).n == sum(1 for r in ROWS if r["split"] == "held_back"
                                                   and not r["not_represented"])
    md = H.report_md(results)
    assert all(f"| {c.row['run_id']} |" in md for c in out)


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
    files = {(r["source"], r["source_path"]) for r in ROWS}
    assert abs(counts[0] - counts[1]) <= len(files)  # at most one extra calibration row per source file
    for source, path in files:  # every file contributes to both halves
        assert {r["split"] for r in ROWS if (r["source"], r["source_path"]) == (source, path)} == set(H.SPLITS)


def test_committed_report_reproduces():
    results = H.compare_all(ROWS)
    assert len(results) == len(ROWS)
    assert all(c.planner > 0 for c in results)
    assert (ROOT / "reports" / "time_accuracy.csv").read_text() == H.report_csv(results)
    assert (ROOT / "reports" / "time_accuracy.md").read_text() == H.report_md(results)


# ------------------------------------------------------------------ the per-phase model (issue 22 item 1)

from planner.estimate.count.params import split_params  # noqa: E402
from planner.estimate.throughput import (  # noqa: E402
    COLLECTIVE_EFFICIENCY,
    LOSS_BYTES_PER_LOGIT,
    MATMUL_HALF_HIDDEN,
    flops_per_token,
    kernel_efficiency,
    matmul_efficiency,
    step_time,
    throughput_from_step,
)
from planner.models import load_model  # noqa: E402
from planner.specs import AttnImpl, Cluster, Parallelism, TrainSpec  # noqa: E402

REL = 1e-9
A100 = catalog.gpu("a100-sxm-80gb")
H100 = catalog.gpu("h100-sxm-80gb")


def test_single_gpu_step_is_the_sum_of_its_phases():
    model = load_model("llama-3.1-8b")
    train = TrainSpec(seq_len=2048, micro_batch=2, grad_accum=3)
    st = step_time(model, train, Cluster(A100, 1, 1))
    assert st.modelled and st.communication_s == 0 and st.exposed_communication_s == 0
    assert st.total_s == pytest.approx(st.compute_s + st.attention_s + st.elementwise_s + st.optimizer_s, rel=REL)
    counts = count_params(model)
    fpt = flops_per_token(model, train, counts, split_params(counts, train))
    attn_fwd = 4 * 32 * 2048 * 4096
    tokens = 3 * 2 * 2048
    eff = matmul_efficiency(A100.name, 4096)
    assert eff == pytest.approx(kernel_efficiency(A100.name).matmul * 4096 / (4096 + MATMUL_HALF_HIDDEN),
                                rel=REL)
    assert st.compute_s == pytest.approx(tokens * (fpt.total - 3 * attn_fwd) / (A100.bf16_dense_flops * eff), rel=REL)
    # causal fused attention: half the scores, backward 2.5 x forward (FlashAttention's count)
    att = kernel_efficiency(A100.name).attention
    assert st.attention_s == pytest.approx(tokens * attn_fwd / 2 * 3.5 / (A100.bf16_dense_flops * att), rel=REL)
    # the loss alone moves LOSS_BYTES_PER_LOGIT per logit
    assert st.elementwise_s > tokens * LOSS_BYTES_PER_LOGIT * model.vocab_size / A100.memory_bandwidth_bytes_per_s
    # AdamW, 28 bytes per parameter of the whole model on one GPU
    assert st.optimizer_s == pytest.approx(counts.num_params * 28 / A100.memory_bandwidth_bytes_per_s, rel=REL)
    tp = throughput_from_step(st, fpt, Cluster(A100, 1, 1), mfu=None, num_tokens=0, price_per_gpu_hour=0)
    assert tp.mfu == pytest.approx(st.hardware_flops_utilisation) and 0.3 < tp.mfu < 0.8


def test_gpu_kind_and_shape_set_the_matmul_efficiency():
    def pair(name):  # the figures (each catalog record words its own provenance)
        return kernel_efficiency(name).matmul, kernel_efficiency(name).attention

    assert pair("a800-sxm-80gb") == pair("a100-sxm-40gb")
    assert pair("h200-sxm-141gb") == pair("h100-sxm-80gb")
    assert kernel_efficiency("rtx-4090-24gb").matmul <= kernel_efficiency("a100-sxm-80gb").matmul
    assert matmul_efficiency("a100-sxm-80gb", 768) < matmul_efficiency("a100-sxm-80gb", 8192)


def test_eager_attention_costs_more_than_a_causal_kernel():
    model = load_model("llama-3.2-1b")
    sdpa = step_time(model, TrainSpec(seq_len=4096), Cluster(H100, 1, 1))
    eager = step_time(model, TrainSpec(seq_len=4096, attn_impl=AttnImpl.EAGER), Cluster(H100, 1, 1))
    assert eager.attention_s > sdpa.attention_s and eager.elementwise_s > sdpa.elementwise_s


def test_zero3_hides_collectives_behind_compute_zero2_does_not():
    model = load_model("llama-3.1-8b")
    cluster = Cluster(H100, 8, 1)
    z3 = step_time(model, TrainSpec(parallelism=Parallelism.from_zero(3), seq_len=4096, micro_batch=4), cluster)
    assert z3.communication_s < z3.compute_s  # enough compute to hide behind
    assert z3.exposed_communication_s == pytest.approx(z3.communication_s / model.num_layers, rel=REL)
    z2 = step_time(model, TrainSpec(parallelism=Parallelism.from_zero(2), seq_len=4096, micro_batch=4), cluster)
    assert z2.exposed_communication_s == z2.communication_s  # overlap_comm false, as planner emits it
    # too little compute: the excess is exposed
    tiny = step_time(model, TrainSpec(parallelism=Parallelism.from_zero(3), seq_len=128), Cluster(H100, 16, 2, inter_node_bytes_per_s=10**9))
    assert tiny.exposed_communication_s == pytest.approx(tiny.communication_s - tiny.compute_s - tiny.attention_s
                                                         - tiny.elementwise_s, rel=1e-6)


def test_ddp_hides_the_all_reduce_behind_the_last_backward():
    model = load_model("qwen2.5-0.5b")
    st = step_time(model, TrainSpec(parallelism=Parallelism.from_zero(0), seq_len=4096, micro_batch=8), Cluster(H100, 8, 1))
    bw = H100.intra_node_bytes_per_s * COLLECTIVE_EFFICIENCY
    assert st.communication_s == pytest.approx(st.communication_bytes / bw, rel=REL)
    assert st.exposed_communication_s < st.communication_s


def test_override_keeps_every_flop_at_the_given_utilisation():
    model = load_model("llama-3.1-8b")
    train = TrainSpec(seq_len=2048)
    st = step_time(model, train, Cluster(H100, 1, 1), mfu=0.5)
    counts = count_params(model)
    fpt = flops_per_token(model, train, counts, split_params(counts, train))
    assert not st.modelled and st.attention_s == st.elementwise_s == st.optimizer_s == 0
    assert st.total_s == pytest.approx(2048 * fpt.total / (H100.bf16_dense_flops * 0.5), rel=REL)
