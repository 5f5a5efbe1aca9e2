"""The fit search (planner/plan/fits.py) is exact: its predictions (the micro-batch lines, the sequence guess
from them, secants and regula falsi) only choose which sizes to check, so it finds the same limits as a plain
doubling-then-bisection search over the estimator, with fewer simulations (issue 15's speed targets)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from planner import catalog
from planner.errors import PlannerError
from planner.estimate.core import estimate
from planner.estimate.result import Fit
from planner.estimate.step import simulate
from planner.models import load_model
from planner.plan.fits import MAX_MICRO_BATCH, MAX_SEQ_LEN_LONGER, SEQ_STEP, _largest, estimate_with_fit
from planner.specs import AttnImpl, Cluster, LoraSpec, Method, Offload, Parallelism, Precision, TrainSpec


def _reference_fit(model, train, cluster, *, margin=0.1, allow_longer=False) -> Fit:
    """The limits by the obvious search: double until it fails, then bisect; every size checked by estimate()."""
    usable = int(cluster.gpu.capacity_bytes * (1.0 - margin))
    own = estimate(model, train, cluster, margin=margin, allow_longer=allow_longer)
    if own.host_fits is False:
        return Fit(max_micro_batch=0, max_seq_len=0)

    def fits(t: TrainSpec) -> bool:
        try:
            return estimate(model, t, cluster, margin=0.0, allow_longer=True).device_bytes <= usable
        except PlannerError:
            return False

    def largest(ok, hi: int) -> int:
        if hi < 1 or not ok(1):
            return 0
        good = 1
        while good < hi and ok(min(2 * good, hi)):
            good = min(2 * good, hi)
        if good == hi:
            return good
        bad = min(2 * good, hi)
        while bad - good > 1:
            mid = (good + bad) // 2
            good, bad = (mid, bad) if ok(mid) else (good, mid)
        return good

    max_k = (MAX_SEQ_LEN_LONGER if allow_longer else model.max_position_embeddings) // SEQ_STEP
    return Fit(max_micro_batch=largest(lambda b: fits(replace(train, micro_batch=b)), MAX_MICRO_BATCH),
               max_seq_len=largest(lambda k: fits(replace(train, seq_len=k * SEQ_STEP)), max_k) * SEQ_STEP)


CASES = [
    # (model, GPU, GPUs, train, allow_longer)
    ("gpt2", "t4-16gb", 1, TrainSpec(precision=Precision.FP16_MIXED, seq_len=1024), False),  # limit = position limit
    ("gpt2", "t4-16gb", 1, TrainSpec(precision=Precision.FP16_MIXED, micro_batch=8, seq_len=1000), True),  # off the grid
    ("qwen2.5-0.5b", "l4-24gb", 1, TrainSpec(micro_batch=3, seq_len=4096, grad_checkpointing=True), False),
    ("llama-3.2-1b", "a10-24gb", 2, TrainSpec(method=Method.LORA, parallelism=Parallelism.from_zero(2), seq_len=2048), False),
    ("llama-3.1-8b", "h100-sxm-80gb", 8, TrainSpec(micro_batch=16, seq_len=8192), False),  # own row does not fit
    ("llama-3.1-8b", "a100-sxm-40gb", 8, TrainSpec(method=Method.QLORA, seq_len=1000, grad_checkpointing=True),
     True),
    ("gemma-2-9b", "h100-sxm-80gb", 8, TrainSpec(parallelism=Parallelism.from_zero(3), micro_batch=2, seq_len=4096,
                                                 attn_impl=AttnImpl.EAGER), False),  # s x s scores
    ("mixtral-8x7b-v0.1", "h200-sxm-141gb", 8, TrainSpec(method=Method.LORA, lora=LoraSpec(dropout=0.0), parallelism=Parallelism.from_zero(3, Offload.OPTIMIZER), seq_len=2048), False),
    ("deepseek-v2-lite", "l40s-48gb", 4, TrainSpec(method=Method.QLORA, lora=LoraSpec(dropout=0.0), parallelism=Parallelism.from_zero(1),
                                                                 seq_len=3000), False),
]


@pytest.mark.parametrize(("name", "gpu", "num_gpus", "train", "allow_longer"), CASES)
def test_fit_equals_the_plain_search(name, gpu, num_gpus, train, allow_longer):
    model = load_model(name)
    cluster = Cluster(gpu=catalog.gpu(gpu), num_gpus=num_gpus)
    fit = estimate_with_fit(model, train, cluster, allow_longer=allow_longer).fit
    assert fit == _reference_fit(model, train, cluster, allow_longer=allow_longer)


def test_fit_costs_few_simulations():
    """llama-3.1-8b on 8 x H100, the full table: the prediction lands on the sequence limit, so each row's
    search simulates the limit and the length after it (90 simulations before, 68 with the first guess; 72 since
    full fine-tuning under ZeRO-3 simulates DeepSpeed's own linear and so has a simulation key of its own, dadac8a;
    77 since QLoRA under ZeRO-3 is modelled (estimate/qlora_shard.py): its rows take 5 simulations of their own,
    the table's earlier rows still 72; 67 since LoRA and QLoRA under ZeRO-2, whose adapters are all smaller than
    the reduce bucket, share the offload row's simulation (core.py, tests/test_step_sharing.py); a regression
    shows)."""
    model = load_model("llama-3.1-8b")
    cluster = Cluster(gpu=catalog.gpu("h100-sxm-80gb"), num_gpus=8)
    simulate._simulate.cache_clear()
    simulate._envelope.cache_clear()
    for method in Method:
        for stage in (0, 1, 2, 3):
            for offload in Offload:
                try:
                    train = TrainSpec(method=method, parallelism=Parallelism.from_zero(stage, offload), seq_len=2048)
                except PlannerError:
                    continue
                estimate_with_fit(model, train, cluster)
    assert simulate._simulate.cache_info().misses <= 67


@st.composite
def _curves(draw):
    """A monotone byte curve with allocator-like rounding, invalid (None) from some size on, a usable limit,
    a range and arbitrary steering: a guess, exact values seen before, wrong approximations, a known failure."""
    a, b, c = draw(st.integers(0, 1000)), draw(st.integers(0, 100_000)), draw(st.integers(0, 10**7))
    jitter = draw(st.integers(0, 4096))
    invalid_from = draw(st.one_of(st.none(), st.integers(1, 2500)))

    def value(n: int):
        if invalid_from is not None and n >= invalid_from:
            return None
        raw = a * n * n + b * n + c
        return raw + (-raw) % (jitter + 1)

    hi = draw(st.integers(1, 2000))
    lo = draw(st.integers(1, min(hi, 64)))
    usable = draw(st.integers(0, 10**9))
    guess = draw(st.one_of(st.none(), st.integers(-10, 2500)))
    seen_at = draw(st.lists(st.integers(1, hi + 50), max_size=4))
    approx = draw(st.dictionaries(st.integers(1, hi + 50), st.floats(0, 2e9), max_size=4))
    bad_at = draw(st.integers(0, 100))
    return value, lo, hi, usable, guess, seen_at, approx, bad_at


def _ok(v, usable):
    return v is not None and v <= usable


# derandomize: the same 200 curves on every run (a CI draw once rejected 50 of 57 curves at the assume below and
# failed hypothesis' filter health check); the curves cover the steering cases either way.
@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.filter_too_much])
@given(_curves())
def test_largest_is_exact_whatever_the_steering(curve):
    value, lo, hi, usable, guess, seen_at, approx, bad_at = curve
    assume(_ok(value(lo), usable))
    expected = max(n for n in range(lo, hi + 1) if _ok(value(n), usable))
    seen = {n: float("inf") if value(n) is None else float(value(n)) for n in seen_at}
    failing = [n for n in range(lo, hi + 1) if not _ok(value(n), usable)]
    over = failing[min(bad_at, len(failing) - 1)] if failing else None  # any size known not to fit
    calls = []

    def counted(n):
        assert lo <= n <= hi
        calls.append(n)
        return value(n)

    got = _largest(counted, lo, hi, usable, seen=seen, approx=approx, guess=guess, bad=over)
    assert got == expected
    assert len(calls) == len(set(calls))  # never evaluates a size twice
    assert _largest(value, lo, hi, usable, guess=guess) == expected
