"""Issue 6: the recommended plan's measured peak (a real profile of the same plan) is within the plan's
margin of the estimate. Tiny model, a small accelerator so the search has something to fill, CPU profile."""

from __future__ import annotations

import dataclasses

import pytest

from planner.estimate.core import estimate
from planner.estimate.overhead import CUDA_CONTEXT_BYTES
from planner.models import spec_from_config
from planner.plan.recommend import recommend
from planner.profile import load_profile
from planner.profile.launcher import run_profile
from planner.specs import AttnImpl, Cluster, GpuSpec, Offload, Precision, TrainSpec
from planner.units import MIB

pytestmark = pytest.mark.slow

TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}

# A made-up accelerator with room for the CUDA context plus a few dozen MiB of tensors: the recommender must
# choose a micro-batch that fills it without going over.
SMALL_GPU = GpuSpec(
    name="test-small",
    vendor="test",
    memory_bytes=CUDA_CONTEXT_BYTES + 256 * MIB,
    memory_bandwidth_bytes_per_s=10**12,
    bf16_dense_flops=10**14,
    fp16_dense_flops=10**14,
    supports_bf16=True,
    intra_node_bytes_per_s=10**11,
    host_bytes_per_s=10**10,
)


@pytest.mark.cpu_kernels
def test_recommended_plan_measured_within_margin(tmp_path):
    model = spec_from_config(TINY_LLAMA, "tiny-llama")
    base = TrainSpec(precision=Precision.FP32, seq_len=256)
    margin = 0.1
    rec = recommend(
        model,
        base,
        Cluster(gpu=SMALL_GPU, num_gpus=1),
        global_batch_size=8,
        method="full",
        margin=margin,
        zero_stages=(0,),
        offloads=(Offload.NONE,),
        attn_impls=(AttnImpl.SDPA, AttnImpl.EAGER),
    )
    plan = rec.plan
    assert rec.estimate.fits
    # The search had room to grow the micro-batch: it must have used it (global batch 8 on one GPU).
    assert plan.train.micro_batch * plan.train.grad_accum == 8
    train = dataclasses.replace(plan.train, grad_accum=1)
    status, message, out = run_profile(
        model, train, num_gpus=1, steps=3, device="cpu", out=tmp_path / "p", show_progress=False
    )
    assert status == "ok", message
    prof = load_profile(out)
    measured = prof.ranks[0].peak.allocated_bytes
    est = estimate(model, train, plan.cluster, margin=margin, device="cpu",
                   cpu=prof.cpu_kernels()).per_gpu.total_bytes
    error = (est - measured) / measured
    print(f"plan micro-batch {train.micro_batch}, attention {train.attn_impl.value}, checkpointing "
          f"{train.grad_checkpointing}: estimated {est} B, measured {measured} B, error {error:+.2%}")
    assert abs(error) <= margin
