"""The trainable tensors in DeepSpeed's flat order: ``model.parameters()`` order, one param group.

``module_blocks`` walks the modules in ``model.named_modules()`` order as (modules, repeats) blocks, one per
run of alike decoder layers, so a model of any depth costs one block; ``trainable_blocks`` keeps each module's
trainable tensors (full fine-tuning: every parameter; LoRA and QLoRA: peft's ``lora_A`` and ``lora_B`` and the
``modules_to_save`` copies) and ``flat_numels`` lays them out one entry per tensor: the buffer DeepSpeed
ZeRO 1/2 partitions (rank_partitions.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain

from planner.estimate.count.inventory import ModuleGroup, ParamCounts, modules_per_layer
from planner.estimate.count.params import lora_adapters, saved_groups
from planner.specs import LoraSpec, Method, TrainSpec


def _module_numels(g: ModuleGroup) -> tuple[int, ...]:
    """One module's own parameter tensors, in registration order (weight before bias)."""
    if g.param_shapes:
        out = []
        for _, shape in g.param_shapes:
            size = 1
            for dim in shape:
                size *= dim
            out.append(size)
        return tuple(out)
    if g.kind == "linear":
        return (g.in_features * g.out_features,) + ((g.out_features,) if g.bias else ())
    if g.kind == "norm" and g.bias:
        return (g.num_params // 2, g.num_params // 2)
    return (g.num_params,)


def module_blocks(counts: ParamCounts, num_layers: int) -> list[tuple[tuple[ModuleGroup, ...], int]]:
    """Every module owning parameters in ``model.named_modules()`` order, as (modules, repeats) blocks: the
    modules before the decoder layers, each run of layers holding the same modules (one block for a model
    whose layers are alike, however deep), then the ones after. Within a layer, modules in group order."""
    groups = counts.modules
    first_layered = next((i for i, g in enumerate(groups) if "*" in g.path), len(groups))
    layered = [g for g in groups if "*" in g.path]
    # per layered group, its modules in layer x: explicit layer ids, else `per` in each of the first
    # num_layers layers (or one in each of the first num_modules layers)
    explicit = {id(g): Counter(g.layer_ids) for g in layered if g.layer_ids}
    points = {0}
    for g in layered:
        if g.layer_ids:
            points.update(x for layer in explicit[id(g)] for x in (layer, layer + 1))
        else:
            per = modules_per_layer(g, num_layers)
            points.update((g.num_modules // per, -(-g.num_modules // per)))

    def held(g: ModuleGroup, layer: int) -> int:
        if g.layer_ids:
            return explicit[id(g)].get(layer, 0)
        per = modules_per_layer(g, num_layers)
        return max(0, min(per, g.num_modules - layer * per))

    blocks: list[tuple[tuple[ModuleGroup, ...], int]] = [(tuple(g for g in groups[:first_layered]), 1)]
    bounds = sorted(points)
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        layer = tuple(g for g in layered for _ in range(held(g, lo)))
        if blocks and len(blocks) > 1 and blocks[-1][0] == layer:
            blocks[-1] = (layer, blocks[-1][1] + hi - lo)
        elif layer:
            blocks.append((layer, hi - lo))
    blocks.append((tuple(g for g in groups[first_layered:] if "*" not in g.path), 1))
    return [(mods, reps) for mods, reps in blocks if mods]


def module_sequence(counts: ParamCounts, num_layers: int) -> list[ModuleGroup]:
    """Every module owning parameters (one entry per module instance) in ``model.named_modules()`` order."""
    return [g for mods, reps in module_blocks(counts, num_layers) for _ in range(reps) for g in mods]


@dataclass(frozen=True)
class FlatOrder:
    """What DeepSpeed's flat order of trainable tensors depends on: the model's modules and, for LoRA and QLoRA
    (the same trainable tensors), the adapters."""

    counts: ParamCounts
    num_layers: int
    lora: LoraSpec | None  # None: full fine-tuning

    @classmethod
    def of(cls, counts: ParamCounts, train: TrainSpec, num_layers: int) -> FlatOrder:
        return cls(counts, num_layers, None if train.method is Method.FULL else train.lora)


@lru_cache(maxsize=64)
def trainable_blocks(order: FlatOrder) -> tuple[tuple[tuple[int, ...], int], ...]:
    """Trainable tensors in ``model.parameters()`` order as (tensor sizes, repeats) blocks (module_blocks)."""
    own = trainable_of(order)
    out = []
    for mods, reps in module_blocks(order.counts, order.num_layers):
        block = tuple(chain.from_iterable(own[id(g)] for g in mods))
        if block:
            out.append((block, reps))
    return tuple(out)


def trainable_of(order: FlatOrder) -> dict[int, tuple[int, ...]]:
    """Each module group's trainable tensors, per module instance, in registration order (trainable_numels)."""
    counts = order.counts
    if order.lora is None:
        return {id(g): () if g.shared else _module_numels(g) for g in counts.modules}
    adapters: dict[str, list] = {}
    for a in lora_adapters(counts, order.lora):
        adapters.setdefault(a.path, []).append(a)
    saved = {g.path for g in saved_groups(counts, order.lora.modules_to_save)}
    out = {}
    for g in counts.modules:
        sizes = list(_module_numels(g)) if g.path in saved else []
        for path in [g.path] + [f"{g.path}.{name}" for name, _ in g.param_shapes]:
            for a in adapters.get(path, ()):
                r = a.rank * a.num_experts
                sizes += [r * a.in_features, a.out_features * r]
        out[id(g)] = tuple(sizes)
    return out


def trainable_numels(counts: ParamCounts, train: TrainSpec, num_layers: int) -> tuple[int, ...]:
    """Trainable tensors in ``model.parameters()`` order: DeepSpeed's flat order for one param group.

    Full fine-tuning: every parameter (a tied lm_head owns none). LoRA / QLoRA (peft): inside each adapted
    module ``lora_A`` then ``lora_B`` (registered after the base layer; lora.Linear A is [r, in], B [out, r];
    on MoE expert tensors ``ParamWrapper`` A is [r*E, in], B [out, r*E]), and the trainable copy of each
    ``modules_to_save`` module where the module is.
    """
    return flat_numels(FlatOrder.of(counts, train, num_layers))


def flat_numels(order: FlatOrder) -> tuple[int, ...]:
    """The trainable tensors of ``order``, one entry per tensor (trainable_numels)."""
    return tuple(chain.from_iterable(block * reps for block, reps in trainable_blocks(order)))
