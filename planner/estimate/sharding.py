"""What ZeRO stages 1-3 and offload divide or move, per rank: GPU bytes vs CPU bytes.

Follows what DeepSpeed allocates (deepspeed/runtime/zero/stage_1_and_2.py and stage3.py, v0.19), which
differs from the ZeRO paper's arithmetic (Rajbhandari et al. 2020, arXiv 1910.02054) in two places that
planner counts as step-time temporaries, not model states:
- stages 1 and 2 create an fp32 copy of the rank's gradient partition at the optimizer step
  (``single_partition_of_fp32_groups[i].grad``, stage_1_and_2.py ``step``): +4 bytes x P/N;
- stage 3 gathers each module's full 16-bit parameters for forward/backward and reduce-scatters full 16-bit
  gradients: the largest module's parameters and gradients, +4 bytes x L (DeepSpeed's own estimator term
  ``largest_layer_memory = 4 * largest_layer_params``), and converts each sub-group's gradient partition to
  fp32 at the step (``_prepare_fp32_grad_for_sub_group``): +4 bytes x min(P/N, sub_group_size).
The paper's per-rank model states (stage 1 ``4P + 12P/N``, stage 2 ``2P + 14P/N``, stage 3 ``16P/N``) are
exactly params + grads + optimizer_states below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.estimate.count.params import ParamCounts
from planner.estimate.count.zero_partition import zero3_persistence_threshold, zero3_persistent_numels
from planner.estimate.states import FUSED_STEP_COUNTER_BYTES, UnshardedStates, trainable_extra_dtype
from planner.specs import Offload, Optimizer, TrainSpec, ZeroConfig
from planner.units import nbytes

# DeepSpeed's default ZeRO-3 sub_group_size (deepspeed/runtime/zero/config.py, ZeroConfig.sub_group_size); a run's
# own is ZeroConfig.sub_group_size (``--deepspeed-config``).
DS_SUB_GROUP_SIZE = ZeroConfig().sub_group_size


def _shard(num_bytes: int, num_ranks: int) -> int:
    # DeepSpeed pads flat partitions so every rank holds an equal share; ceil is that share.
    return math.ceil(num_bytes / num_ranks)


@dataclass(frozen=True)
class ShardedStates:
    """One rank's model states after ZeRO and offload."""

    params_bytes: int  # on the GPU
    grads_bytes: int  # on the GPU
    optimizer_states_bytes: int  # on the GPU
    cpu_bytes: int  # offloaded to host RAM by this rank
    step_grad_fp32_bytes: int  # fp32 gradient partition made at the optimizer step (GPU), stages 1-3
    gathered_bytes: int  # ZeRO-3: largest module's gathered 16-bit params + grads (GPU)
    notes: tuple[str, ...] = ()


def zero3_persistent(counts: ParamCounts, train: TrainSpec, num_layers: int, hidden_size: int) -> tuple[int, int]:
    """(elements, bytes) of the parameters ZeRO-3 keeps whole on every rank (zero_partition.py
    ``zero3_persistent_numels``): base tensors in the compute dtype, adapters in theirs."""
    if train.zero_stage != 3:
        return 0, 0
    base, extra = zero3_persistent_numels(counts, train, num_layers, zero3_persistence_threshold(train, hidden_size))
    return base + extra, nbytes(base, train.precision.compute_dtype) + nbytes(extra, trainable_extra_dtype(train))


def zero3_sub_groups(trainable_numels: tuple[int, ...], num_ranks: int, sub_group_size: int) -> tuple[int, ...]:
    """The sizes (partition elements) of one rank's ZeRO-3 sub-groups, as DeepSpeed forms them (stage3.py
    ``_create_fp16_sub_groups``): every parameter holds ``ceil(numel / ranks)`` elements of the partition
    (``partition_numel``); the whole group is one sub-group when ``sub_group_size`` reaches its size, else
    parameters are taken in order and a sub-group closes once it holds ``sub_group_size`` or more (with 0, each
    parameter is its own sub-group)."""
    parts = [-(-numel // num_ranks) for numel in trainable_numels]
    if sub_group_size >= sum(parts):
        return (sum(parts),) if parts else ()
    groups, size = [], 0
    for i, part in enumerate(parts):
        size += part
        if size >= sub_group_size or i == len(parts) - 1:
            groups.append(size)
            size = 0
    return tuple(groups)


def shard_states(
    states: UnshardedStates, train: TrainSpec, num_ranks: int, largest_module_params: int,
    persistent_bytes: int = 0, sub_groups: tuple[int, ...] | None = None,
) -> ShardedStates:
    """``persistent_bytes``: ZeRO-3's unpartitioned parameters (``zero3_persistent``), held whole on every rank
    beside their share of the flat partition. ``sub_groups``: ZeRO-3's sub-group sizes when the partition splits
    into several (``zero3_sub_groups``; None: one sub-group of at most ``sub_group_size``)."""
    n = num_ranks
    stage = train.zero_stage
    params, grads, opt = states.params_bytes, states.grads_bytes, states.optimizer_states_bytes
    notes: list[str] = []
    step_fp32 = 0
    gathered = 0
    if stage >= 1:
        opt = _shard(opt, n)
    if stage >= 2:
        grads = _shard(grads, n)
    if stage >= 3:
        params = _shard(params, n) + persistent_bytes
        # 16-bit parameters and gradients of the largest module, gathered in full (DeepSpeed stage3.py).
        gathered = 4 * largest_module_params
    if stage in (1, 2):
        # fp32 gradient partition built at the step (stage_1_and_2.py step(); only with 16-bit training).
        # (``flat_grad.to(fp32)`` copies only when the gradients are 16-bit.)
        step_fp32 = _shard(4 * states.num_trainable, n) if train.precision.compute_dtype != "fp32" else 0
        if step_fp32:
            notes.append(
                f"DeepSpeed ZeRO-{stage} adds an fp32 gradient partition at the optimizer step "
                "(4 bytes per trainable parameter / ranks), above the ZeRO paper's model states."
            )
    if stage == 3 and states.master_bytes and train.precision.compute_dtype != "fp32":
        # the fp32 gradients of the sub-group being stepped (stage3.py _prepare_fp32_grad_for_sub_group)
        largest_group = max(sub_groups) if sub_groups else min(math.ceil(states.num_trainable / n),
                                                                   train.parallelism.zero_config.sub_group_size)
        step_fp32 = 4 * largest_group
        notes.append(
            "DeepSpeed ZeRO-3 gathers the largest module's 16-bit parameters and gradients (4 bytes x its "
            "parameters) and makes fp32 gradients per sub-group at the step, above the paper's 16P/N."
        )

    cpu = 0
    if train.offload in (Offload.OPTIMIZER, Offload.OPTIMIZER_PARAMS):
        # ZeRO-Offload (Ren et al. 2021, arXiv 2101.06840): fp32 master + moments and fp32 gradients live in
        # host RAM; the GPU keeps 16-bit params (sharded at stage 3) and streams gradients out by bucket.
        cpu += opt + _shard(4 * states.num_trainable, n)
        opt = 0
        grads = 0
        step_fp32 = 0
    if train.offload is Offload.OPTIMIZER_PARAMS:
        # ZeRO-Infinity parameter offload: the 16-bit parameter partition lives on the CPU too (persistent
        # parameters stay on the device: they are never partitioned).
        cpu += params - persistent_bytes
        params = persistent_bytes
    return ShardedStates(
        params_bytes=params,
        grads_bytes=grads,
        optimizer_states_bytes=opt,
        cpu_bytes=cpu,
        step_grad_fp32_bytes=step_fp32,
        gathered_bytes=gathered,
        notes=tuple(notes),
    )


def fused_step_counter_bytes(train: TrainSpec, num_trainable_tensors: int, num_partition_elements: int,
                             sub_groups: tuple[int, ...] | None = None) -> int:
    """One rank's device step counters of ``--optimizer adamw-fused`` (states.py ``FUSED_STEP_COUNTER_BYTES``),
    one per tensor the torch optimizer steps; 0 for every other optimizer.

    Without DeepSpeed that is every trainable tensor (``num_trainable_tensors``; MasterWeightsOptimizer's fp32
    masters are one per trainable tensor too). Under ZeRO the optimizer steps DeepSpeed's flat fp32 partitions
    instead: ZeRO-1/2 one per param group (stage_1_and_2.py ``single_partition_of_fp32_groups``; planner's
    profiler passes one group), ZeRO-3 one per sub-group of the rank's ``num_partition_elements`` (stage3.py
    ``_create_fp16_sub_groups`` closes a sub-group at ``sub_group_size`` elements; ``_optimizer_step`` steps each
    ``fp32_partitioned_groups_flat`` tensor). With offload the partitions and their counters are on the host.
    """
    if train.optimizer is not Optimizer.ADAMW_FUSED or train.offload is not Offload.NONE:
        return 0
    if not train.uses_deepspeed or train.zero_stage == 0:
        # DeepSpeed at stage 0 hands torch's fused AdamW its per-tensor fp32 masters (ds_stage0.py)
        stepped = num_trainable_tensors
    elif train.zero_stage in (1, 2):
        stepped = 1 if num_partition_elements > 0 else 0
    else:
        stepped = len(sub_groups) if sub_groups else -(-num_partition_elements // train.parallelism.zero_config.sub_group_size)
    return FUSED_STEP_COUNTER_BYTES * stepped
