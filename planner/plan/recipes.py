"""recommend's recipe knobs (issue 16): when nothing fits with the recipe asked for, the memory-saving knobs left
at their defaults are tried, least intrusive first, and the first that lets a plan fit is chosen and said why.

Each step is a change to the base TrainSpec; a step the spec refuses for the base (e.g. --activation-offload with
QLoRA, --optimizer-in-backward with fp32 masters) is skipped, and a layout it refuses (8-bit AdamW with DeepSpeed)
is left out by the search itself (search.Searcher.layouts). The order:

1. ``--loss chunked-ce`` (torchtune's CEWithChunkedOutputLoss): the same loss, the [tokens, vocab] logits upcast
   chunk by chunk, so the fp32 logits and their gradients never exist at once.
2. ``--activation-offload`` (torch.autograd.graph.save_on_cpu): the same step, saved activations in host RAM;
   slower (host copies), bounded by --host-ram.
3. ``--optimizer adamw-8bit`` (bitsandbytes): the AdamW moments in 8-bit blocks, 2 bytes per parameter instead of
   8; changes the optimizer's numerics, so it comes after the exact knobs.
4. ``--optimizer-in-backward`` (torchtune's optimizer_in_bwd): gradients freed as they are made; one GPU, no
   accumulation, no fp32 masters.
5. then the cumulative combinations: 1 + 3, and 1 + 2 + 3.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from planner.errors import PlannerError
from planner.specs import Loss, LossSpec, Optimizer, TrainSpec

_CHUNKED = ("--loss chunked-ce", "torchtune's chunked cross-entropy upcasts the logits chunk by chunk")
_OFFLOAD = ("--activation-offload", "saved activations go to host RAM (torch's save_on_cpu)")
_ADAMW_8BIT = ("--optimizer adamw-8bit", "bitsandbytes keeps the AdamW moments in 8-bit blocks")
_IN_BACKWARD = ("--optimizer-in-backward", "each parameter is stepped in backward and its gradient freed")
# the training flag (TrainingFlags field) each knob sets: a flag the user typed is not changed
FLAG_OF = {_CHUNKED: "loss", _OFFLOAD: "activation_offload", _ADAMW_8BIT: "optimizer",
           _IN_BACKWARD: "optimizer_in_backward"}


def _chunked(t: TrainSpec) -> TrainSpec | None:
    if t.loss.kind is not Loss.STANDARD or not t.task.is_default:
        return None
    return dataclasses.replace(t, loss=LossSpec(Loss.CHUNKED_CE))


def _offload(t: TrainSpec) -> TrainSpec | None:
    return None if t.activation_offload else dataclasses.replace(t, activation_offload=True)


def _adamw_8bit(t: TrainSpec) -> TrainSpec | None:
    if t.optimizer not in (Optimizer.ADAMW, Optimizer.ADAMW_FUSED):
        return None
    # a bitsandbytes optimizer runs without DeepSpeed: the search keeps the ZeRO-0 layouts
    return dataclasses.replace(t, optimizer=Optimizer.ADAMW_8BIT)


def _in_backward(t: TrainSpec) -> TrainSpec | None:
    return None if t.optimizer_in_backward else dataclasses.replace(t, optimizer_in_backward=True, grad_accum=1)


STEPS: tuple[tuple[tuple[tuple[str, str], Callable[[TrainSpec], TrainSpec | None]], ...], ...] = (
    ((_CHUNKED, _chunked),),
    ((_OFFLOAD, _offload),),
    ((_ADAMW_8BIT, _adamw_8bit),),
    ((_IN_BACKWARD, _in_backward),),
    ((_CHUNKED, _chunked), (_ADAMW_8BIT, _adamw_8bit)),
    ((_CHUNKED, _chunked), (_OFFLOAD, _offload), (_ADAMW_8BIT, _adamw_8bit)),
)


def variants(base: TrainSpec, fixed: frozenset[str] = frozenset(), *,
             host_ram_known: bool = True) -> list[tuple[TrainSpec, tuple[tuple[str, str], ...]]]:
    """Each step applied to ``base`` (skipped when a knob is already on, its flag is in ``fixed`` (typed by the
    user), or the spec refuses the result), with the knobs it turned on, in the order above. Activation
    offloading only with ``host_ram_known`` (--host-ram): otherwise nothing bounds the host copies it makes."""
    out = []
    for step in STEPS:
        if any(FLAG_OF[knob] in fixed for knob, _ in step):
            continue
        if not host_ram_known and any(knob is _OFFLOAD for knob, _ in step):
            continue
        train: TrainSpec | None = base
        try:
            for _, apply in step:
                train = apply(train) if train is not None else None
        except PlannerError:
            continue
        if train is not None and train != base:
            out.append((train, tuple(knob for knob, _ in step)))
    return out


def why(knobs: tuple[tuple[str, str], ...], asked: TrainSpec) -> str:
    """The recommendation's sentence for the knobs it turned on."""
    names = " and ".join(name for name, _ in knobs)
    how = "; ".join(reason for _, reason in knobs)
    return (f"Nothing fits with the recipe asked for (loss {asked.loss.kind.value}, optimizer {asked.optimizer.value}"
            f"{', activation offload' if asked.activation_offload else ''}); {names} "
            f"{'let' if len(knobs) > 1 else 'lets'} the plan fit: {how}. "
            f"The bundle runs it; pass --no-recipes to keep the recipe as asked.")
