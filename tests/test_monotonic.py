"""Monotonicity and bad values: more tokens or vocabulary never lower the estimate, checkpointing never raises
activations, a higher ZeRO stage never raises per-GPU model states; the position limit is enforced."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from planner import catalog
from planner.errors import PlannerError
from planner.estimate.core import estimate
from planner.models import load_model, spec_from_config
from planner.plan.fits import estimate_with_fit
from planner.specs import AttnImpl, Cluster, Method, Offload, Parallelism, TrainSpec

H100 = catalog.gpu("h100-sxm-80gb")
MODELS = ("llama-3.2-1b", "gpt2", "qwen2.5-0.5b", "gemma-2-9b", "mixtral-8x7b-v0.1")
METHODS = (Method.FULL, Method.LORA, Method.QLORA)


def _est(model, train, n=8, device="cuda", rank=None):
    if model.is_moe and train.method is not Method.FULL:  # peft's lora.ParamWrapper (experts) needs no dropout
        train = replace(train, lora=replace(train.lora, dropout=0.0))
    return estimate(model, train, Cluster(gpu=H100, num_gpus=n), device=device, rank=rank)


def _trains():
    for method in METHODS:
        for ckpt in (False, True):
            for attn in (AttnImpl.EAGER, AttnImpl.SDPA):
                for zero in (0, 2):
                    yield TrainSpec(method=method, grad_checkpointing=ckpt, attn_impl=attn, parallelism=Parallelism.from_zero(zero),
                                    micro_batch=1, seq_len=256)


@pytest.mark.parametrize("name", MODELS)
def test_more_tokens_never_lower_the_estimate(name):
    model = load_model(name)
    for train in _trains():
        prev = None
        for b, s in ((1, 256), (2, 256), (3, 256), (3, 512), (4, 512), (4, 1024)):
            est = _est(model, replace(train, micro_batch=b, seq_len=s))
            cur = (est.per_gpu.total_bytes, est.reserved_bytes, est.device_bytes, est.per_gpu.activations_bytes
                   + est.per_gpu.temporaries_bytes if est.peak_phase != "optimizer_step" else 0)
            if prev is not None:
                assert cur[0] >= prev[0] and cur[1] >= prev[1] and cur[2] >= prev[2], (train, b, s)
            prev = cur


@pytest.mark.parametrize("base", ["llama-3.2-1b", "gpt2"])
def test_larger_vocabulary_never_lowers_the_estimate(base):
    cfg = dict(catalog.model_config(base))
    prev = None
    for vocab in (32000, 50257, 128256, 256000):
        model = spec_from_config(dict(cfg, vocab_size=vocab), f"{base}-v{vocab}")
        for train in (TrainSpec(micro_batch=2, seq_len=512), TrainSpec(method=Method.LORA, micro_batch=2,
                                                                          seq_len=512)):
            est = _est(model, train)
            key = (train.method, est.per_gpu.total_bytes)
            if prev is not None and prev[0] == train.method:
                assert est.per_gpu.total_bytes >= prev[1]
            prev = key


@pytest.mark.parametrize("name", MODELS)
def test_checkpointing_never_raises_activations(name):
    model = load_model(name)
    for train in _trains():
        if train.grad_checkpointing:
            continue
        for b, s in ((1, 256), (4, 1024)):
            off = _est(model, replace(train, micro_batch=b, seq_len=s))
            on = _est(model, replace(train, micro_batch=b, seq_len=s, grad_checkpointing=True))
            # saved activations (what backward starts with), and the peak as a whole; the activations alive at
            # the backward peak are a different moment's with and without recomputation
            assert on.phases["forward"].activations_bytes <= off.phases["forward"].activations_bytes
            assert on.per_gpu.total_bytes <= off.per_gpu.total_bytes


@pytest.mark.parametrize("name", MODELS)
def test_higher_zero_stage_never_raises_model_states(name):
    model = load_model(name)
    for method in METHODS:
        for offload in (Offload.NONE, Offload.OPTIMIZER):
            # rank by rank: ZeRO 1/2 ranks hold different gradient buffers (the same ones at both stages)
            for rank in range(8):
                prev = None
                for zero in (0, 1, 2, 3):
                    if offload is not Offload.NONE and zero == 0:
                        continue
                    train = TrainSpec(method=method, parallelism=Parallelism.from_zero(zero, offload), micro_batch=1, seq_len=256)
                    # the model states proper: at the optimizer step every one of them is alive
                    states = _est(model, train, rank=rank).phases["optimizer_step"].model_states_bytes
                    if prev is not None:
                        assert states <= prev, (method, offload, zero, rank)
                    prev = states


def test_sequence_longer_than_position_limit_is_refused():
    model = load_model("gpt2")  # n_positions 1024
    with pytest.raises(PlannerError) as err:
        _est(model, TrainSpec(seq_len=2048))
    msg = str(err.value)
    assert "2048" in msg and "1024" in msg
    est = estimate(model, TrainSpec(seq_len=2048), Cluster(gpu=H100), allow_longer=True)
    assert any("position limit" in n for n in est.notes)


@pytest.mark.parametrize("kwargs", [{"seq_len": 0}, {"micro_batch": 0}, {"grad_accum": 0}])
def test_bad_values_raise(kwargs):
    with pytest.raises(PlannerError):
        TrainSpec(**kwargs)


def test_bad_margin_and_device_raise():
    model = load_model("gpt2")
    with pytest.raises(PlannerError):
        estimate(model, TrainSpec(seq_len=256), Cluster(gpu=H100), margin=1.5)
    with pytest.raises(PlannerError):
        estimate(model, TrainSpec(seq_len=256), Cluster(gpu=H100), device="tpu")


def test_fit_is_consistent_with_the_estimate():
    model = load_model("llama-3.1-8b")
    cluster = Cluster(gpu=H100, num_gpus=8)
    train = TrainSpec(method=Method.LORA, micro_batch=1, seq_len=2048, grad_checkpointing=True)
    est = estimate_with_fit(model, train, cluster)
    fit = est.fit
    assert fit is not None and fit.max_micro_batch >= 1 and fit.max_seq_len % 256 == 0
    usable = est.usable_bytes
    at = estimate(model, replace(train, micro_batch=fit.max_micro_batch), cluster)
    over = estimate(model, replace(train, micro_batch=fit.max_micro_batch + 1), cluster)
    assert at.device_bytes <= usable < over.device_bytes
    longest = estimate(model, replace(train, seq_len=fit.max_seq_len), cluster, allow_longer=True)
    assert longest.device_bytes <= usable


def test_estimate_is_fast():
    """The recommender calls estimate() thousands of times: < 5 ms per call once the step is simulated."""
    import time

    model = load_model("llama-3.1-70b")
    cluster = Cluster(gpu=H100, num_gpus=8)
    for b in (1, 2):
        estimate(model, TrainSpec(micro_batch=b, seq_len=4096), cluster)
    start = time.perf_counter()
    n = 0
    for zero in (0, 1, 2, 3):
        for b in range(1, 33):
            estimate(model, TrainSpec(parallelism=Parallelism.from_zero(zero), micro_batch=b, seq_len=4096), cluster)
            n += 1
    assert (time.perf_counter() - start) / n < 0.005


@settings(max_examples=300, deadline=None)
@given(
    a=st.integers(0, 1000), b=st.integers(0, 100_000), c=st.integers(0, 10**7), jitter=st.integers(0, 4096),
    usable=st.integers(0, 10**9), hi=st.integers(1, 5000), lo=st.integers(1, 8),
)
def test_fit_search_equals_brute_force(a, b, c, jitter, usable, hi, lo):
    """The search (quadratic prediction, then checks, then regula falsi) returns exactly the largest n that
    fits, for monotone byte curves with allocator-like rounding steps."""
    from planner.plan.fits import _largest

    lo = min(lo, hi)

    def value(n):
        raw = a * n * n + b * n + c
        return raw + (-raw) % (jitter + 1)  # rounded up to a multiple: still monotone, not polynomial

    assume(value(lo) <= usable)
    expected = max(n for n in range(lo, hi + 1) if value(n) <= usable)
    assert _largest(value, lo, hi, usable) == expected
