"""DeepSpeed's ZeRO layout of one configuration, as an estimate asks for it.

- ``rank_partitions``  ZeRO 1/2: the ranks' partitions of the flat buffer and the gradient buffer each rank
                       makes (deepspeed/runtime/zero/stage_1_and_2.py), per tensor boundary, never per rank
- ``flat_order``       the trainable tensors in DeepSpeed's flat order, as blocks of alike layers

Here, on top of them (and re-exporting both): ``zero12_partitions``, the partitions of one ``PartitionSpec``
(cached: the same for every micro-batch and length the fit search tries), ``partitions_to_evaluate``, the ones
an estimate evaluates, and the parameters ZeRO-3 never partitions (``zero3_persistent_numels``) or releases
after forward (``zero3_released_after_forward``).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate

from planner.estimate.count.flat_order import (
    FlatOrder,
    flat_numels,
    module_blocks,
    module_sequence,
    trainable_blocks,
    trainable_numels,
    trainable_of,
)
from planner.estimate.count.inventory import ParamCounts, layer_of, uneven_layer_ids
from planner.estimate.count.params import saved_groups
from planner.estimate.count.rank_partitions import (
    RankPartition,
    RankPartitions,
    _partition_size,
    even_partition,
    rank_partitions,
)
from planner.specs import LoraSpec, Method, TrainSpec


@dataclass(frozen=True)
class PartitionSpec:
    """Exactly what the ZeRO 1/2 partitions read: the flat order, the data-parallel ranks and the reduce bucket."""

    order: FlatOrder
    num_ranks: int
    bucket_elements: int


@lru_cache(maxsize=64)
def zero12_partitions(spec: PartitionSpec) -> RankPartitions:
    """The ranks' partitions of the flat order (the same for every micro-batch and length the fit search tries)."""
    return rank_partitions(flat_numels(spec.order), spec.num_ranks, spec.bucket_elements)


@dataclass(frozen=True)
class Candidates:
    """The ZeRO 1/2 partitions an estimate evaluates, and whether the ranks' partitions differ at all."""

    partitions: tuple[RankPartition | None, ...]
    ranks_differ: bool


def partitions_to_evaluate(spec: PartitionSpec, num_trainable: int, rank: int | None) -> Candidates:
    """``rank``'s partition, or those that can hold the highest peak (RankPartitions.candidates), and whether
    the ranks differ (never said of one asked-for rank). ``(None,)``
    where the inventory's tensors do not add up to ``num_trainable`` (even shares stand in)."""
    total = sum(sum(block) * reps for block, reps in trainable_blocks(spec.order))
    if total != num_trainable:
        return Candidates((None,), False)
    parts = zero12_partitions(spec)
    chosen = (parts[rank],) if rank is not None else parts.candidates
    return Candidates(chosen, rank is None and parts.ranks_differ)


def buffer_segment(spec: PartitionSpec, rank: int) -> int:
    """The late-backward segment (step/late_segments.py ``SEGMENTS``: 0 from the first gradient, 1 from layer 1's
    backward, 2 from layer 0's) in which ZeRO-2 makes ``rank``'s gradient buffer: DeepSpeed allocates it when a
    reduced bucket first holds a gradient of the rank's partition (stage_1_and_2.py ``copy_grads_in_partition``),
    and the partition's first gradient to arrive is about its last tensor in the flat order (backward runs the
    layers top down). Layers 2 and up count as segment 0, the earliest (the simulation has no segment of their
    own), and a bucket reduced after the segment started counts from its start: never later than DeepSpeed."""
    numels = flat_numels(spec.order)
    total = sum(numels)
    part = _partition_size(total, spec.num_ranks)
    if part == 0 or rank * part >= total:
        return 0  # padding only: no buffer
    last = min((rank + 1) * part, total) - 1
    start1, start2 = _layer_starts(spec.order)
    return 2 if last < start1 else 1 if last < start2 else 0


def buffer_threshold(spec: PartitionSpec, rank: int) -> int:
    """The gradient elements reduced before ``rank``'s buffer exists, counted from the end of the flat order:
    DeepSpeed makes it in ``copy_grads_in_partition`` (stage_1_and_2.py, from ``reduce_ipg_grads``) when the
    bucket holding the first gradient of the rank's partition to arrive -- its last tensor, the flat order
    arriving about reversed -- is reduced, that is once more than the elements after that tensor's end were
    reduced (late_segments.py names each sub-segment of the late backward by the elements reduced before it).
    Counting from the tensor's end, not its start, places the buffer no later than DeepSpeed when a small tensor
    after it (a layer's norms) arrives later than the flat order says."""
    numels = [n for n in flat_numels(spec.order) if n > 0]
    ends = list(accumulate(numels))
    total = ends[-1] if ends else 0
    part = _partition_size(total, spec.num_ranks)
    if part == 0 or rank * part >= total:
        return 0
    last = min((rank + 1) * part, total) - 1
    return total - ends[bisect_right(ends, last)]


@lru_cache(maxsize=64)
def _layer_starts(order: FlatOrder) -> tuple[int, int]:
    """Flat offsets where decoder layers 1 and 2 start (the end of the layers where the model has fewer)."""
    own = trainable_of(order)
    pos, layer = 0, 0
    starts: dict[int, int] = {}
    for mods, reps in module_blocks(order.counts, order.num_layers):
        size = sum(sum(own[id(g)]) for g in mods)
        if any("*" in g.path for g in mods):
            for k in (1, 2):
                if layer <= k < layer + reps:
                    starts[k] = pos + (k - layer) * size
            layer += reps
            pos += size * reps
            continue
        if layer:
            starts.setdefault(1, pos)  # the first block after the layers
            starts.setdefault(2, pos)
        pos += size
    return starts.get(1, pos), starts.get(2, pos)


def zero3_persistence_threshold(train: TrainSpec, hidden_size: int) -> int:
    """``stage3_param_persistence_threshold``: the run's (``--deepspeed-config``), or "auto" as the HF Trainer
    fills it (transformers/integrations/deepspeed.py: ``10 * hidden_size``), which `planner profile` and the
    emitted ds_config.json use too."""
    return train.parallelism.zero_config.persistence_threshold(hidden_size)


def zero3_persistent_numels(counts: ParamCounts, train: TrainSpec, num_layers: int,
                            threshold: int) -> tuple[int, int]:
    """Elements of the parameters DeepSpeed ZeRO-3 never partitions: (base model, LoRA adapters and saved copies).

    deepspeed/runtime/zero/partition_parameters.py (v0.19) ``Init._zero_init_param`` / ``_convert_to_zero_parameters``:
    ``param.ds_persist = param.ds_numel <= param_persistence_threshold`` (within ``model_persistence_threshold``,
    unlimited by default). A persistent parameter keeps its whole data on every rank beside its partition
    (``ds_tensor``), and is never gathered or released. Measured with `planner profile --zero 3` on 2 ranks
    (GPT-2 h160, LoRA r2, fp32): the rank's parameters are P/N plus every tensor of at most 10*h elements
    (biases, norms, adapters), to the byte.
    """
    return _persistent_numels(counts, train.lora if train.method is not Method.FULL else None, num_layers, threshold,
                              train.method is Method.QLORA)


def zero3_released_after_forward(counts: ParamCounts, train: TrainSpec, threshold: int) -> int:
    """Elements of partitioned parameters ZeRO-3 releases after their forward and does not fetch again in backward.

    DeepSpeed fetches a module's parameters again in backward from the hook on its outputs' gradients
    (parameter_offload.py ``_register_hooks_recursively``: ``_post_forward_module_hook`` registers the
    pre-backward function on outputs that require grad) and, after forward, keeps only what the recorded trace
    uses again (partitioned_param_coordinator.py ``__params_to_release``). A LoRA run without checkpointing
    never sends a gradient to its frozen input embeddings (their output requires no grad; with checkpointing,
    transformers' ``enable_input_require_grads`` makes it), so the token and position embeddings are released
    after forward -- unless tied to the output head, which uses them in backward, or trained (modules_to_save).
    Measured with `planner profile --zero 3` on 2 ranks (llama h72 LoRA on attention, bf16; GPT-2 h160 LoRA,
    fp32): at the loss backward the embedding is not gathered. Still counted as gathered: layer 0's frozen
    projections that read the embedding output directly (same reason; GPT-2's c_attn in the second cell).
    """
    if train.zero_stage != 3 or train.method is Method.FULL or train.grad_checkpointing:
        return 0
    saved = {g.path for g in saved_groups(counts, train.lora.modules_to_save)}
    out = 0
    for g in counts.modules:
        if g.kind != "embedding" or g.shared or g.path in saved or g.num_params <= threshold:
            continue
        if counts.tied and g.component == "embedding":
            continue  # the tied output head's backward fetches it
        out += g.num_params * g.num_modules
    return out


@lru_cache(maxsize=256)
def _persistent_numels(counts: ParamCounts, lora: LoraSpec | None, num_layers: int, threshold: int,
                       quantized: bool = False) -> tuple[int, int]:
    # keyed on what the answer reads, not the whole TrainSpec: the fit search varies micro-batch and length.
    # Order does not matter here: each group's small tensors times its modules (a path without a layer index
    # is one module). ``quantized`` (QLoRA): the 4-bit weights are counted in their storage dtype by
    # qlora_shard.py, so a quantizable linear contributes only its bias here.
    def small(own: dict[int, tuple[int, ...]], base: bool = False) -> int:
        def numels(g) -> tuple[int, ...]:
            skip = base and quantized and g.kind == "linear" and g.quantizable and g.component != "lm_head"
            return own[id(g)][1:] if skip else own[id(g)]

        return sum(sum(n for n in numels(g) if n <= threshold) * (g.num_modules if "*" in g.path else 1)
                   for g in counts.modules)

    base = small(trainable_of(FlatOrder(counts, num_layers, None)), base=True)
    extra = small(trainable_of(FlatOrder(counts, num_layers, lora))) if lora is not None else 0
    return base, extra


__all__ = ["Candidates", "buffer_segment", "buffer_threshold", "FlatOrder", "PartitionSpec", "RankPartition", "RankPartitions", "even_partition",
           "flat_numels", "layer_of", "module_blocks", "module_sequence", "partitions_to_evaluate", "rank_partitions",
           "trainable_blocks", "trainable_numels", "uneven_layer_ids", "zero12_partitions",
           "zero3_persistence_threshold", "zero3_persistent_numels", "zero3_released_after_forward"]
