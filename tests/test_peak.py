"""The phase model: which moment peaks, what is alive then, and the allocated/reserved/device figures."""

from __future__ import annotations

import pytest

from planner import catalog
from planner.estimate import overhead
from planner.estimate.core import estimate
from planner.estimate.peak import PHASES
from planner.models import load_model, spec_from_config
from planner.specs import AttnImpl, Cluster, LoraSpec, Method, Parallelism, Precision, TrainSpec

# Tolerance of a full training step against the CPU measurement (issue 5's per-cell bound).
STEP_TOLERANCE = 0.05

H100 = catalog.gpu("h100-sxm-80gb")


def _cluster(n: int = 1) -> Cluster:
    return Cluster(gpu=H100, num_gpus=n)


def test_breakdown_is_the_peak_phase_and_sums():
    est = estimate(load_model("llama-3.1-8b"), TrainSpec(micro_batch=2, seq_len=4096), _cluster(8))
    assert est.peak_phase in PHASES
    assert est.per_gpu == est.phases[est.peak_phase]
    assert est.per_gpu.total_bytes == max(p.total_bytes for p in est.phases.values())
    assert est.per_gpu.total_bytes == sum(est.per_gpu.by_category().values())


def test_reserved_and_device_on_gpu_and_cpu():
    model = load_model("qwen2.5-0.5b")
    train = TrainSpec(method=Method.LORA, micro_batch=2, seq_len=1024)
    gpu = estimate(model, train, _cluster(2))
    assert gpu.per_gpu.overhead_bytes == overhead.CUBLAS_WORKSPACE_BYTES
    assert gpu.reserved_bytes > gpu.per_gpu.total_bytes
    assert gpu.device_bytes == gpu.reserved_bytes + overhead.CUDA_CONTEXT_BYTES + overhead.NCCL_BYTES_PER_RANK
    cpu = estimate(model, train, _cluster(2), device="cpu")
    assert cpu.per_gpu.overhead_bytes == 0
    assert cpu.reserved_bytes == cpu.device_bytes == cpu.per_gpu.total_bytes


def test_large_vocabulary_lora_peaks_in_the_loss_backward():
    """128k vocabulary, 16k tokens: the fp32 log-probabilities and two fp32 gradients of [b*s, V] dominate."""
    model = load_model("llama-3.1-8b")
    est = estimate(model, TrainSpec(method=Method.LORA, micro_batch=4, seq_len=4096, grad_checkpointing=True),
                   _cluster())
    assert est.peak_phase == "backward"
    tokens, vocab = 4 * 4096, model.vocab_size
    # at least log_softmax output + its gradient + log_softmax's backward result, all fp32
    assert est.per_gpu.activations_bytes + est.per_gpu.temporaries_bytes >= 3 * 4 * tokens * vocab


def test_full_finetuning_zero0_peaks_at_the_optimizer_step():
    """Mixed-precision AdamW without DeepSpeed: 16-bit weights + grads, fp32 masters and moments, then at the
    step the fp32 gradient copies and foreach AdamW's sqrt scratch (4 + 4 bytes per parameter)."""
    model = load_model("qwen2.5-0.5b")
    est = estimate(model, TrainSpec(micro_batch=1, seq_len=512), _cluster())
    assert est.peak_phase == "optimizer_step"
    step = est.phases["optimizer_step"]
    assert step.activations_bytes == 0
    assert step.temporaries_bytes == pytest.approx(8 * est.num_trainable_params, rel=0.01)


def test_gradient_accumulation_keeps_gradients_through_forward():
    model = load_model("qwen2.5-0.5b")
    one = estimate(model, TrainSpec(micro_batch=1, seq_len=512, grad_accum=1), _cluster())
    four = estimate(model, TrainSpec(micro_batch=1, seq_len=512, grad_accum=4), _cluster())
    assert one.phases["forward"].grads_bytes == 0
    assert four.phases["forward"].grads_bytes == four.phases["optimizer_step"].grads_bytes > 0


def test_zero3_gathers_and_partitions():
    model = load_model("llama-3.1-8b")
    z0 = estimate(model, TrainSpec(micro_batch=1, seq_len=2048, parallelism=Parallelism.from_zero(2)), _cluster(8))
    z3 = estimate(model, TrainSpec(micro_batch=1, seq_len=2048, parallelism=Parallelism.from_zero(3)), _cluster(8))
    assert z3.per_gpu.params_bytes < z0.per_gpu.params_bytes
    assert z3.phases["forward"].temporaries_bytes > z0.phases["forward"].temporaries_bytes  # gathered params


# ---------------------------------------------------------------- against a real CPU training step

TINY = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 160, "vocab_size": 1024, "max_position_embeddings": 512}


@pytest.mark.cpu_kernels
@pytest.mark.slow
@pytest.mark.parametrize("method,precision,ckpt,micro_batch,seq_len", [
    ("full", "fp32", False, 2, 64),
    ("full", "bf16-mixed", True, 2, 64),
    ("lora", "bf16-mixed", False, 4, 64),
    ("full", "fp32", False, 1, 16),
])
def test_whole_step_matches_cpu_measurement(method, precision, ckpt, micro_batch, seq_len):
    """The measured peak of a steady-state step (above what existed at its start: weights and optimizer
    states) equals the estimate minus those, and happens in the same phase."""
    import memprobe

    prec = Precision(precision)
    dtype = prec.compute_dtype
    model = memprobe.build_model(TINY, attn="sdpa", dtype=dtype)
    if method == "lora":
        model = memprobe.apply_lora(model, rank=8, alpha=16, dropout=0.0)
    measured = memprobe.run_steps(model, micro_batch=micro_batch, seq_len=seq_len, checkpointing=ckpt,
                                  master_weights=prec.has_master_weights and method == "full")
    train = TrainSpec(method=Method(method), precision=prec, micro_batch=micro_batch, seq_len=seq_len,
                      grad_checkpointing=ckpt, attn_impl=AttnImpl.SDPA, lora=LoraSpec(rank=8, alpha=16, dropout=0.0))
    spec = spec_from_config(dict(TINY), "tiny")
    from planner.profile.cpu_kind import kernels_for, local_kernels

    est = estimate(spec, train, _cluster(), device="cpu", cpu=kernels_for(spec, train, local_kernels()))
    step_bytes = est.per_gpu.total_bytes - est.per_gpu.params_bytes - est.per_gpu.optimizer_states_bytes
    assert est.peak_phase == measured.peak_phase
    assert abs(step_bytes - measured.peak_bytes) <= STEP_TOLERANCE * measured.peak_bytes, (step_bytes, measured)
