"""FLOPs per token, step time, tokens/s, time and cost (planner.estimate.throughput)."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest

from planner import catalog
from planner.errors import PlannerError
from planner.estimate.core import estimate
from planner.estimate.count.params import count_params, split_params
from planner.estimate.throughput import (
    COLLECTIVE_EFFICIENCY,
    CPU_ADAM_PARAMS_PER_S_PER_NODE,
    DEFAULT_MFU,
    flops_per_token,
    step_time,
    throughput,
)
from planner.models import load_model, spec_from_config
from planner.specs import Cluster, Method, Offload, Parallelism, TrainSpec

REL = 1e-9  # exact arithmetic, float rounding only
H100 = catalog.gpu("h100-sxm-80gb")


def _gpt(h: int, layers: int, heads: int, vocab: int, n_positions: int = 4096):
    cfg = {"model_type": "gpt2", "n_embd": h, "n_layer": layers, "n_head": heads, "vocab_size": vocab,
           "n_positions": n_positions, "tie_word_embeddings": True}
    return spec_from_config(cfg, f"gpt-{h}x{layers}")


def _fpt(model, train):
    counts = count_params(model)
    return flops_per_token(model, train, counts, split_params(counts, train))


@pytest.mark.parametrize("s", [1024, 2048])
def test_gpt_flops_match_narayanan(s):
    # Narayanan et al. 2021 (arXiv 2104.04473, §5.1): a GPT layer has 12h^2 weights; one iteration of B
    # sequences costs 72*B*s*L*h^2*(1 + s/(6h) + V/(12hL)) FLOPs without recomputation and
    # 96*B*s*L*h^2*(1 + s/(6h) + V/(16hL)) with full recomputation. Per token (divide by B*s):
    h, layers, heads, vocab = 2048, 24, 16, 50257
    model = _gpt(h, layers, heads, vocab)
    plain = _fpt(model, TrainSpec(seq_len=s))
    ckpt = _fpt(model, TrainSpec(seq_len=s, grad_checkpointing=True))
    want_plain = 72 * layers * h**2 * (1 + s / (6 * h) + vocab / (12 * h * layers))
    want_ckpt = 96 * layers * h**2 * (1 + s / (6 * h) + vocab / (16 * h * layers))
    assert plain.total == pytest.approx(want_plain, rel=REL)
    assert ckpt.total == pytest.approx(want_ckpt, rel=REL)


def test_llama_8b_six_p_plus_attention():
    # Kaplan et al. 2020 Table 1: C = 6N per token (N: non-embedding weights, plus the output head here) and
    # 12*L*s*d_attn for attention. Llama-3.1-8B: per layer q,o 4096x4096, k,v 4096x1024, gate/up/down
    # 4096x14336; head 4096 x 128256.
    model = load_model("llama-3.1-8b")
    per_layer = 4096 * (4096 + 1024 + 1024 + 4096) + 3 * 4096 * 14336
    matmul = 32 * per_layer + 4096 * 128256
    assert matmul == 7_504_658_432
    fpt = _fpt(model, TrainSpec(seq_len=2048))
    assert fpt.num_matmul_params == matmul
    assert fpt.total == pytest.approx(6 * matmul + 12 * 32 * 2048 * 4096, rel=REL)


def test_lora_skips_frozen_weight_gradients():
    model = load_model("llama-3.1-8b")
    full = _fpt(model, TrainSpec(seq_len=2048))
    lora_train = TrainSpec(method=Method.LORA, seq_len=2048)
    counts = count_params(model)
    split = split_params(counts, lora_train)
    lora = flops_per_token(model, lora_train, counts, split)
    p, a = full.num_matmul_params, split.num_adapter
    attn = 12 * 32 * 2048 * 4096
    # Frozen base: 2P forward + 2P input gradients; adapters 6 per parameter (Hu et al. 2021).
    assert lora.total == pytest.approx(4 * p + 6 * a + attn, rel=REL)
    assert lora.total < full.total
    qlora = _fpt(model, dataclasses.replace(lora_train, method=Method.QLORA))
    assert qlora.total == pytest.approx(lora.total, rel=REL)  # dequantization is time, not FLOPs


def test_recompute_adds_one_layer_forward():
    model = load_model("llama-3.1-8b")
    plain = _fpt(model, TrainSpec(seq_len=4096))
    ckpt = _fpt(model, TrainSpec(seq_len=4096, grad_checkpointing=True))
    head = 4096 * 128256
    assert ckpt.recompute == pytest.approx(2 * (plain.num_matmul_params - head) + 4 * 32 * 4096 * 4096, rel=REL)
    assert ckpt.total > plain.total


def test_moe_counts_active_experts_only():
    model = load_model("mixtral-8x7b-v0.1")
    counts = count_params(model)
    fpt = _fpt(model, TrainSpec(seq_len=1024))
    # Two of eight experts per token: about 12.9B active of 46.7B.
    assert fpt.num_matmul_params < 0.3 * counts.num_params
    assert fpt.num_matmul_params == pytest.approx(counts.num_active_params - counts.embedding - 2 * 4096 * 32 - 4096, rel=0.001)


def _est(model="llama-3.1-8b", gpus=1, nodes=1, gpu=H100, **train):
    return estimate(load_model(model), TrainSpec(**train), Cluster(gpu, gpus, nodes))


def test_single_gpu_tokens_per_second_is_peak_times_mfu_over_flops():
    est = _est(seq_len=2048, micro_batch=2, grad_accum=4)
    tp = throughput(est, mfu=0.5)
    fpt = _fpt(est.model, est.train)
    assert tp.flops_per_token == pytest.approx(fpt.total, rel=REL)
    assert tp.tokens_per_s_per_gpu == pytest.approx(H100.bf16_dense_flops * 0.5 / fpt.total, rel=REL)
    assert tp.step_time_s == pytest.approx(2 * 4 * 2048 / tp.tokens_per_s_per_gpu, rel=REL)
    half = throughput(est, mfu=0.25)
    assert half.tokens_per_s_per_gpu == pytest.approx(tp.tokens_per_s_per_gpu / 2, rel=REL)


def test_time_and_cost():
    est = _est(gpus=8, parallelism=Parallelism.from_zero(2), seq_len=2048, micro_batch=4)
    tp = throughput(est, mfu=DEFAULT_MFU, num_tokens=10**9, price_per_gpu_hour=2.5)
    assert tp.total_time_s == pytest.approx(10**9 / (tp.tokens_per_s_per_gpu * 8), rel=REL)
    assert tp.cost == pytest.approx(tp.total_time_s / 3600 * 8 * 2.5, rel=REL)
    none = throughput(est, mfu=DEFAULT_MFU)
    assert none.total_time_s == 0 and none.cost == 0 and none.num_tokens == 0


def test_zero_communication_volumes():
    # ZeRO paper (Rajbhandari et al. 2020, §7): DP and stages 1-2 move 2 x the 16-bit parameters per step,
    # stage 3 moves 3 x (forward and backward all-gathers + gradient reduce-scatter).
    model = load_model("llama-3.1-8b")
    cluster = Cluster(H100, 8, 1)
    vol = {}
    for stage in (0, 1, 2, 3):
        st = step_time(model, TrainSpec(parallelism=Parallelism.from_zero(stage), micro_batch=1, grad_accum=1), cluster, mfu=0.4)
        vol[stage] = st.communication_bytes
    p16 = 2 * count_params(model).num_params
    assert vol[0] == pytest.approx(2 * 7 / 8 * p16, rel=REL)
    assert vol[1] == vol[0] == vol[2]
    assert vol[3] == pytest.approx(1.5 * vol[0], rel=REL)
    # Stage 2 reduce-scatters each micro-batch; stage 3 also gathers parameters each micro-batch.
    st2 = step_time(model, TrainSpec(parallelism=Parallelism.from_zero(2), grad_accum=4), cluster, mfu=0.4)
    assert st2.communication_bytes == pytest.approx((4 + 1) * 7 / 8 * p16, rel=REL)
    st3 = step_time(model, TrainSpec(parallelism=Parallelism.from_zero(3), grad_accum=4), cluster, mfu=0.4)
    assert st3.communication_bytes == pytest.approx(4 * vol[3], rel=REL)
    bw = H100.intra_node_bytes_per_s * COLLECTIVE_EFFICIENCY
    assert st3.communication_s == pytest.approx(st3.communication_bytes / bw, rel=REL)


def test_one_gpu_has_no_communication_and_nodes_bound_the_ring():
    model = load_model("llama-3.1-8b")
    one = step_time(model, TrainSpec(parallelism=Parallelism.from_zero(3)), Cluster(H100, 1, 1), mfu=0.4)
    assert one.communication_s == 0
    inter = step_time(model, TrainSpec(parallelism=Parallelism.from_zero(1)), Cluster(H100, 16, 2), mfu=0.4)
    # NCCL runs one ring per NIC and each ring crosses between nodes once, so a node's NICs together
    # (400 GB/s here, below NVLink's 450 GB/s per GPU) bound the ring, not a GPU's eighth of them.
    bw = min(H100.intra_node_bytes_per_s, 400e9) * COLLECTIVE_EFFICIENCY
    assert inter.communication_s == pytest.approx(inter.communication_bytes / bw, rel=REL)
    slow = step_time(model, TrainSpec(parallelism=Parallelism.from_zero(1)), Cluster(H100, 16, 2, inter_node_bytes_per_s=100e9), mfu=0.4)
    assert slow.communication_s == pytest.approx(4 * inter.communication_s, rel=REL)  # 400 / 100 GB/s


def test_offload_costs_host_transfers_and_cpu_adam():
    model = load_model("llama-3.1-8b")
    cluster = Cluster(H100, 8, 1)
    plain = step_time(model, TrainSpec(parallelism=Parallelism.from_zero(2)), cluster, mfu=0.4)
    off = step_time(model, TrainSpec(parallelism=Parallelism.from_zero(2, Offload.OPTIMIZER)), cluster, mfu=0.4)
    params = count_params(model).num_params
    assert off.cpu_optimizer_s == pytest.approx(params / 8 * 8 / CPU_ADAM_PARAMS_PER_S_PER_NODE, rel=REL)
    assert off.offload_transfer_s > 0 and plain.offload_transfer_s == 0 and plain.cpu_optimizer_s == 0
    assert off.total_s > plain.total_s
    both = step_time(model, TrainSpec(parallelism=Parallelism.from_zero(3, Offload.OPTIMIZER_PARAMS)), cluster, mfu=0.4)
    only_opt = step_time(model, TrainSpec(parallelism=Parallelism.from_zero(3, Offload.OPTIMIZER)), cluster, mfu=0.4)
    assert both.host_transfer_bytes > only_opt.host_transfer_bytes


def test_qlora_pays_dequantization():
    model = load_model("llama-3.1-8b")
    cluster = Cluster(H100, 1, 1)
    lora = step_time(model, TrainSpec(method=Method.LORA), cluster, mfu=0.4)
    qlora = step_time(model, TrainSpec(method=Method.QLORA), cluster, mfu=0.4)
    assert lora.dequant_s == 0 and qlora.dequant_s > 0
    assert qlora.total_s > lora.total_s
    ckpt = step_time(model, TrainSpec(method=Method.QLORA, grad_checkpointing=True), cluster, mfu=0.4)
    assert ckpt.dequant_s == pytest.approx(1.5 * qlora.dequant_s, rel=REL)  # a third pass: recomputation


def test_global_batch_sets_accumulation():
    est = _est(gpus=8, micro_batch=2, seq_len=1024)
    tp = throughput(est, mfu=0.4, global_batch_size=64)  # 64 / (2 x 8) = 4 micro-batches per step
    tp1 = throughput(est, mfu=0.4)
    assert tp.step_time_s > 3 * tp1.step_time_s


@pytest.mark.parametrize("mfu", [0, -0.1, 1.01, math.nan, 2])
def test_bad_mfu(mfu):
    with pytest.raises(PlannerError, match="--mfu must be in"):
        throughput(_est(), mfu=mfu)


@pytest.mark.parametrize("price", [-1, -0.01, math.inf, math.nan])
def test_bad_price(price):
    with pytest.raises(PlannerError, match="--price-per-gpu-hour"):
        throughput(_est(), mfu=0.4, price_per_gpu_hour=price)


def test_bad_tokens():
    with pytest.raises(PlannerError, match="--tokens"):
        throughput(_est(), mfu=0.4, num_tokens=-5)


def test_modules_do_not_import_torch():
    code = (
        "import sys; import planner.estimate.throughput, planner.plan.compare_gpus, planner.plan.recommend, "
        "planner.plan.advice, planner.plan.search, planner.cli.recommend_cmd; "
        "bad = [m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_step_breakdown_adds_up_to_the_step_in_every_catalog_row():
    """Issue 22 item 4: --json's throughput.step says where the time goes; GPU compute + exposed communication +
    host (offload copies, CPU Adam) is the step, for every row of every catalog model on 1, 8 and 64 GPUs."""
    import golden

    rows = [r for est in golden.load_golden().values() for r in est["rows"]]
    assert len(rows) > 1000
    for r in rows:
        th, st = r["throughput"], r["throughput"]["step"]
        parts = (st["matmul_s"] + st["attention_s"] + st["elementwise_s"] + st["dequant_s"] + st["optimizer_s"]
                 + st["exposed_communication_s"] + st["offload_transfer_s"] + st["cpu_optimizer_s"])
        assert parts == pytest.approx(th["step_time_s"], rel=1e-9) and st["time_model"] == "per-phase"
        assert min(v for k, v in st.items() if k != "time_model") >= 0
