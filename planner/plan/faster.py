"""recommend's recipe knobs when a plan already fits (issue 16): a loss that never holds the whole fp32
[tokens, vocab] logits can free enough memory for a faster layout (no activation checkpointing, a lower ZeRO stage,
less offload, a larger micro-batch), and recommend takes it when the modelled step is faster, and says why.

Only the losses are tried here: they compute the same cross-entropy as the standard loss (the same FLOPs in the
step-time model, estimate/throughput.py), so a faster plan is faster only because its memory lets a faster layout
fit. The optimizer knobs of plan/recipes.py change the training's numerics (8-bit moments) or its shape (no
accumulation, one GPU) and are tried only when nothing fits as asked. The order:

1. ``--loss chunked-ce`` (torchtune's CEWithChunkedOutputLoss; profiled on CPU);
2. ``--loss fused-linear-ce`` (Liger's LigerFusedLinearCrossEntropyLoss: Triton kernels, modelled from its source).

The method the search chose stays: a knob may make a faster layout of that method fit, never change the method.

The work stays small. For each knob, only the layouts whose throughput bound (largest micro-batch, memory ignored:
search.Searcher.score) beats the chosen plan by ``MIN_SPEEDUP`` are searched (none when the chosen plan is already
the fastest layout memory could allow), and only when one of them fits is recommend run again with the knob.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from planner.errors import PlannerError
from planner.plan.search import Scored, Searcher
from planner.plan.types import Alternative, Recommendation
from planner.specs import Loss, LossSpec, TrainSpec

# A recipe change for less than this relative gain in modelled tokens/s per GPU is not made: the plan as asked is
# kept. The step-time model ranks layouts by differences far below its absolute error (reports/time_accuracy.md),
# and a loss from another library is a change the user has to install and trust; 1% is the smallest gain said.
MIN_SPEEDUP = 0.01

_CHUNKED = ("--loss chunked-ce", "torchtune's chunked cross-entropy upcasts the logits chunk by chunk")
_FUSED = ("--loss fused-linear-ce", "Liger's fused linear cross-entropy never materialises the logits "
          "(Triton kernels, modelled from its source)")


def _loss(kind: Loss) -> Callable[[TrainSpec], TrainSpec | None]:
    def apply(t: TrainSpec) -> TrainSpec | None:
        if t.loss.kind is not Loss.STANDARD or not t.task.is_default:
            return None
        return dataclasses.replace(t, loss=LossSpec(kind))
    return apply


STEPS: tuple[tuple[tuple[str, str], Callable[[TrainSpec], TrainSpec | None]], ...] = (
    (_CHUNKED, _loss(Loss.CHUNKED_CE)),
    (_FUSED, _loss(Loss.FUSED_LINEAR_CE)),
)


def per_gpu(s: Scored) -> float:
    """Modelled tokens/s per GPU of a scored plan (the search's first throughput key)."""
    return s.step.tokens_per_rank / s.step.total_s


def variants(base: TrainSpec, fixed: frozenset[str] = frozenset()) -> list[tuple[TrainSpec, tuple[str, str]]]:
    """Each loss knob applied to ``base``: none when the user typed --loss, skipped where the spec refuses it."""
    if "loss" in fixed:
        return []
    out = []
    for knob, apply in STEPS:
        try:
            train = apply(base)
        except PlannerError:
            continue
        if train is not None:
            out.append((train, knob))
    return out


def faster_fits(search: Searcher, variant: TrainSpec, best: Scored, counts: tuple[int, ...], zero_stages, offloads,
                checkpointing, attn_impls) -> Scored | None:
    """The best plan of ``best``'s method with recipe ``variant`` whose modelled tokens/s per GPU beats ``best``'s
    by MIN_SPEEDUP, searched only over the layouts whose bound could (None when none fits)."""
    s = Searcher(search.model, variant, search.gpu, search.gpus_per_node, global_batch_size=search.g,
                 margin=search.margin, mfu=search.mfu, num_tokens=search.num_tokens,
                 price_per_gpu_hour=search.price, host_memory_bytes_per_node=search.host_mem,
                 allow_longer=search.allow_longer, inter_node_bytes_per_s=search.inter_node_bytes_per_s)
    s.fsdp_configs, s.zero_stages, s.offloads = search.fsdp_configs, search.zero_stages, search.offloads
    target = per_gpu(best) * (1.0 + MIN_SPEEDUP)
    # The base search's groups already carry each (layout, GPU count)'s bound, and the bound does not depend on the
    # loss (the step-time model charges every loss the same: estimate/throughput.py, traffic.py), so the layouts
    # worth searching are read from them without a new step time.
    method = best.plan.train.method
    promising = {(g.layout, g.num_gpus) for g in search.groups if g.layout.method is method and -g.key[1] >= target}
    if not promising:
        return None
    try:
        layouts = [lay for lay in s.layouts(method, zero_stages, offloads, checkpointing, attn_impls)
                   if any(lay == pl for pl, _ in promising)]
    except PlannerError:
        return None
    if not layouts:
        return None
    found = s.best(layouts, tuple(n for n in counts if any(n == pn for _, pn in promising)), 1)
    return found[0] if found and per_gpu(found[0]) >= target else None


def why(knob: tuple[str, str], asked: Recommendation, chosen: Recommendation) -> str:
    """The recommendation's sentence: what the knob frees and what the plan as asked would have been."""
    a, c = asked.plan.train, chosen.plan.train
    ta, tc = asked.estimate.throughput, chosen.estimate.throughput
    gain = tc.tokens_per_s_per_gpu / ta.tokens_per_s_per_gpu - 1.0
    changes = []
    if a.grad_checkpointing and not c.grad_checkpointing:
        changes.append("no activation checkpointing")
    if (a.parallelism.label != c.parallelism.label):
        changes.append(f"{c.parallelism.label} instead of {a.parallelism.label}")
    if a.micro_batch != c.micro_batch:
        changes.append(f"micro-batch {c.micro_batch} instead of {a.micro_batch}")
    if asked.plan.cluster.num_gpus != chosen.plan.cluster.num_gpus:
        changes.append(f"{chosen.plan.cluster.num_gpus} GPUs instead of {asked.plan.cluster.num_gpus}")
    what = "; ".join(changes) if changes else "a faster layout"
    return (f"{knob[0]} makes the plan faster: {knob[1]}, which frees the memory for {what}: "
            f"{tc.tokens_per_s_per_gpu:,.0f} tokens/s per GPU modelled instead of {ta.tokens_per_s_per_gpu:,.0f} "
            f"(+{gain:.1%}) with the loss as asked ({a.loss.kind.value}). The bundle runs it; pass --no-recipes "
            "or --loss to keep the loss as asked.")


def as_runner_up(asked: Recommendation) -> Alternative:
    """The plan as asked, first among the runners-up of the faster one."""
    return Alternative(plan=asked.plan, estimate=asked.estimate,
                       reason=f"the loss as asked ({asked.plan.train.loss.kind.value}): "
                              f"{asked.estimate.throughput.tokens_per_s_per_gpu:,.0f} tokens/s per GPU modelled, "
                              "slower")
