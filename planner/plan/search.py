"""The bounded plan search behind recommend(): layouts, groups, the memoised fit check, branch and bound.

See planner/plan/recommend.py for the search space, the monotonicities it relies on and the ranking.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from planner.errors import PlannerError
from planner.estimate.result import Estimate
from planner.estimate.throughput import StepTime, flops_per_token, step_time, throughput_from_step
from planner.plan.estimate_cache import LAYOUTS, EstimateCache
from planner.plan.types import ATTN_ORDER, METHOD_PREFERENCE, OFFLOAD_ORDER
from planner.specs import (
    AttnImpl,
    Cluster,
    FsdpConfig,
    GpuSpec,
    Method,
    ModelSpec,
    Offload,
    Parallelism,
    Plan,
    TrainSpec,
)
from planner.units import fmt_gib


def divisors(n: int) -> tuple[int, ...]:
    small, large = [], []
    i = 1
    while i * i <= n:
        if n % i == 0:
            small.append(i)
            if i != n // i:
                large.append(n // i)
        i += 1
    return tuple(small + large[::-1])


def gib(n: int | float) -> str:
    return fmt_gib(n, 1)


@dataclass(frozen=True)
class Layout:
    method: Method
    zero_stage: int
    offload: Offload
    grad_checkpointing: bool
    attn_impl: AttnImpl
    fsdp: FsdpConfig | None = None  # FSDP2 with these settings (zero_stage 0, no DeepSpeed offload)

    def order(self) -> tuple:
        # on a tie FSDP2 ranks after DeepSpeed's stages (resharding first, CPU offload last)
        fsdp = () if self.fsdp is None else (not self.fsdp.reshard_after_forward, self.fsdp.cpu_offload)
        return (
            4 if self.fsdp is not None else self.zero_stage,
            fsdp,
            OFFLOAD_ORDER.index(self.offload),
            self.grad_checkpointing,
            ATTN_ORDER.index(self.attn_impl),
        )


@dataclass(frozen=True)
class _Group:
    """All plans of one layout on one GPU count; ``key`` is the best any of them could rank (largest
    micro-batch, memory ignored)."""

    key: tuple
    layout: Layout
    num_gpus: int
    micros: tuple[int, ...]
    feasible: bool  # micro-batch 1 fits (by the fewest-GPUs search)


@dataclass(frozen=True)
class Scored:
    key: tuple
    plan: Plan
    step: StepTime
    tokens_per_s: float  # cluster


class Searcher:
    """The bounded search over one model, global batch and GPU type. Reused by the advice module."""

    def __init__(self, model: ModelSpec, base: TrainSpec, gpu: GpuSpec, gpus_per_node: int, *, global_batch_size: int,
                 margin: float, mfu: float | None, num_tokens: int, price_per_gpu_hour: float,
                 host_memory_bytes_per_node: int | None, allow_longer: bool = False,
                 inter_node_bytes_per_s: int = Cluster.inter_node_bytes_per_s) -> None:
        self.inter_node_bytes_per_s = inter_node_bytes_per_s
        self.model = model
        self.base = base
        self.gpu = gpu
        self.gpus_per_node = gpus_per_node
        self.g = global_batch_size
        self.margin = margin
        self.mfu = mfu
        self.num_tokens = num_tokens
        self.price = price_per_gpu_hour
        self.host_mem = host_memory_bytes_per_node
        self.memo = EstimateCache(model, margin, host_memory_bytes_per_node=host_memory_bytes_per_node,
                                  allow_longer=allow_longer)
        self.allow_longer = allow_longer
        self.failures: dict[tuple, tuple[tuple, Plan, Estimate | None, str]] = {}
        self.groups: list[_Group] = []
        self.group_fit: dict[tuple[Layout, int], int] = {}  # largest micro-batch that fits, per group
        self.preference = METHOD_PREFERENCE
        self.fsdp_configs: tuple[FsdpConfig, ...] = ()  # FSDP2 layouts the search weighs (recommend sets them)
        self.zero_stages: tuple[int, ...] = (0, 1, 2, 3)  # the DeepSpeed/DDP stages and offloads it searches
        self.offloads: tuple[Offload, ...] = OFFLOAD_ORDER

    # -- building blocks
    def cluster(self, n: int) -> Cluster:
        nodes = 1 if n <= self.gpus_per_node else n // self.gpus_per_node
        return Cluster(gpu=self.gpu, num_gpus=n, num_nodes=nodes, inter_node_bytes_per_s=self.inter_node_bytes_per_s,
                       host_memory_bytes_per_node=self.host_mem)

    def train(self, layout: Layout, micro: int, n: int) -> TrainSpec:
        if self.base.optimizer_in_backward:
            micro = max(1, self.g // n)  # gradients cannot accumulate: the global batch is one micro-batch
        return dataclasses.replace(
            self.base,
            method=layout.method,
            parallelism=layout_parallelism(layout, self.base),
            grad_checkpointing=layout.grad_checkpointing,
            attn_impl=layout.attn_impl,
            micro_batch=micro,
            # Outside the divisible counts (advice only), accumulation 1 stands in; memory does not depend on it.
            grad_accum=max(1, self.g // (micro * n)),
        )

    def plan(self, layout: Layout, micro: int, n: int) -> Plan:
        return Plan(self.model, self.train(layout, micro, n), self.cluster(n), self.g)

    def score(self, plan: Plan) -> Scored:
        split = self.memo.split(plan.train)
        st = step_time(self.model, plan.train, plan.cluster, mfu=self.mfu, counts=self.memo.counts, split=split)
        tps = st.tokens_per_rank * plan.cluster.num_gpus / st.total_s
        t = plan.train
        per_gpu = st.tokens_per_rank / st.total_s
        key = (
            self.preference.index(t.method),
            # Tokens/s per GPU: on a fixed GPU count the cluster's throughput; across counts what a GPU-hour
            # buys, so it orders by cost too (one price for every GPU-hour).
            -round(per_gpu, 6),
            -plan.cluster.num_gpus,  # the same cost per token sooner
            layout_of(t).order(),
            -t.micro_batch,
        )
        return Scored(key, plan, st, tps)

    def check(self, plan: Plan) -> tuple[bool, Estimate | None, str]:
        """Does ``plan`` fit? (fits, estimate or None when the model states alone rule it out, reason)."""
        usable = int(self.gpu.capacity_bytes * (1.0 - self.margin))
        lb = self.memo.states_lower_bound(plan.train, plan.cluster.num_gpus)
        if lb > usable:
            ok, est = False, None
            reason = f"model states alone need {gib(lb)} per GPU, more than the {gib(usable)} usable"
        else:
            est = self.estimate(plan)
            ok, reason = True, ""
            peak = max(est.device_bytes, est.reserved_bytes)
            if peak > usable:
                ok = False
                reason = (
                    f"peak {gib(est.device_bytes)} on the device ({est.peak_phase}) exceeds the {gib(usable)} usable "
                    f"({gib(self.gpu.capacity_bytes)} CUDA-visible minus the {self.margin:.0%} margin)"
                )
            elif est.host_fits is False:
                ok = False
                reason = f"offload needs {gib(est.cpu_bytes_per_node)} of host RAM per node, more than {gib(self.host_mem)}"
        if not ok:
            s = self.score(plan)
            k = (plan.train, plan.cluster.num_gpus)
            self.failures.setdefault(k, (s.key, plan, est, reason))
        return ok, est, reason

    def estimate(self, plan: Plan) -> Estimate:
        return self.memo.estimate(plan.train, plan.cluster)

    def fits(self, layout: Layout, micro: int, n: int) -> bool:
        return self.check(self.plan(layout, micro, n))[0]

    def with_throughput(self, plan: Plan) -> Estimate:
        est = self.estimate(plan)
        split = self.memo.split(plan.train)
        st = step_time(self.model, plan.train, plan.cluster, mfu=self.mfu, counts=self.memo.counts, split=split)
        fpt = flops_per_token(self.model, plan.train, self.memo.counts, split)
        tp = throughput_from_step(st, fpt, plan.cluster, mfu=self.mfu, num_tokens=self.num_tokens,
                                  price_per_gpu_hour=self.price)
        return dataclasses.replace(est, throughput=tp)

    # -- the search
    def layouts(self, method: Method, zero_stages, offloads, checkpointing, attn_impls) -> list[Layout]:
        """Every valid layout: DeepSpeed's (and ZeRO-0) stage x offload pairs asked for, then FSDP2's settings
        in ``fsdp_configs``."""
        out = []
        fsdp = [Layout(method, 0, Offload.NONE, False, AttnImpl.SDPA, c) for c in self.fsdp_configs]
        for ckpt in checkpointing:
            candidates = [Layout(method, stage, offload, ckpt, AttnImpl.SDPA) for stage, offload in LAYOUTS
                          if stage in zero_stages and offload in offloads]
            for shape in candidates + [dataclasses.replace(f, grad_checkpointing=ckpt) for f in fsdp]:
                for attn in attn_impls:
                    layout = dataclasses.replace(shape, attn_impl=attn)
                    try:
                        # a layout the spec refuses (e.g. --precision bf16-autocast with DeepSpeed or
                        # checkpointing, QLoRA with FSDP2) is not a candidate
                        dataclasses.replace(self.base, method=method, parallelism=layout_parallelism(layout, self.base),
                                            grad_checkpointing=ckpt, attn_impl=attn)
                    except PlannerError:
                        continue
                    out.append(layout)
        return sorted(out, key=lambda lay: (not lay.grad_checkpointing, lay.order()))

    def min_gpus(self, layout: Layout, counts: tuple[int, ...], cache: dict) -> int | None:
        """Fewest GPUs in ``counts`` on which ``layout`` fits at micro-batch 1 (memory non-increasing in N)."""
        twin = dataclasses.replace(layout, grad_checkpointing=True)
        if not layout.grad_checkpointing and cache.get(twin, 0) is None:
            return None  # checkpointing never raises memory: if it does not fit with it, not without either
        if not self.fits(layout, 1, counts[-1]):
            cache[layout] = None
            return None
        lo, hi = 0, len(counts) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self.fits(layout, 1, counts[mid]):
                hi = mid
            else:
                lo = mid + 1
        cache[layout] = counts[hi]
        return counts[hi]

    def best(self, layouts: list[Layout], counts: tuple[int, ...], k: int) -> list[Scored]:
        """The ``k`` best fitting plans, at most one per (layout, GPU count), best first."""
        nmin: dict[Layout, int | None] = {}
        groups = []
        for layout in layouts:
            sdpa = dataclasses.replace(layout, attn_impl=AttnImpl.SDPA)
            if layout.attn_impl is not AttnImpl.SDPA and nmin.get(sdpa) is not None:
                # Where the sdpa twin fits, this attention choice is settled group by group below (one check
                # above sdpa's largest micro-batch); only where sdpa never fits does it need its own search.
                n0 = nmin[sdpa]
            else:
                n0 = self.min_gpus(layout, counts, nmin)
            for n in counts:
                micros = divisors(self.g // n)
                bound = self.score(self.plan(layout, micros[-1], n))
                groups.append(_Group(bound.key, layout, n, micros, n0 is not None and n >= n0))
        self.groups += groups
        groups.sort(key=lambda g: g.key)
        found: list[Scored] = []
        for group in groups:
            if not group.feasible:
                continue
            if len(found) >= k and group.key > found[k - 1].key:
                break
            layout, n, micros = group.layout, group.num_gpus, group.micros
            lo, hi = 0, len(micros) - 1
            twin = self.group_fit.get((dataclasses.replace(layout, attn_impl=AttnImpl.SDPA), n))
            if layout.attn_impl is not AttnImpl.SDPA and twin is not None:
                # The same layout with sdpa ranks first at equal speed, so this attention choice only matters
                # if it fits a larger micro-batch: one check above sdpa's largest settles it.
                i = micros.index(twin)
                if i == hi or not self.fits(layout, micros[i + 1], n):
                    continue
                lo = i + 1
            # The largest micro-batch first: it fits often, and it is the one with accumulation 1, where the
            # estimate may drop gradient-accumulation buffers (so monotonicity is only assumed below it).
            if self.fits(layout, micros[hi], n):
                lo = hi
            else:
                hi -= 1  # micro-batch 1 fits at n >= n0; find the largest that fits
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self.fits(layout, micros[mid], n):
                    lo = mid
                else:
                    hi = mid - 1
            self.group_fit[(layout, n)] = micros[lo]
            plan = self.plan(layout, micros[lo], n)
            if not self.check(plan)[0]:
                continue  # the estimator broke monotonicity in N; never return a plan that does not fit
            scored = self.score(plan)
            # One plan per (method, stage, offload, checkpointing, GPU count): attention variants that only
            # tie are not separate alternatives.
            sig = _signature(plan)
            twin = next((f for f in found if _signature(f.plan) == sig), None)
            if twin is not None:
                if twin.key <= scored.key:
                    continue
                found.remove(twin)
            found.append(scored)
            found.sort(key=lambda s: s.key)
        return found[:k]


def _signature(plan: Plan) -> tuple:
    t = plan.train
    return (t.method, t.parallelism.engine, t.parallelism.fsdp_config, t.zero_stage, t.offload, t.grad_checkpointing,
            plan.cluster.num_gpus)


def layout_parallelism(layout: Layout, base: TrainSpec) -> Parallelism:
    """The layout's engine: FSDP2 with its settings, or the stage and offload with the base's DeepSpeed buckets and
    thresholds (--deepspeed-config), which carry into every DeepSpeed layout; stage 0 stays on DeepSpeed's engine
    when the base runs it (``--engine deepspeed --zero 0``)."""
    if layout.fsdp is not None:
        return Parallelism.fsdp2(layout.fsdp)
    return Parallelism.from_zero(layout.zero_stage, layout.offload, base.parallelism.zero_config,
                                 deepspeed_stage0=base.uses_deepspeed and base.zero_stage == 0)


def layout_of(t: TrainSpec) -> Layout:
    fsdp = t.parallelism.fsdp_config if t.uses_fsdp2 else None
    return Layout(t.method, t.zero_stage, t.offload, t.grad_checkpointing, t.attn_impl, fsdp)


# ------------------------------------------------------------------------------------------ recommend
