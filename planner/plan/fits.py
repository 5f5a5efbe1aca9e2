"""What fits: the largest micro-batch and the longest sequence (a multiple of 256 tokens) for a row.

"Fits" means the device figure (reserved + context + libraries, what nvidia-smi shows) stays within the usable
capacity, ``capacity x (1 - margin)`` with the GPU's CUDA-visible capacity (``GpuSpec.capacity_bytes``) -- the
same test as ``Estimate.fits``. Memory only grows with the micro-batch and the sequence length
(tests/test_monotonic.py), so an exponential probe then an interpolating search finds both limits exactly in a
handful of evaluations. Host RAM does not depend on either: a row whose offload does not fit the node's host RAM
fits nothing (core.py gives it 0 and 0 without searching).

The estimator comes in as a function (``evaluate``), so this module does not import core.py, which calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from planner.errors import PlannerError
from planner.estimate.core import DEFAULT_MARGIN, estimate
from planner.estimate.result import Estimate, Fit
from planner.specs import Cluster, ModelSpec, TrainSpec

# estimate(model, train, cluster, *, margin, device, allow_longer) -> Estimate (planner.estimate.core.estimate)
Evaluate = Callable[..., Estimate]

SEQ_STEP = 256
MAX_MICRO_BATCH = 1 << 16
# With --allow-longer the search goes past the position limit, up to this many tokens.
MAX_SEQ_LEN_LONGER = 1 << 21


def _device_bytes(evaluate: Evaluate, model: ModelSpec, train: TrainSpec, cluster: Cluster, device: str) -> int | None:
    """The device figure of one configuration, or None when the configuration is invalid."""
    try:
        est = evaluate(model, train, cluster, margin=0.0, device=device, allow_longer=True)
    except PlannerError:
        return None
    return est.device_bytes


def _largest(value, lo: int, hi: int, usable: int) -> int:
    """The largest n in [lo, hi] with value(n) <= usable, given that it holds at lo and value is monotone.

    An exponential probe brackets the limit; then regula falsi on the byte values (memory is close to linear
    or quadratic in the searched size, so the interpolated point is usually within one step of the limit),
    falling back to bisection whenever interpolation fails to halve the bracket. Every answer is checked by
    the estimator itself: the result is exact, only the number of evaluations shrinks.
    """
    seen: dict[int, float] = {}

    def bytes_at(n: int) -> float:
        if n not in seen:
            v = value(n)
            seen[n] = float("inf") if v is None else float(v)
        return seen[n]

    good, step = lo, lo
    while True:
        nxt = min(good + step, hi)
        if nxt == good:
            return good
        if bytes_at(nxt) > usable:
            bad = nxt
            break
        good = nxt
        step *= 2
    bisect = False
    while bad - good > 1:
        width = bad - good
        fg, fb = bytes_at(good), bytes_at(bad)
        if bisect or fb == float("inf") or fb <= fg:
            mid = (good + bad) // 2
        else:
            mid = good + int((usable - fg) * width / (fb - fg))
            mid = min(max(mid, good + 1), bad - 1)
        if bytes_at(mid) <= usable:
            good = mid
            # The interpolated point usually sits just below the limit: check its neighbour at once.
            if mid + 1 < bad and bytes_at(mid + 1) > usable:
                bad = mid + 1
        else:
            bad = mid
        bisect = (bad - good) * 2 > width
    return good


def find_fit(evaluate: Evaluate, model: ModelSpec, train: TrainSpec, cluster: Cluster, *, margin: float,
             device: str = "cuda", allow_longer: bool = False, own_device_bytes: int | None = None) -> Fit:
    """``evaluate``: the estimator (core.estimate). ``own_device_bytes``: the device figure of ``train`` itself,
    when the caller has it. When it fits, both searches start from the row's own micro-batch and sequence
    length (memory is monotone in both), which saves the probes below them."""
    usable = int(cluster.gpu.capacity_bytes * (1.0 - margin))

    def batch_bytes(b: int) -> int | None:
        return _device_bytes(evaluate, model, replace(train, micro_batch=b), cluster, device)

    def seq_bytes(k: int) -> int | None:
        return _device_bytes(evaluate, model, replace(train, seq_len=k * SEQ_STEP), cluster, device)

    def fits_at(v: int | None) -> bool:
        return v is not None and v <= usable

    own_fits = fits_at(own_device_bytes)
    if own_fits and train.micro_batch <= MAX_MICRO_BATCH:
        max_b = _largest(batch_bytes, train.micro_batch, MAX_MICRO_BATCH, usable)
    else:
        max_b = _largest(batch_bytes, 1, MAX_MICRO_BATCH, usable) if fits_at(batch_bytes(1)) else 0
    limit = MAX_SEQ_LEN_LONGER if allow_longer else model.max_position_embeddings
    max_k = limit // SEQ_STEP
    own_k = min(train.seq_len // SEQ_STEP, max_k)
    if max_k < 1:
        max_s = 0
    elif own_fits and own_k >= 1:  # k * 256 <= seq_len: fits because the row does
        max_s = _largest(seq_bytes, own_k, max_k, usable) * SEQ_STEP
    else:
        max_s = _largest(seq_bytes, 1, max_k, usable) * SEQ_STEP if fits_at(seq_bytes(1)) else 0
    return Fit(max_micro_batch=max_b, max_seq_len=max_s)


def estimate_with_fit(model: ModelSpec, train: TrainSpec, cluster: Cluster, *, margin: float = DEFAULT_MARGIN,
                      device: str = "cuda", allow_longer: bool = False) -> Estimate:
    """``estimate`` of one configuration with its fit limits: the largest micro-batch and the longest sequence
    that fit (a few dozen more evaluations)."""
    result = estimate(model, train, cluster, margin=margin, device=device, allow_longer=allow_longer)
    if result.host_fits is False:  # host RAM does not depend on the micro-batch or the sequence length
        fit = Fit(max_micro_batch=0, max_seq_len=0)
    else:
        fit = find_fit(estimate, model, train, cluster, margin=margin, device=device, allow_longer=allow_longer,
                       own_device_bytes=result.device_bytes)
    return replace(result, fit=fit)
