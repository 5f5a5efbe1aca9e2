"""What fits: the largest micro-batch and the longest sequence (a multiple of 256 tokens) for a row.

"Fits" means the device figure (reserved + context + libraries, what nvidia-smi shows) stays within the usable
capacity, ``capacity x (1 - margin)`` -- the same test as ``Estimate.fits``. Memory only grows with the
micro-batch and the sequence length (tests/test_monotonic.py), so an exponential then binary search finds
both limits in about 2 log2(limit) evaluations.
"""

from __future__ import annotations

from dataclasses import replace

from planner.errors import PlannerError
from planner.estimate.result import Fit
from planner.specs import Cluster, ModelSpec, TrainSpec

SEQ_STEP = 256
MAX_MICRO_BATCH = 1 << 16
# With --allow-longer the search goes past the position limit, up to this many tokens.
MAX_SEQ_LEN_LONGER = 1 << 21


def _fits(model: ModelSpec, train: TrainSpec, cluster: Cluster, usable: int, device: str) -> bool:
    from planner.estimate.core import estimate

    try:
        est = estimate(model, train, cluster, margin=0.0, device=device, allow_longer=True)
    except PlannerError:
        return False
    return est.device_bytes <= usable


def _largest(ok, lo: int, hi: int) -> int:
    """The largest n in [lo, hi] with ok(n), given ok(lo) and ok monotone non-increasing; exponential probe."""
    good = lo
    step = lo
    while True:
        nxt = min(good + step, hi)
        if nxt == good or not ok(nxt):
            bad = nxt if nxt != good else hi + 1
            break
        good = nxt
        step *= 2
    while bad - good > 1:
        mid = (good + bad) // 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good


def find_fit(model: ModelSpec, train: TrainSpec, cluster: Cluster, *, margin: float, device: str = "cuda",
             allow_longer: bool = False) -> Fit:
    usable = int(cluster.gpu.memory_bytes * (1.0 - margin))

    def ok_batch(b: int) -> bool:
        return _fits(model, replace(train, micro_batch=b), cluster, usable, device)

    def ok_seq(k: int) -> bool:
        return _fits(model, replace(train, seq_len=k * SEQ_STEP), cluster, usable, device)

    max_b = _largest(ok_batch, 1, MAX_MICRO_BATCH) if ok_batch(1) else 0
    limit = MAX_SEQ_LEN_LONGER if allow_longer else model.max_position_embeddings
    max_k = limit // SEQ_STEP
    max_s = _largest(ok_seq, 1, max_k) * SEQ_STEP if max_k >= 1 and ok_seq(1) else 0
    return Fit(max_micro_batch=max_b, max_seq_len=max_s)
