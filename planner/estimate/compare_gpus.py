"""Before buying compute: for every catalog GPU and method, the fewest GPUs that fit, time and cost.

For each accelerator x method the search tries every ZeRO stage x offload x checkpointing layout and,
per layout, the fewest GPUs (powers of two up to ``max_gpus``, 8 per node) whose estimated device peak
fits with the margin and whose offloaded states fit the node's host RAM. Memory comes from ``planner.estimate.core.estimate`` only; the model states alone
(ZeRO's per-rank params + grads + optimizer states, a lower bound of every peak) prune layouts and GPU
counts that cannot fit, and per-GPU memory never rising with more GPUs lets a binary search find the
fewest. Among the layouts that fit on that fewest count, the fastest (estimated step time) wins.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from planner import catalog
from planner.errors import PlannerError
from planner.estimate.core import estimate
from planner.estimate.params import count_params, split_params
from planner.estimate.sharding import shard_states
from planner.estimate.states import unsharded_states
from planner.estimate.throughput import (
    DEFAULT_MFU,
    SECONDS_PER_HOUR,
    flops_per_token,
    step_time,
    throughput_from_step,
    validate_mfu,
    validate_price,
    validate_tokens,
)
from planner.specs import Cluster, GpuSpec, Method, ModelSpec, Offload, Precision, TrainSpec

DEFAULT_MAX_GPUS = 4096
# Host RAM per node for offloaded states: a DGX H100 ships 2 TB of system memory; a plan whose offloaded
# states exceed the node's RAM cannot run, however little GPU memory it needs.
DEFAULT_HOST_MEMORY_BYTES_PER_NODE = 2048 * 2**30
# A node of the common 8-GPU server (DGX/HGX, 8-GPU PCIe servers); more GPUs means more nodes of 8.
GPUS_PER_NODE = 8
METHOD_ORDER = (Method.FULL, Method.LORA, Method.QLORA)

# Valid (ZeRO stage, offload) pairs, fastest first when memory allows (TrainSpec refuses the rest).
LAYOUTS: tuple[tuple[int, Offload], ...] = (
    (0, Offload.NONE),
    (1, Offload.NONE),
    (2, Offload.NONE),
    (3, Offload.NONE),
    (1, Offload.OPTIMIZER),
    (2, Offload.OPTIMIZER),
    (3, Offload.OPTIMIZER),
    (3, Offload.OPTIMIZER_PARAMS),
)


@dataclass(frozen=True)
class GpuOption:
    """One accelerator x method: the fewest GPUs that fit, the layout that gets there, time and cost.

    When nothing fits up to ``max_gpus``, ``fits`` is False and the layout/time/cost fields are None.
    Time, GPU-hours and cost are 0 when no ``num_tokens`` (cost also without a price), as in Throughput."""

    gpu: str
    method: str
    fits: bool
    max_gpus: int
    capacity_bytes: int
    precision: str
    num_gpus: int | None = None
    num_nodes: int | None = None
    zero_stage: int | None = None
    offload: str | None = None
    grad_checkpointing: bool | None = None
    device_bytes: int | None = None
    headroom_bytes: int | None = None
    tokens_per_s_per_gpu: float | None = None
    tokens_per_s: float | None = None
    step_time_s: float | None = None
    time_s: float | None = None
    gpu_hours: float | None = None
    cost: float | None = None
    note: str = ""

    @property
    def tokens_per_s_cluster(self) -> float | None:
        return self.tokens_per_s

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def gpu_counts(max_gpus: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to max_gpus (and max_gpus itself when it is not a power of two but fills nodes)."""
    counts = []
    n = 1
    while n <= max_gpus:
        counts.append(n)
        n *= 2
    if counts[-1] != max_gpus and (max_gpus <= GPUS_PER_NODE or max_gpus % GPUS_PER_NODE == 0):
        counts.append(max_gpus)
    return tuple(counts)


def cluster_for(gpu: GpuSpec, num_gpus: int, gpus_per_node: int = GPUS_PER_NODE) -> Cluster:
    num_nodes = 1 if num_gpus <= gpus_per_node else -(-num_gpus // gpus_per_node)
    return Cluster(gpu=gpu, num_gpus=num_gpus, num_nodes=num_nodes)


def precision_for(gpu: GpuSpec, precision: Precision) -> Precision:
    """GPUs without bf16 (Volta, Turing) train in fp16 with loss scaling instead."""
    if gpu.supports_bf16:
        return precision
    return {Precision.BF16_MIXED: Precision.FP16_MIXED, Precision.BF16: Precision.FP16_MIXED}.get(
        precision, precision
    )


class EstimateCache:
    """Memoised estimates for one model; lower bounds from the model states alone."""

    def __init__(self, model: ModelSpec, margin: float, gpus_per_node: int = GPUS_PER_NODE,
                 host_memory_bytes_per_node: int = DEFAULT_HOST_MEMORY_BYTES_PER_NODE,
                 allow_longer: bool = False) -> None:
        self.model = model
        self.allow_longer = allow_longer
        self.host_mem = host_memory_bytes_per_node
        self.margin = margin
        self.gpus_per_node = gpus_per_node
        self.counts = count_params(model)
        self.num_calls = 0
        self._cache: dict[tuple, Any] = {}
        self._splits: dict[tuple, Any] = {}

    def split(self, train: TrainSpec):
        key = (train.method, train.lora, train.quant)
        if key not in self._splits:
            self._splits[key] = split_params(self.counts, train)
        return self._splits[key]

    def states_lower_bound(self, train: TrainSpec, num_gpus: int) -> int:
        """Per-GPU model states after ZeRO/offload: part of every peak, so a peak is never below this."""
        split = self.split(train)
        states = unsharded_states(self.counts, split, train)
        sharded = shard_states(states, train, num_gpus, self.counts.largest_module)
        return sharded.params_bytes + sharded.grads_bytes + sharded.optimizer_states_bytes

    def estimate(self, train: TrainSpec, cluster: Cluster):
        key = (train, cluster)
        if key not in self._cache:
            self.num_calls += 1
            # allow_longer only when asked, so this also runs against an estimate() without the keyword.
            kwargs = {"allow_longer": True} if self.allow_longer else {}
            self._cache[key] = estimate(self.model, train, cluster, margin=self.margin, **kwargs)
        return self._cache[key]

    def fits(self, train: TrainSpec, cluster: Cluster) -> bool:
        usable = int(cluster.gpu.memory_bytes * (1.0 - self.margin))
        if self.states_lower_bound(train, cluster.num_gpus) > usable:
            return False
        est = self.estimate(train, cluster)
        return est.fits and est.reserved_bytes <= usable and est.cpu_bytes_per_node <= self.host_mem


def _layout_trains(base: TrainSpec, method: Method, precision: Precision) -> list[TrainSpec]:
    """Every valid ZeRO x offload x checkpointing variant of ``base`` for ``method``; checkpointing off
    first (faster), on only when the user did not already ask for it."""
    ckpts = (base.grad_checkpointing,) if base.grad_checkpointing else (False, True)
    out = []
    for ckpt in ckpts:
        for stage, offload in LAYOUTS:
            try:
                out.append(
                    dataclasses.replace(
                        base,
                        method=method,
                        precision=precision,
                        zero_stage=stage,
                        offload=offload,
                        grad_checkpointing=ckpt,
                    )
                )
            except PlannerError:
                continue  # e.g. QLoRA with ZeRO-3, bitsandbytes optimizers with ZeRO
    return out


def _fewest_gpus(search: EstimateCache, gpu: GpuSpec, trains: list[TrainSpec], counts: tuple[int, ...]):
    """(fewest N, [trains that fit on N]) or (None, [])."""
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
    return best_n, [t for _, t in found]


def compare_gpus(
    model: ModelSpec,
    train: TrainSpec,
    *,
    num_tokens: int = 0,
    mfu: float = DEFAULT_MFU,
    price_per_gpu_hour: float = 0.0,
    margin: float = 0.1,
    max_gpus: int = DEFAULT_MAX_GPUS,
    host_memory_bytes_per_node: int = DEFAULT_HOST_MEMORY_BYTES_PER_NODE,
    gpus: tuple[GpuSpec, ...] | None = None,
    methods: tuple[Method, ...] = METHOD_ORDER,
) -> list[GpuOption]:
    """For every catalog GPU x method, the fewest GPUs that fit, sorted by cost (then GPU-hours per token,
    GPU count, name, method). Rows where nothing fits come last. ``train`` supplies micro-batch, sequence,
    accumulation, precision, optimizer, LoRA and attention settings; method, ZeRO stage, offload and
    checkpointing are searched."""
    validate_mfu(mfu)
    validate_price(price_per_gpu_hour)
    validate_tokens(num_tokens)
    if not 0.0 <= margin < 1.0:
        raise PlannerError(f"--margin must be in [0, 1), got {margin}.")
    if not isinstance(max_gpus, int) or max_gpus < 1 or max_gpus > 1_000_000:
        raise PlannerError(f"--max-gpus must be an integer from 1 to 1000000, got {max_gpus!r}.")
    search = EstimateCache(model, margin, host_memory_bytes_per_node=host_memory_bytes_per_node)
    counts = gpu_counts(max_gpus)
    rows: list[GpuOption] = []
    for gpu in gpus if gpus is not None else catalog.gpus():
        precision = precision_for(gpu, train.precision)
        for method in methods:
            rows.append(_row(search, gpu, method, precision, train, counts, max_gpus, mfu, num_tokens,
                             price_per_gpu_hour))
    return sort_rows(rows)


def _row(search, gpu, method, precision, base, counts, max_gpus, mfu, num_tokens, price) -> GpuOption:
    common = dict(gpu=gpu.name, method=method.value, max_gpus=max_gpus, capacity_bytes=gpu.memory_bytes,
                  precision=precision.value)
    note = "" if precision is base.precision else f"{gpu.name} has no bf16: {precision.value} instead"
    try:
        trains = _layout_trains(base, method, precision)
        n, fitting = _fewest_gpus(search, gpu, trains, counts) if trains else (None, [])
    except PlannerError as exc:
        return GpuOption(**common, fits=False, note=str(exc))
    if n is None:
        why = f"nothing fits on up to {max_gpus} GPUs"
        if method is Method.QLORA:
            why += " (QLoRA runs with ZeRO 0-2 only, so every GPU holds the whole 4-bit base)"
        return GpuOption(**common, fits=False, note=f"{why}; {note}" if note else why)
    cluster = cluster_for(gpu, n, search.gpus_per_node)
    best = None
    for train in fitting:
        split = search.split(train)
        st = step_time(search.model, train, cluster, mfu=mfu, counts=search.counts, split=split)
        # Fastest first; ties keep the earlier (simpler) layout: lower stage, no offload, no checkpointing.
        if best is None or st.total_s < best[1].total_s:
            best = (train, st, split)
    train, st, split = best
    est = search.estimate(train, cluster)
    fpt = flops_per_token(search.model, train, search.counts, split)
    tp = throughput_from_step(st, fpt, cluster, mfu=mfu, num_tokens=num_tokens, price_per_gpu_hour=price)
    cluster_tps = tp.tokens_per_s_per_gpu * n
    gpu_hours = tp.total_time_s / SECONDS_PER_HOUR * n
    return GpuOption(
        **common,
        fits=True,
        num_gpus=n,
        num_nodes=cluster.num_nodes,
        zero_stage=train.zero_stage,
        offload=train.offload.value,
        grad_checkpointing=train.grad_checkpointing,
        device_bytes=est.device_bytes,
        headroom_bytes=est.headroom_bytes,
        tokens_per_s_per_gpu=tp.tokens_per_s_per_gpu,
        tokens_per_s=cluster_tps,
        step_time_s=tp.step_time_s,
        time_s=tp.total_time_s,  # 0 without --tokens, as in Throughput
        gpu_hours=gpu_hours,
        cost=tp.cost,  # 0 without --tokens or --price-per-gpu-hour
        note=note,
    )


def sort_rows(rows: list[GpuOption]) -> list[GpuOption]:
    """Cheapest first. Cost is price x GPU-hours and the price is the same for every GPU, so GPU-seconds per
    token (1 / tokens/s per GPU) orders rows even when no --tokens or --price is given."""

    def key(r: GpuOption):
        per_token = 1.0 / r.tokens_per_s_per_gpu if r.fits and r.tokens_per_s_per_gpu else float("inf")
        method_i = [m.value for m in METHOD_ORDER].index(r.method) if r.method in {m.value for m in METHOD_ORDER} else 9
        return (not r.fits, per_token, r.num_gpus or 0, r.gpu, method_i)

    return sorted(rows, key=key)
