"""compare_gpus' search over layouts for one GPU x method (plan/compare_gpus.py): the layouts it tries, each
layout's fewest GPUs, and the plan it shows (the fewest GPU-seconds per token, within COST_TOLERANCE the fewest
GPUs)."""

from __future__ import annotations

import dataclasses

from planner.errors import PlannerError
from planner.estimate.throughput import SECONDS_PER_HOUR, step_on_gpu, step_time_on
from planner.plan.estimate_cache import GPUS_PER_NODE, LAYOUTS, EstimateCache
from planner.specs import Cluster, FsdpConfig, GpuSpec, Method, Parallelism, Precision, TrainSpec

# Within this share of the cheapest per token, the plan with fewer GPUs wins: 4096 GPUs to save 0.1% of the
# cost is not a better plan (tokens/s per GPU can creep up with the GPU count in the step-time model).
COST_TOLERANCE = 0.02


def cluster_for(gpu: GpuSpec, num_gpus: int, gpus_per_node: int = GPUS_PER_NODE) -> Cluster:
    num_nodes = 1 if num_gpus <= gpus_per_node else -(-num_gpus // gpus_per_node)
    return Cluster(gpu=gpu, num_gpus=num_gpus, num_nodes=num_nodes)


def layout_trains(base: TrainSpec, method: Method, precision: Precision, fsdp_configs: tuple[FsdpConfig, ...] = (),
                  zero_layouts: bool = True) -> list[TrainSpec]:
    """Every valid ZeRO x offload x checkpointing variant of ``base`` for ``method`` (unless ``zero_layouts`` is
    off), then FSDP2 with each of ``fsdp_configs`` (recommend's FSDP2 layouts, cli/fsdp_options.search_space);
    checkpointing off first (faster), on only when the user did not already ask for it. DeepSpeed's layouts come
    first, so a tie (same GPUs, same tokens/s) keeps the plan shown without FSDP2."""
    ckpts = (base.grad_checkpointing,) if base.grad_checkpointing else (False, True)
    layouts = ([Parallelism.from_zero(stage, offload) for stage, offload in LAYOUTS] if zero_layouts else [])
    layouts += [Parallelism.fsdp2(cfg) for cfg in fsdp_configs]
    out = []
    for ckpt in ckpts:
        for parallelism in layouts:
            try:
                out.append(dataclasses.replace(base, method=method, precision=precision, parallelism=parallelism,
                                               grad_checkpointing=ckpt))
            except PlannerError:
                continue  # e.g. QLoRA with parameter offload, bitsandbytes optimizers with ZeRO
    return out


def fewest_gpus(search: EstimateCache, gpu: GpuSpec, trains: list[TrainSpec], counts: tuple[int, ...],
                 collect_all: bool = True):
    """(fewest N, [trains that fit on N]) or (None, []); with ``collect_all`` False the list may be short once
    N is the smallest count."""
    best_n: int | None = None
    found: list[tuple[int, TrainSpec]] = []
    for train in trains:
        limit_i = len(counts) - 1 if best_n is None else counts.index(best_n)
        if not search.fits(train, cluster_for(gpu, counts[limit_i], search.gpus_per_node)):
            continue
        lo, hi = 0, limit_i  # fits at hi; find the smallest index that fits (memory non-increasing in N)
        while lo < hi:
            mid = (lo + hi) // 2
            if search.fits(train, cluster_for(gpu, counts[mid], search.gpus_per_node)):
                hi = mid
            else:
                lo = mid + 1
        n = counts[hi]
        if best_n is None or n < best_n:
            best_n = n
            found = [(n, t) for n_, t in found if n_ == n]
        if n == best_n:
            found.append((n, train))
        if best_n == counts[0] and not collect_all:
            break  # nothing fits on fewer
    return best_n, [t for _, t in found]


def best_plan(search: EstimateCache, gpu: GpuSpec, trains: list[TrainSpec], counts: tuple[int, ...],
               first: int, mfu: float | None, num_tokens: int, max_hours: float):
    """(train, GPU count, step, within max_hours) of the plan to show, over every layout and every count from
    the layout's own fewest: among plans that finish ``num_tokens`` within ``max_hours`` (all of them without
    tokens), those within COST_TOLERANCE of the most tokens/s per GPU (the cheapest per token), and of those
    the fewest GPUs, then the faster, then the earlier (simpler) layout. When no plan finishes in time, the
    fastest. A layout whose best possible tokens/s per GPU (at any count, memory aside) cannot come within the
    tolerance of a plan already found in time is not searched."""
    cluster_of = {n: cluster_for(gpu, n, search.gpus_per_node) for n in counts[first:]}
    limit_s = max_hours * SECONDS_PER_HOUR

    on_gpu: dict = {}  # step_time's GPU-count-free part, once per layout (mfu was validated by compare_gpus)

    def tps(train: TrainSpec, n: int):
        part = on_gpu.get(id(train))
        if part is None:
            part = on_gpu[id(train)] = step_on_gpu(search.model, train, gpu, mfu=mfu, accum=float(train.grad_accum),
                                                   counts=search.counts, split=search.split(train))
        st = step_time_on(part, cluster_of[n])
        return (st.tokens_per_rank / st.total_s if st.total_s > 0 else 0.0), st

    def in_time(value: float, n: int) -> bool:
        return not num_tokens or (value > 0 and num_tokens / (value * n) <= limit_s)

    speeds = {id(t): [tps(t, n) for n in counts[first:]] for t in trains}
    bound = {id(t): max(v for v, _ in speeds[id(t)]) for t in trains}
    ordered = sorted(enumerate(trains), key=lambda it: (-bound[id(it[1])], it[0]))
    found = []  # (tokens/s per GPU, GPU count, layout order, train, step)
    best_in_time = 0.0
    for k, (order, train) in enumerate(ordered):
        if best_in_time and bound[id(train)] < best_in_time * (1 - COST_TOLERANCE):
            break  # sorted by bound: no later layout comes within the tolerance either
        top = len(counts) - 1
        if search.fits(train, cluster_of[counts[first]]):
            top = first  # fits on the fewest GPUs of any layout: nothing to search
        elif not search.fits(train, cluster_of[counts[top]]):
            continue
        lo, hi = first, top  # fits at hi; the smallest index that fits (memory non-increasing in N)
        while lo < hi:
            mid = (lo + hi) // 2
            if search.fits(train, cluster_of[counts[mid]]):
                hi = mid
            else:
                lo = mid + 1
        for i in range(hi, len(counts)):
            value, st = speeds[id(train)][i - first]
            found.append((value, counts[i], order, train, st))
            if in_time(value, counts[i]):
                best_in_time = max(best_in_time, value)
        # Fits on the fewest GPUs there are, in time, at its best speed: no later layout (bound no higher) can be
        # preferred, as preference is fewer GPUs, then more tokens/s per GPU, then the earlier layout.
        nxt = bound[id(ordered[k + 1][1])] if k + 1 < len(ordered) else -1.0
        head = speeds[id(train)][0][0]
        if hi == first and in_time(head, counts[first]) and head >= bound[id(train)] and head >= nxt:
            break
    # Per-GPU memory is not monotone in the GPU count under ZeRO-1/2 (a rank's gradient buffer holds the whole
    # tensors across its partition's edges), so the plan picked is checked and the next one taken if it does not
    # fit.
    while found:
        in_time_values = [f[0] for f in found if in_time(f[0], f[1])]
        if in_time_values:
            best = max(in_time_values)
            near = [f for f in found if f[0] >= best * (1 - COST_TOLERANCE) and in_time(f[0], f[1])]
            pick = min(near, key=lambda f: (f[1], -f[0], f[2]))
        else:
            pick = max(found, key=lambda f: (f[0] * f[1], -f[1], -f[2]))  # the fastest
        value, n, _, train, st = pick
        if search.fits(train, cluster_of[n]):
            return train, n, st, bool(in_time_values)
        found.remove(pick)
    return None
