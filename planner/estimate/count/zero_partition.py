"""DeepSpeed ZeRO 1/2: the rank partitions of the flat parameter buffer, and the gradient buffer each rank makes.

Source: deepspeed/runtime/zero/stage_1_and_2.py (v0.19), ``DeepSpeedZeroOptimizer``:

- ``__init__`` flattens the trainable tensors of a param group in ``model.parameters()`` order into one buffer
  (no per-tensor padding unless ``parameter_alignment``), pads it to a multiple of
  ``nccl_start_alignment_factor * world_size`` = 2N elements and gives rank r the elements
  [r * part, (r + 1) * part). ``get_partition_info`` puts a tensor in rank r's ``params_in_partition`` when it
  starts inside the partition or straddles its start: a tensor across a boundary belongs to both ranks.
- ``copy_grads_in_partition`` allocates ``grads_in_partition`` once, the first time a reduced bucket holds a
  gradient of the rank's partition, with ``sum(p.numel() for p in params_in_partition)`` elements -- the whole
  tensors, not the partition's share -- and moves the rank's gradients into it. It lives until the optimizer
  step has flattened it (``free_grad_in_param_list``), so a rank whose partition starts or ends inside a large
  tensor (the embedding, an MLP weight) holds up to that tensor more than P/N.
- ``reduce_independent_p_g_buckets_and_remove_grads`` reduces gradients in buckets of ``reduce_bucket_size``
  elements: one no larger than the bucket is copied into it and its own storage dropped; a larger one is reduced
  where it is. ZeRO-1 does this for every parameter in order at the end of backward (``reduce_gradients``), so
  when rank r's buffer is allocated the small gradients before its first tensor are already gone.

planner models one param group holding every trainable tensor, as `planner profile` runs it (the HF Trainer
splits decay and no-decay parameters into two groups, each partitioned on its own).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import accumulate, chain

from planner.estimate.count.inventory import (
    ModuleGroup,
    ParamCounts,
    layer_of,
    modules_per_layer,
    uneven_layer_ids,
)
from planner.estimate.count.params import lora_adapters, saved_groups
from planner.specs import LoraSpec, Method, TrainSpec

# stage_1_and_2.py: ``self.nccl_start_alignment_factor = 2  # 4-byte alignment/sizeof(fp16) = 2``; the flat
# buffer is padded to a multiple of this times the data-parallel world size.
NCCL_START_ALIGNMENT_FACTOR = 2


@dataclass(frozen=True)
class RankPartition:
    """One rank's share of DeepSpeed's flat ZeRO 1/2 buffer, in elements."""

    rank: int
    num_partition: int  # partition_size: the rank's share of the (padded) flat buffer, equal on every rank
    num_buffer: int  # grads_in_partition: every tensor overlapping the partition, whole
    num_largest_piece: int  # the largest part of one tensor inside the partition (the fp64 norm copy)
    # ZeRO-1: gradient elements still in their own storage when grads_in_partition is allocated at the end
    # of backward (every gradient minus the small ones already moved into the reduce bucket)
    num_full_grads_at_buffer: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """What the estimate reads of a partition (ranks with the same shape have the same peak)."""
        return self.num_buffer, self.num_largest_piece, self.num_full_grads_at_buffer


def even_partition(num_trainable: int, num_ranks: int, largest_tensor: int) -> RankPartition:
    """The partition every rank would hold if tensor boundaries fell on partition boundaries."""
    part = _partition_size(num_trainable, num_ranks)
    return RankPartition(0, part, part, min(largest_tensor, part), num_trainable)


def _partition_size(total: int, num_ranks: int) -> int:
    alignment = NCCL_START_ALIGNMENT_FACTOR * num_ranks
    return -(-total // alignment) * alignment // num_ranks


class RankPartitions(Sequence):
    """Every rank's partition, stored as runs of consecutive ranks with the same shape: at most two runs per
    tensor (a partition inside one tensor, one across its end) and one for the padding, however many ranks."""

    def __init__(self, runs: tuple[RankPartition, ...], num_ranks: int) -> None:
        self._runs = runs  # each the first rank of its run; the run lasts until the next one's rank
        self._firsts = [p.rank for p in runs]
        self._num_ranks = num_ranks

    def __len__(self) -> int:
        return self._num_ranks

    def __getitem__(self, rank):  # type: ignore[override]
        if isinstance(rank, slice):
            return tuple(self[r] for r in range(*rank.indices(self._num_ranks)))
        if rank < 0:
            rank += self._num_ranks
        if not 0 <= rank < self._num_ranks:
            raise IndexError(f"rank {rank} of {self._num_ranks}")
        run = self._runs[bisect_right(self._firsts, rank) - 1]
        return run if run.rank == rank else replace(run, rank=rank)

    @property
    def distinct(self) -> tuple[RankPartition, ...]:
        """One partition per distinct shape, the lowest rank's, lowest rank first."""
        seen: dict[tuple[int, int, int], RankPartition] = {}
        for p in self._runs:
            seen.setdefault(p.shape, p)
        return tuple(seen.values())

    @property
    def candidates(self) -> tuple[RankPartition, ...]:
        """The partitions that can hold the highest peak, lowest rank first: every part of a rank's step grows
        with its buffer, its largest piece and the gradients alive at its buffer (temporaries.zero12_step), so
        a partition no larger in all three than a lower rank's never peaks strictly higher (a tie goes to the
        lower rank)."""
        kept: list[RankPartition] = []
        for p in self._runs:
            if not any(q.num_buffer >= p.num_buffer and q.num_largest_piece >= p.num_largest_piece
                       and q.num_full_grads_at_buffer >= p.num_full_grads_at_buffer for q in kept):
                kept.append(p)
        return tuple(kept)

    @property
    def ranks_differ(self) -> bool:
        first = self._runs[0].shape
        return any(p.shape != first for p in self._runs)


def rank_partitions(numels: Sequence[int], num_ranks: int, bucket_elements: int) -> RankPartitions:
    """Every rank's partition of ``numels`` (trainable tensors in DeepSpeed's flat order), computed per tensor
    boundary, never per rank: O(tensors x log tensors) for any number of ranks."""
    numels = [n for n in numels if n > 0]  # DeepSpeed skips empty tensors in its reduction
    n = max(num_ranks, 1)
    ends = list(accumulate(numels))
    total = ends[-1] if ends else 0
    part = _partition_size(total, n)
    at_flush = _alive_at_flush(numels, total, bucket_elements)

    def partition(r: int) -> RankPartition:
        lo, hi = r * part, (r + 1) * part
        first = bisect_right(ends, lo)  # the first tensor ending after lo
        if first == len(numels):
            return RankPartition(r, part, 0, 0, 0)  # padding only
        stop = bisect_right(ends, hi - 1) + 1  # one past the last tensor starting before hi
        stop = min(stop, len(numels))
        start_first = ends[first] - numels[first]
        largest = min(ends[first], hi) - max(start_first, lo)
        if stop - first > 1:
            last = stop - 1
            largest = max(largest, min(ends[last], hi) - (ends[last] - numels[last]))
            if stop - first > 2:
                largest = max(largest, max(numels[first + 1 : last]))
        return RankPartition(r, part, ends[stop - 1] - start_first, largest, at_flush[first])

    runs: list[RankPartition] = []
    r = 0
    while r < n:
        p = partition(r)
        if not runs or runs[-1].shape != p.shape:
            runs.append(p)
        lo = r * part
        inside = bisect_right(ends, lo)
        if inside == len(numels) or part == 0:
            break  # this and every later rank hold padding only: one run
        end = ends[inside]
        # ranks wholly inside this tensor share its shape: skip to the first rank past them
        r = max(r + 1, end // part) if (r + 1) * part <= end else r + 1
    return RankPartitions(tuple(runs), n)


def _alive_at_flush(numels: list[int], total: int, bucket_elements: int) -> list[int]:
    """Per tensor: the gradient elements still in their own storage when the reduce bucket holding it is reduced.

    The buckets are the same on every rank: flush before a tensor that would overflow the bucket; a tensor no
    larger than the bucket is copied into it (its own storage dropped), a larger one is reduced where it is."""
    out = [0] * len(numels)
    alive, filled, open_from = total, 0, 0
    for i, size in enumerate(numels):
        if filled and filled + size > bucket_elements:
            out[open_from:i] = [alive] * (i - open_from)
            filled, open_from = 0, i
        if size <= bucket_elements:
            alive -= size
        filled += size
    out[open_from:] = [alive] * (len(numels) - open_from)
    return out


# ------------------------------------------------------------------------- the flat order of trainable tensors


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
    own = _trainable_of(order)
    out = []
    for mods, reps in module_blocks(order.counts, order.num_layers):
        block = tuple(chain.from_iterable(own[id(g)] for g in mods))
        if block:
            out.append((block, reps))
    return tuple(out)


def _trainable_of(order: FlatOrder) -> dict[int, tuple[int, ...]]:
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


@dataclass(frozen=True)
class PartitionSpec:
    """Exactly what the ZeRO 1/2 partitions read: the flat order, the data-parallel ranks and the reduce bucket."""

    order: FlatOrder
    num_ranks: int
    bucket_elements: int


def flat_numels(order: FlatOrder) -> tuple[int, ...]:
    """The trainable tensors of ``order``, one entry per tensor (trainable_numels)."""
    return tuple(chain.from_iterable(block * reps for block, reps in trainable_blocks(order)))


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


def zero3_persistence_threshold(hidden_size: int) -> int:
    """``stage3_param_persistence_threshold`` as the HF Trainer fills in "auto" (transformers/integrations/
    deepspeed.py: ``10 * hidden_size``), which `planner profile` and the emitted ds_config.json use too."""
    return 10 * hidden_size


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
    return _persistent_numels(counts, train.lora if train.method is not Method.FULL else None, num_layers, threshold)


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
def _persistent_numels(counts: ParamCounts, lora: LoraSpec | None, num_layers: int, threshold: int) -> tuple[int, int]:
    # keyed on what the answer reads, not the whole TrainSpec: the fit search varies micro-batch and length.
    # Order does not matter here: each group's small tensors times its modules (a path without a layer index
    # is one module).
    def small(own: dict[int, tuple[int, ...]]) -> int:
        return sum(sum(n for n in own[id(g)] if n <= threshold) * (g.num_modules if "*" in g.path else 1)
                   for g in counts.modules)

    base = small(_trainable_of(FlatOrder(counts, num_layers, None)))
    extra = small(_trainable_of(FlatOrder(counts, num_layers, lora))) if lora is not None else 0
    return base, extra


__all__ = ["Candidates", "FlatOrder", "PartitionSpec", "RankPartition", "RankPartitions", "even_partition", "layer_of",
           "module_blocks", "module_sequence", "partitions_to_evaluate", "rank_partitions", "trainable_numels",
           "uneven_layer_ids", "zero12_partitions", "zero3_persistence_threshold", "zero3_persistent_numels",
           "zero3_released_after_forward"]
