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

from dataclasses import dataclass, replace
from functools import lru_cache

from planner.estimate.params import ModuleGroup, ParamCounts, lora_adapters, saved_groups
from planner.specs import Method, TrainSpec

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


def even_partition(num_trainable: int, num_ranks: int, largest_tensor: int) -> RankPartition:
    """The partition every rank would hold if tensor boundaries fell on partition boundaries."""
    part = _partition_size(num_trainable, num_ranks)
    return RankPartition(0, part, part, min(largest_tensor, part), num_trainable)


def _partition_size(total: int, num_ranks: int) -> int:
    alignment = NCCL_START_ALIGNMENT_FACTOR * num_ranks
    return -(-total // alignment) * alignment // num_ranks


def rank_partitions(numels: tuple[int, ...], num_ranks: int, bucket_elements: int) -> tuple[RankPartition, ...]:
    """Every rank's partition of ``numels`` (trainable tensors in DeepSpeed's flat order), O(tensors + ranks)."""
    numels = tuple(n for n in numels if n > 0)  # DeepSpeed skips empty tensors in its reduction
    total = sum(numels)
    n = max(num_ranks, 1)
    part = _partition_size(total, n)
    starts = []
    offset = 0
    for size in numels:
        starts.append(offset)
        offset += size
    # The buckets are the same on every rank: flush before a tensor that would overflow the bucket.
    # alive_at_flush[j]: elements in their own storage when bucket j is reduced (small tensors moved out).
    bucket_of: list[int] = []
    alive_at_flush: list[int] = []
    alive, filled, bucket = total, 0, 0
    for size in numels:
        if filled and filled + size > bucket_elements:
            alive_at_flush.append(alive)
            bucket, filled = bucket + 1, 0
        if size <= bucket_elements:
            alive -= size
        bucket_of.append(bucket)
        filled += size
    alive_at_flush.append(alive)

    out = []
    first = 0  # index of the first tensor overlapping the current rank's partition
    for r in range(n):
        lo, hi = r * part, (r + 1) * part
        while first < len(numels) and starts[first] + numels[first] <= lo:
            first += 1
        buffer = largest = 0
        k = first
        while k < len(numels) and starts[k] < hi:
            buffer += numels[k]
            largest = max(largest, min(starts[k] + numels[k], hi) - max(starts[k], lo))
            k += 1
        at_buffer = alive_at_flush[bucket_of[first]] if k > first else 0
        out.append(RankPartition(r, part, buffer, largest, at_buffer))
    return tuple(out)


# ------------------------------------------------------------------------- the flat order of trainable tensors


def _module_numels(g: ModuleGroup) -> list[int]:
    """One module's own parameter tensors, in registration order (weight before bias)."""
    if g.param_shapes:
        out = []
        for _, shape in g.param_shapes:
            size = 1
            for dim in shape:
                size *= dim
            out.append(size)
        return out
    if g.kind == "linear":
        return [g.in_features * g.out_features] + ([g.out_features] if g.bias else [])
    if g.kind == "norm" and g.bias:
        return [g.num_params // 2, g.num_params // 2]
    return [g.num_params]


def layer_of(g: ModuleGroup, i: int, num_layers: int) -> int:
    """The decoder layer of module ``i`` of a layered group (``layer_ids``, else spread evenly in order)."""
    if g.layer_ids:
        return g.layer_ids[i]
    per = g.num_modules // num_layers if num_layers and g.num_modules % num_layers == 0 else 1
    return i // max(per, 1)


def uneven_layer_ids(g: ModuleGroup, ids: tuple[int, ...], num_layers: int) -> tuple[int, ...]:
    """``ids`` as ``g.layer_ids`` holds them: empty where they are what ``layer_of`` gives without them."""
    if "*" not in g.path:
        return ()
    even = tuple(layer_of(replace(g, layer_ids=()), i, num_layers) for i in range(g.num_modules))
    return () if tuple(ids) == even else tuple(ids)


def module_sequence(counts: ParamCounts, num_layers: int) -> list[ModuleGroup]:
    """Every module owning parameters (one entry per module instance) in ``model.named_modules()`` order:
    the modules before the decoder layers, each layer's modules in turn, then the ones after."""
    groups = counts.modules
    first_layered = next((i for i, g in enumerate(groups) if "*" in g.path), len(groups))
    keyed: list[tuple[tuple[int, int, int, int], ModuleGroup]] = []
    for gi, g in enumerate(groups):
        if "*" not in g.path:
            keyed.append(((0 if gi < first_layered else 2, 0, gi, 0), g))
            continue
        for i in range(g.num_modules):
            keyed.append(((1, layer_of(g, i, num_layers), gi, i), g))
    keyed.sort(key=lambda kg: kg[0])
    return [g for _, g in keyed]


def trainable_numels(counts: ParamCounts, train: TrainSpec, num_layers: int) -> tuple[int, ...]:
    """Trainable tensors in ``model.parameters()`` order: DeepSpeed's flat order for one param group.

    Full fine-tuning: every parameter (a tied lm_head owns none). LoRA / QLoRA (peft): inside each adapted
    module ``lora_A`` then ``lora_B`` (registered after the base layer; lora.Linear A is [r, in], B [out, r];
    on MoE expert tensors ``ParamWrapper`` A is [r*E, in], B [out, r*E]), and the trainable copy of each
    ``modules_to_save`` module where the module is.
    """
    sequence = module_sequence(counts, num_layers)
    if train.method is Method.FULL:
        return tuple(size for g in sequence if not g.shared for size in _module_numels(g))
    lora = train.lora
    adapters: dict[str, list] = {}
    for a in lora_adapters(counts, lora):
        adapters.setdefault(a.path, []).append(a)
    saved = {g.path for g in saved_groups(counts, lora.modules_to_save)}
    out: list[int] = []
    for g in sequence:
        if g.path in saved:
            out += _module_numels(g)
        paths = [g.path] + [f"{g.path}.{name}" for name, _ in g.param_shapes]
        for path in paths:
            for a in adapters.get(path, ()):
                r = a.rank * a.num_experts
                out += [r * a.in_features, a.out_features * r]
    return tuple(out)


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
    return _persistent_numels(counts, train.method, train.lora if train.method is not Method.FULL else None,
                              num_layers, threshold)


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
def _persistent_numels(counts: ParamCounts, method: Method, lora, num_layers: int, threshold: int) -> tuple[int, int]:
    # keyed on what the answer reads, not the whole TrainSpec: the fit search varies micro-batch and length
    base = sum(n for g in module_sequence(counts, num_layers) if not g.shared for n in _module_numels(g)
               if n <= threshold)
    extra = 0
    if lora is not None:
        extra = sum(n for n in trainable_numels(counts, TrainSpec(method=method, lora=lora), num_layers)
                    if n <= threshold)
    return base, extra


__all__ = ["RankPartition", "even_partition", "layer_of", "module_sequence", "rank_partitions", "trainable_numels", "uneven_layer_ids",
           "zero3_persistence_threshold", "zero3_persistent_numels",
           "zero3_released_after_forward"]
