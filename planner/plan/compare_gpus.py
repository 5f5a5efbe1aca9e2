"""Before buying compute: for every catalog GPU and method, the cheapest plan that fits, its time and cost.

For each accelerator x method the search tries every ZeRO stage x offload x checkpointing layout on GPU
counts that are powers of two up to ``max_gpus`` (8 per node). Memory comes from
``planner.estimate.core.estimate`` only; the model states alone (ZeRO's per-rank params + grads + optimizer
states, a lower bound of every peak) prune layouts and GPU counts that cannot fit, and per-GPU memory never
rising with more GPUs lets a binary search find each layout's fewest GPUs.

Which plan: the one with the fewest GPU-seconds per token (the most tokens/s per GPU), which for one GPU type
is the cheapest per token whatever its price; within COST_TOLERANCE (2%) of that, the fewest GPUs. A layout is tried from its own fewest
GPUs up, so a 1-GPU offload plan of thousands of hours loses to the same model on two or eight GPUs without
offload when that costs less per token. ``min_gpus`` still reports the fewest GPUs that fit at all.

Price: the catalog's indicative USD list price per GPU type (``planner/catalog/gpus.json``: date and source
in each entry), or one ``price_per_gpu_hour`` for every GPU in the user's currency. Rows are ranked by cost
per token (price / tokens per second per GPU); rows without a price follow, ranked by GPU-hours per token;
rows where nothing fits come last. With ``num_tokens``, only plans that finish within ``max_hours`` (default
720 h, 30 days) compete; where none does, the fastest is shown, ranked after the rest. Precision (fp16 on
GPUs without bf16) and checkpointing are part of each row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from planner import catalog
from planner.errors import PlannerError
from planner.estimate.result import StepBreakdown
from planner.estimate.throughput import (
    DEFAULT_MFU,
    SECONDS_PER_HOUR,
    flops_per_token,
    throughput_from_step,
    validate_mfu,
    validate_price,
    validate_tokens,
)
from planner.plan.compare_layouts import COST_TOLERANCE, best_plan, cluster_for, fewest_gpus, layout_trains
from planner.plan.estimate_cache import (
    DEFAULT_HOST_MEMORY_BYTES_PER_NODE,
    GPUS_PER_NODE,
    LAYOUTS,
    EstimateCache,
)
from planner.specs import (
    FsdpConfig,
    GpuSpec,
    Method,
    ModelSpec,
    Precision,
    TrainSpec,
    validate_margin,
)
from planner.units import fmt_gib

__all__ = ["COST_TOLERANCE", "DEFAULT_MAX_HOURS", "LAYOUTS", "GpuOption", "cluster_for", "compare_gpus", "gpu_counts",
           "precision_for", "sort_rows"]

DEFAULT_MAX_GPUS = 4096
# With --tokens, only plans that finish within this many hours compete on cost (a 30-day run); when none does,
# the fastest is shown with a note. 1-GPU offload plans of thousands of hours were ranked first without it.
DEFAULT_MAX_HOURS = 720.0


def validate_max_hours(max_hours: float) -> None:
    if not isinstance(max_hours, (int, float)) or isinstance(max_hours, bool) or not 1.0 <= max_hours <= 1e7:
        raise PlannerError(f"--max-hours must be a number of hours from 1 to 10,000,000, got {max_hours}.")


METHOD_ORDER = (Method.FULL, Method.LORA, Method.QLORA)


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
    num_gpus: int | None = None  # the chosen plan's GPUs (the cheapest per token)
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
    min_gpus: int | None = None  # the fewest GPUs on which any layout fits
    # The price used: the catalog's USD list price, or --price-per-gpu-hour in the user's currency ("user");
    # None when neither is known (then cost is 0 and the row ranks after the priced rows).
    price_per_gpu_hour: float | None = None
    price_currency: str | None = None
    price_source: str = ""
    cost_per_million_tokens: float | None = None
    within_max_hours: bool | None = None  # False: no plan finishes the tokens in max_hours; the fastest is shown
    step: StepBreakdown | None = None  # where the chosen plan's step time goes (compute, communication, offload)
    engine: str | None = None  # ddp, deepspeed or fsdp2 (then zero_stage is 0 and ``fsdp`` its FsdpConfig dict)
    fsdp: dict | None = None

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


def precision_for(gpu: GpuSpec, precision: Precision) -> Precision:
    """GPUs without bf16 (Volta, Turing) train in fp16 with loss scaling instead."""
    if gpu.supports_bf16:
        return precision
    return {Precision.BF16_MIXED: Precision.FP16_MIXED, Precision.BF16: Precision.FP16_MIXED,
            Precision.BF16_AUTOCAST: Precision.FP16_AUTOCAST}.get(
        precision, precision
    )


def compare_gpus(
    model: ModelSpec,
    train: TrainSpec,
    *,
    num_tokens: int = 0,
    mfu: float | None = DEFAULT_MFU,
    price_per_gpu_hour: float = 0.0,
    margin: float = 0.1,
    max_gpus: int = DEFAULT_MAX_GPUS,
    host_memory_bytes_per_node: int | None = DEFAULT_HOST_MEMORY_BYTES_PER_NODE,
    gpus: tuple[GpuSpec, ...] | None = None,
    methods: tuple[Method, ...] = METHOD_ORDER,
    max_hours: float = DEFAULT_MAX_HOURS,
    fsdp_configs: tuple[FsdpConfig, ...] = (),
    zero_layouts: bool = True,
) -> list[GpuOption]:
    """For every catalog GPU x method, the cheapest plan that fits (and, with ``num_tokens``, finishes within
    ``max_hours``), ranked as ``sort_rows`` says.
    ``price_per_gpu_hour`` > 0 prices every GPU alike (the user's currency); 0 uses each GPU's catalog price
    (USD) where it has one. ``train`` supplies micro-batch, sequence, accumulation, precision, optimizer, LoRA
    and attention settings; method, ZeRO stage, offload, checkpointing and GPU count are searched, and FSDP2 with
    each of ``fsdp_configs`` (none by default: DDP and DeepSpeed only; ``zero_layouts`` False: FSDP2 only)."""
    validate_mfu(mfu)
    validate_price(price_per_gpu_hour)
    validate_tokens(num_tokens)
    validate_margin(margin)
    if not isinstance(max_gpus, int) or max_gpus < 1 or max_gpus > 1_000_000:
        raise PlannerError(f"--max-gpus must be an integer from 1 to 1000000, got {max_gpus!r}.")
    validate_max_hours(max_hours)
    search = EstimateCache(model, margin, host_memory_bytes_per_node=host_memory_bytes_per_node,
                           activation_floor=True)
    counts = gpu_counts(max_gpus)
    rows: list[GpuOption] = []
    for gpu in gpus if gpus is not None else catalog.gpus():
        precision = precision_for(gpu, train.precision)
        price = _price(gpu, price_per_gpu_hour)
        for method in methods:
            rows.append(_row(search, gpu, method, precision, train, counts, max_gpus, mfu, num_tokens, price,
                             max_hours, layout_trains(train, method, precision, fsdp_configs, zero_layouts)))
    return sort_rows(rows)


def _price(gpu: GpuSpec, given: float) -> tuple[float | None, str | None, str]:
    """(price per GPU-hour, currency, source) for ``gpu``: the user's price, else the catalog's USD price."""
    if given > 0:
        return given, "user", "--price-per-gpu-hour"
    if gpu.price_per_gpu_hour_usd:
        return gpu.price_per_gpu_hour_usd, "USD", gpu.price_source
    return None, None, gpu.price_source or "no catalog price"


def _row(search, gpu, method, precision, base, counts, max_gpus, mfu, num_tokens, price, max_hours,
         trains: list[TrainSpec]) -> GpuOption:
    price_value, currency, source = price
    common = dict(gpu=gpu.name, method=method.value, max_gpus=max_gpus, capacity_bytes=gpu.capacity_bytes,
                  precision=precision.value, price_per_gpu_hour=price_value, price_currency=currency,
                  price_source=source)
    note = "" if precision is base.precision else f"{gpu.name} has no bf16: {precision.value} instead"
    try:
        n_min, _ = fewest_gpus(search, gpu, trains, counts, collect_all=False) if trains else (None, [])
        plan = (best_plan(search, gpu, trains, counts, counts.index(n_min), mfu, num_tokens, max_hours)
                if n_min is not None else None)  # fmt: skip
    except PlannerError as exc:
        return GpuOption(**common, fits=False, note=str(exc))
    if plan is None:
        why = f"nothing fits on up to {max_gpus} GPUs"
        if method is Method.QLORA:
            why += " (even with QLoRA's 4-bit base)"
        return GpuOption(**common, fits=False, note=f"{why}; {note}" if note else why)
    train, n, st, in_time = plan
    if not in_time:
        slow = f"no plan finishes the tokens within {max_hours:,.0f} h (--max-hours); the fastest is shown"
        note = f"{note}; {slow}" if note else slow
    cluster = cluster_for(gpu, n, search.gpus_per_node)
    split = search.split(train)
    est = search.estimate(train, cluster)
    if est.cpu_bytes_per_node and est.host_fits is None:
        host = f"offload needs {fmt_gib(est.cpu_bytes_per_node, 0)} of host RAM per node, not checked (--host-ram)"
        note = f"{note}; {host}" if note else host
    fpt = flops_per_token(search.model, train, search.counts, split)
    tp = throughput_from_step(st, fpt, cluster, mfu=mfu, num_tokens=num_tokens, price_per_gpu_hour=price_value or 0.0)
    cluster_tps = tp.tokens_per_s_per_gpu * n
    gpu_hours = tp.total_time_s / SECONDS_PER_HOUR * n
    per_million = (price_value * 1e6 / SECONDS_PER_HOUR / tp.tokens_per_s_per_gpu
                   if price_value and tp.tokens_per_s_per_gpu > 0 else None)  # fmt: skip
    return GpuOption(
        **common,
        fits=True,
        num_gpus=n,
        num_nodes=cluster.num_nodes,
        zero_stage=train.zero_stage,
        offload=train.offload.value,
        engine=train.parallelism.engine.value,
        fsdp=train.parallelism.fsdp_config.to_dict() if train.uses_fsdp2 else None,
        grad_checkpointing=train.grad_checkpointing,
        device_bytes=est.device_bytes,
        headroom_bytes=est.headroom_bytes,
        tokens_per_s_per_gpu=tp.tokens_per_s_per_gpu,
        tokens_per_s=cluster_tps,
        step_time_s=tp.step_time_s,
        time_s=tp.total_time_s,  # 0 without --tokens, as in Throughput
        gpu_hours=gpu_hours,
        cost=tp.cost,  # 0 without --tokens or without a price
        note=note,
        min_gpus=n_min,
        cost_per_million_tokens=per_million,
        within_max_hours=in_time,
        step=tp.step,
    )


RANKING = ("ranked by cost per token (price per GPU-hour / tokens per second per GPU); rows without a price "
           "follow, by GPU-hours per token; then rows with no plan within --max-hours, and rows where nothing "
           "fits last")


def sort_rows(rows: list[GpuOption]) -> list[GpuOption]:
    """Cheapest per token first (see RANKING); ties by wall-clock time per token, GPU name, method."""
    order = [m.value for m in METHOD_ORDER]

    def key(r: GpuOption):
        method_i = order.index(r.method) if r.method in order else len(order)
        if not r.fits or not r.tokens_per_s_per_gpu:
            return (4, 0.0, 0.0, r.gpu, method_i)
        late = 2 if r.within_max_hours is False else 0
        gpu_s_per_token = 1.0 / r.tokens_per_s_per_gpu
        wall_per_token = gpu_s_per_token / (r.num_gpus or 1)
        if r.price_per_gpu_hour:
            return (late, r.price_per_gpu_hour * gpu_s_per_token, wall_per_token, r.gpu, method_i)
        return (late + 1, gpu_s_per_token, wall_per_token, r.gpu, method_i)

    return sorted(rows, key=key)
