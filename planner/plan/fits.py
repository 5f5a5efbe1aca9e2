"""What fits: the largest micro-batch and the longest sequence (a multiple of 256 tokens) for a row.

"Fits" means the device figure (reserved + context + libraries, what nvidia-smi shows) stays within the usable
capacity, ``capacity x (1 - margin)`` with the GPU's CUDA-visible capacity (``GpuSpec.capacity_bytes``) -- the
same test as ``Estimate.fits``. Memory only grows with the micro-batch and the sequence length
(tests/test_monotonic.py), so a search that checks a predicted limit and its neighbour finds both limits exactly
in a handful of evaluations (predictions choose what to check, never the answer; tests/test_fit_search.py). Host RAM does not depend on either: a row whose offload does not fit the node's host RAM
fits nothing (core.py gives it 0 and 0 without searching).

The estimator comes in as a function (``evaluate``), so this module does not import core.py, which calls it.
"""

from __future__ import annotations

import math
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


def _largest(value, lo: int, hi: int, usable: int, *, seen: dict[int, float] | None = None,
             approx: dict[int, float] | None = None, bad: int | None = None, guess: int | None = None) -> int:
    """The largest n in [lo, hi] with value(n) <= usable, given that it holds at lo and value is monotone.

    Every fits-or-not decision comes from ``value`` itself (or ``seen``, values it returned before), so the
    answer is exact; only the choice of the next n to check is a prediction, and only the number of
    evaluations depends on it. ``seen``: exact values already known. ``approx``: values that only steer the
    predictions (an upper bound at an n between grid points, say). ``bad``: an n known not to fit. ``guess``:
    where to look first (a closed-form prediction of the limit).

    Below a known failure the next n extrapolates the secant through the two highest points that fit (memory
    is close to linear or quadratic in the searched size, so it usually lands on the limit; the next check
    is its neighbour), doubling when there is nothing to extrapolate and growing the step exponentially when
    predictions keep falling short. Inside a bracket: regula falsi on the byte values, falling back to
    bisection whenever two evaluations fail to halve the bracket.
    """
    known: dict[int, float] = {} if seen is None else seen  # the caller's dict gains every value
    hints = dict(approx or {})

    def bytes_at(n: int) -> float:
        if n not in known:
            v = value(n)
            known[n] = float("inf") if v is None else float(v)
        return known[n]

    def steer(n: int) -> float | None:
        v = known.get(n, hints.get(n))
        return v if v is not None and v != float("inf") else None

    good = max([lo] + [n for n, v in known.items() if lo <= n <= hi and v <= usable])
    fails = [n for n, v in known.items() if good < n <= hi and v > usable]
    if bad is not None and good < bad <= hi:
        fails.append(bad)
    bad = min(fails) if fails else None
    streak = 0  # fits in a row before any failure: the minimum step doubles with each
    widths: list[int] = []
    c = guess
    while True:
        if bad is None:
            if good >= hi:
                return good
            if c is None:
                c = _extrapolate(good, usable, known, hints, steer)
                if streak:
                    c = max(c, good + (1 << (streak - 1)))
            c = min(max(c, good + 1), hi)
        else:
            if bad - good <= 1:
                return good
            width = bad - good
            widths.append(width)
            if c is None:
                fg, fb = steer(good), steer(bad)
                if (len(widths) >= 3 and width * 2 > widths[-3]) or fg is None or fb is None or fb <= fg:
                    c = (good + bad) // 2
                else:
                    c = good + int((usable - fg) * width / (fb - fg))
            c = min(max(c, good + 1), bad - 1)
        if bytes_at(c) <= usable:
            good = c
            streak = streak + 1 if bad is None else streak
        else:
            bad = c
        c = None


def _extrapolate(good: int, usable: int, known: dict, hints: dict, steer) -> int:
    """The n where the secant through the two highest points that fit reaches ``usable`` (doubling without
    two such points or a rising secant)."""
    below = sorted(n for n in set(known) | set(hints) if n <= good and steer(n) is not None)
    if len(below) >= 2:
        n1, n2 = below[-2], below[-1]
        v1, v2 = steer(n1), steer(n2)
        if v2 > v1 and v2 <= usable:
            step = (usable - v2) * (n2 - n1) / (v2 - v1)
            if math.isfinite(step):  # a rise of a few denormals (an approximate hint) overflows: double instead
                return n2 + int(step)
    return 2 * good


def find_fit(evaluate: Evaluate, model: ModelSpec, train: TrainSpec, cluster: Cluster, *, margin: float,
             device: str = "cuda", allow_longer: bool = False, own_device_bytes: int | None = None) -> Fit:
    """``evaluate``: the estimator (core.estimate). ``own_device_bytes``: the device figure of ``train`` itself,
    when the caller has it. When it fits, both searches start from the row's own micro-batch and sequence
    length (memory is monotone in both), which saves the probes below them; when it does not, it bounds both
    searches from above.

    The micro-batch search costs no simulation beyond the envelope's two (step/envelope.py): every micro-batch
    is a few lines. The sequence search simulates every length it checks, so it starts where the micro-batch
    lines put the limit: a sequence of s more tokens costs about what s / seq_len more sequences do. That
    prediction only chooses the first length to check: the limit is the one the estimator confirms (it fits,
    the next length does not), so the answer is the same whatever the prediction.
    """
    usable = int(cluster.gpu.capacity_bytes * (1.0 - margin))

    def batch_bytes(b: int) -> int | None:
        return _device_bytes(evaluate, model, replace(train, micro_batch=b), cluster, device)

    def seq_bytes(k: int) -> int | None:
        return _device_bytes(evaluate, model, train.with_seq_len(k * SEQ_STEP), cluster, device)

    def fits_at(v: int | float | None) -> bool:
        return v is not None and v <= usable

    own_fits = fits_at(own_device_bytes)
    own_b, own_s = train.micro_batch, train.seq_len
    batch_seen: dict[int, float] = {}
    if own_device_bytes is not None and own_b <= MAX_MICRO_BATCH:
        batch_seen[own_b] = float(own_device_bytes)
    if own_fits and own_b <= MAX_MICRO_BATCH:
        max_b = _largest(batch_bytes, own_b, MAX_MICRO_BATCH, usable, seen=batch_seen)
    else:
        one = batch_seen[1] if 1 in batch_seen else batch_bytes(1)
        if fits_at(one):
            batch_seen[1] = float(one)
            max_b = _largest(batch_bytes, 1, MAX_MICRO_BATCH, usable, seen=batch_seen)
        else:
            max_b = 0
    limit = MAX_SEQ_LEN_LONGER if allow_longer else model.max_position_embeddings
    max_k = limit // SEQ_STEP
    own_k = min(own_s // SEQ_STEP, max_k)
    seq_seen: dict[int, float] = {}
    seq_hints: dict[int, float] = {}
    if own_device_bytes is not None and own_s % SEQ_STEP == 0 and own_s // SEQ_STEP <= max_k:
        seq_seen[own_s // SEQ_STEP] = float(own_device_bytes)
    if max_k < 1:
        max_s = 0
    elif own_fits and own_k >= 1:  # k * 256 <= seq_len: fits because the row does
        seq_hints[own_k] = float(own_device_bytes)
        guess = _seq_guess(batch_seen, own_b, own_s, usable)
        max_s = _largest(seq_bytes, own_k, max_k, usable, seen=seq_seen, approx=seq_hints, guess=guess) * SEQ_STEP
    else:
        first = seq_seen[1] if 1 in seq_seen else seq_bytes(1)
        if fits_at(first):
            seq_seen[1] = float(first)
            over = None
            if own_device_bytes is not None and not own_fits:  # fails at its own length, so at any longer one
                over = -(-own_s // SEQ_STEP)
                if over <= max_k:
                    seq_hints.setdefault(over, float(own_device_bytes))
                else:
                    over = None
            max_s = _largest(seq_bytes, 1, max_k, usable, seen=seq_seen, approx=seq_hints, bad=over) * SEQ_STEP
        else:
            max_s = 0
    return Fit(max_micro_batch=max_b, max_seq_len=max_s)


def _seq_guess(batch_seen: dict[int, float], own_b: int, own_s: int, usable: int) -> int | None:
    """Where the sequence limit should be, from the micro-batch search's exact figures: its two largest
    micro-batches put the limit at ``b_cross`` sequences of ``own_s`` tokens, and a step holds about as much at
    ``own_b`` sequences of ``b_cross * own_s / own_b`` tokens (the tensors of a step grow with its tokens; the
    b = 1 gradient rules, the few [s, ...] tensors and attention's s x s make it approximate, which only costs
    an extra check). The largest micro-batches, not the smallest, because memory is often flat at first (the
    optimizer step peaks until the activations outgrow it) and steepest near the limit. None without two
    finite points."""
    pts = sorted((b, v) for b, v in batch_seen.items() if v != float("inf"))
    if len(pts) < 2:
        return None
    (b1, v1), (b2, v2) = pts[-2], pts[-1]
    slope = (v2 - v1) / (b2 - b1)
    if slope <= 0:
        return None
    b_cross = b2 + (usable - v2) / slope
    return int(b_cross * own_s / own_b) // SEQ_STEP


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
