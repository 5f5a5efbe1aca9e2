"""The CPU kind as an estimator input (issue 13): oneDNN's matmul workspaces, where the tape puts them, and the
probe that measures them from the library."""

from __future__ import annotations

import pytest

from planner.estimate.step.cpu_kernels import LEGACY, CpuKernels
from planner.estimate.step.simulate import simulate_step
from planner.models import spec_from_config
from planner.specs import AttnImpl, Method, Precision, TrainSpec

TINY = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 160, "vocab_size": 512, "max_position_embeddings": 256}
BF16_CKPT = TrainSpec(method=Method.FULL, precision=Precision.BF16, micro_batch=2, seq_len=32,
                      grad_checkpointing=True, attn_impl=AttnImpl.EAGER)


def _spec():
    return spec_from_config(dict(TINY), "tiny")


def test_round_trip_and_lookup():
    k = CpuKernels("AVX512", True, 2, "AMD EPYC", ((("bf16", 1, 64, 64, 160, False, True), 34432),))
    again = CpuKernels.from_dict(k.to_dict())
    assert again == k and hash(again) == hash(k)
    assert again.workspace_bytes(("bf16", 1, 64, 64, 160, False, True)) == 34432
    assert again.workspace_bytes(("bf16", 1, 64, 64, 161, False, True)) is None
    assert k.uses_onednn("bf16") and not k.uses_onednn("fp32") and not LEGACY.uses_onednn("bf16")
    with pytest.raises(ValueError):
        CpuKernels(num_threads=0)


def test_without_onednn_the_kind_changes_nothing():
    spec = _spec()
    plain = simulate_step(spec, BF16_CKPT, device="cpu")
    avx2 = simulate_step(spec, BF16_CKPT, device="cpu", cpu=CpuKernels("AVX2", False, 2))
    assert plain == avx2 and not avx2.unknown_matmuls
    # on a GPU the CPU kind is ignored
    assert simulate_step(spec, BF16_CKPT, cpu=CpuKernels("AVX512", True, 2)) == simulate_step(spec, BF16_CKPT)


def test_every_bf16_matmul_is_listed_and_fp32_ones_are_not():
    spec = _spec()
    kind = CpuKernels("AVX512", True, 2)
    step = simulate_step(spec, BF16_CKPT, device="cpu", cpu=kind)
    calls = set(step.unknown_matmuls)
    tokens, h, inter, vocab = 64, 64, 160, 512
    # F.linear forward (x @ W.t()), its input gradient (grad @ W) and weight gradient ((grad.t() @ x).t())
    assert ("bf16", 1, tokens, h, inter, False, True) in calls  # gate/up forward
    assert ("bf16", 1, tokens, inter, h, False, False) in calls  # down_proj's forward is [T, 160] @ [160, 64]
    assert ("bf16", 1, inter, tokens, h, True, False) in calls  # gate/up weight gradient
    assert ("bf16", 1, tokens, h, vocab, False, True) in calls  # lm_head
    # eager attention: q @ k^T on [b * heads, s, d] with k^T a transposed view
    assert ("bf16", 8, 32, 16, 32, False, True) in calls
    assert not simulate_step(spec, TrainSpec(micro_batch=2, seq_len=32, precision=Precision.FP32),
                             device="cpu", cpu=kind).unknown_matmuls


def test_a_workspace_meets_the_peak_where_its_matmul_runs():
    """Every workspace 0 but one: the backward peak rises by at most that workspace, and by exactly it when the
    matmul is the one at the peak (the weight gradient of an MLP projection during the recomputation)."""
    spec = _spec()
    calls = simulate_step(spec, BF16_CKPT, device="cpu", cpu=CpuKernels("AVX512", True, 2)).unknown_matmuls
    zero = CpuKernels("AVX512", True, 2, workspaces=tuple((c, 0) for c in calls))
    base = simulate_step(spec, BF16_CKPT, device="cpu", cpu=zero)
    assert base == simulate_step(spec, BF16_CKPT, device="cpu")  # zero workspaces = the ATen path
    big = 10**6  # larger than anything else alive: the peak moves to that matmul
    at_peak = ("bf16", 1, 160, 64, 64, True, False)
    one = simulate_step(spec, BF16_CKPT, device="cpu", cpu=zero.with_workspaces({at_peak: big}))
    assert base.backward_peak_bytes < one.backward_peak_bytes <= base.backward_peak_bytes + big


@pytest.mark.slow
def test_measured_workspace_is_what_the_library_allocates():
    """The probe against torch's own F.linear/matmul under the profiler, on this machine's kernel path."""
    torch = pytest.importorskip("torch")
    from torch._C._profiler import _EventType

    from planner.profile.cpu_kind import local_kernels, measure_workspaces

    kind = local_kernels()
    call = ("bf16", 1, 64, 160, 64, False, False)
    measured = measure_workspaces([call], kind.num_threads)[call]
    g = torch.randn(64, 160, dtype=torch.bfloat16)
    w = torch.randn(160, 64, dtype=torch.bfloat16)
    torch.matmul(g, w)
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
    with prof:
        torch.matmul(g, w)
    sizes = []

    def walk(n):
        if n.tag == _EventType.Allocation:
            sizes.append(n.extra_fields.alloc_size)
        for c in n.children:
            walk(c)

    for r in prof.profiler.kineto_results.experimental_event_tree():
        walk(r)
    extra = sum(s for s in sizes if s > 0) - 64 * 64 * 2
    assert measured == extra
    assert (measured > 0) == kind.onednn_bf16



def test_an_fsdp2_profile_records_every_matmul_its_estimate_makes(monkeypatch):
    """FSDP2's estimate simulates the MixedPrecisionPolicy's step (fsdp2_step.py sim_train: the LoRA adapters
    all-gathered in bf16), whose adapter matmuls differ from the plain spec's autocast ones: the profile must
    record the workspace of each, or the estimate counts them as 0."""
    from planner.estimate.fsdp2_step import sim_train
    from planner.profile import cpu_kind
    from planner.specs import Parallelism

    monkeypatch.setattr(cpu_kind, "measure_workspaces", lambda calls, threads: dict.fromkeys(calls, 4096))
    spec = _spec()
    train = TrainSpec(method=Method.LORA, precision=Precision.BF16_MIXED, micro_batch=2, seq_len=32,
                      attn_impl=AttnImpl.EAGER, grad_checkpointing=True, parallelism=Parallelism.fsdp2())
    kind = cpu_kind.kernels_for(spec, train, CpuKernels(capability="AVX512", onednn_bf16=True))
    step = simulate_step(spec, sim_train(train), device="cpu", keep_grads=False, cpu=kind)
    assert step.unknown_matmuls == ()
