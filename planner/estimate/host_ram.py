"""Host RAM of one rank under DeepSpeed CPU offload: the offloaded states plus the page-locked buffers.

Follows what DeepSpeed 0.19 allocates on the host with ``offload_optimizer``/``offload_param`` on the CPU
(the bundle's ds_config sets ``pin_memory: true`` on CUDA):
- ZeRO-1/2 (deepspeed/runtime/zero/stage_1_and_2.py): the fp32 master partition and its fp32 gradient
  (``single_partition_of_fp32_groups[i]`` and ``.grad``, pinned), a 16-bit copy of the partition
  (``param_buffer_of_bit16_for_cpu_offload_groups``, pinned), a 16-bit buffer of the largest parameter
  (``temp_grad_buffer_for_cpu_offload``, pinned), with gradient accumulation one 16-bit buffer per parameter
  of the partition (``accumulated_grads_in_cpu``, pinned each), and DeepSpeedCPUAdam's moments (pageable).
- ZeRO-3 (stage3.py): the gradient partition (``grad_partitions_flat_buffer``, pinned) in
  ``gradient_accumulation_dtype`` (engine.py ``get_data_types``: the model's dtype, 16-bit under bf16/fp16 mixed
  precision; a CPU profile of bf16 ZeRO-3 offload measures 2 bytes per partition element), an fp32 gradient
  buffer per optimizer sub-group (``subgroup_gradient_buffer``, pinned each), the fp32 master partition and the
  moments (pageable), and with parameter offload the 16-bit partition (``param_groups_fp16_flat_cpu_memory``,
  pinned).
PyTorch's pinned-memory allocator rounds every request up to the next power of two before cudaHostAlloc
(aten/src/ATen/core/CachingHostAllocator.h: ``size_t roundSize = c10::llvm::PowerOf2Ceil(size)``), so a pinned
35 GiB partition costs 64 GiB of page-locked host RAM. Without CUDA (``device="cpu"``) nothing is pinned and
nothing is rounded.

With activation offloading (``--activation-offload``, estimate/step/offload.py) every saved tensor of the
forward is also a pinned host copy (``save_on_cpu(pin_memory=True)``: one ``torch.empty(pin_memory=True)`` per
saved tensor, each rounded to a power of two), all alive when backward starts: ``with_activation_offload``.

Not counted: each rank's process (Python, torch and the CUDA libraries), the data loader, and loading the
checkpoint on the host before it moves to the GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.estimate.states import UnshardedStates
from planner.specs import Offload, TrainSpec
from planner.units import dtype_bytes


def pinned_size(num_bytes: int) -> int:
    """What PyTorch's caching host allocator takes for a pinned request: the next power of two."""
    return 0 if num_bytes <= 0 else 1 << (num_bytes - 1).bit_length()


@dataclass(frozen=True)
class HostRam:
    """One rank's host RAM under offload (bytes)."""

    pageable_bytes: int  # optimizer moments, and ZeRO-3's fp32 master partition
    pinned_requested_bytes: int  # what DeepSpeed pins, as asked for
    pinned_bytes: int  # what the pinned allocator takes (power-of-two rounding; = requested without CUDA)

    @property
    def total_bytes(self) -> int:
        return self.pageable_bytes + self.pinned_bytes


NO_HOST_RAM = HostRam(0, 0, 0)


def host_ram_per_rank(states: UnshardedStates, train: TrainSpec, num_ranks: int, *, largest_param_numel: int,
                      params_partition_bytes: int, device: str = "cuda",
                      accumulation_numels: tuple[int, ...] = (), sub_groups: tuple[int, ...] | None = None) -> HostRam:
    """``params_partition_bytes``: the rank's 16-bit parameter partition that ZeRO-3 parameter offload moves to
    the host (ShardedStates' share, persistent parameters excluded). ``accumulation_numels``: ZeRO-1/2 with
    gradient accumulation, the sizes of the trainable tensors (each rank pins a buffer per tensor of its
    partition; the rank's share of the rounded total is counted). ``sub_groups``: ZeRO-3's sub-group sizes when
    the partition splits into several (sharding.zero3_sub_groups)."""
    if train.offload is Offload.NONE or not train.uses_deepspeed:
        return NO_HOST_RAM
    pin = device == "cuda"
    n = math.ceil(states.num_trainable / num_ranks)
    moments = math.ceil(states.optimizer_states_bytes / num_ranks) - math.ceil(states.master_bytes / num_ranks)
    word = dtype_bytes(train.precision.compute_dtype)
    pinned: list[int] = []
    pageable = moments
    accumulation, accumulation_rounded = 0, 0
    if train.zero_stage in (1, 2):
        # master, its gradient, the 16-bit copy, the largest parameter's gradient buffer
        pinned += [4 * n, 4 * n, word * n, word * largest_param_numel]
        if train.grad_accum > 1 and accumulation_numels:
            accumulation = math.ceil(sum(word * k for k in accumulation_numels) / num_ranks)
            accumulation_rounded = math.ceil(sum(pinned_size(word * k) for k in accumulation_numels) / num_ranks)
    else:
        pageable += 4 * n  # the fp32 master partition, a pageable clone
        pinned.append(word * n)  # grad_partitions_flat_buffer, in the model's dtype (gradient_accumulation_dtype)
        if sub_groups:  # one fp32 buffer per sub-group (sharding.zero3_sub_groups)
            pinned += [4 * g for g in sub_groups]
        else:
            sub_group = train.parallelism.zero_config.sub_group_size
            full, rest = divmod(n, sub_group)
            pinned += [4 * sub_group] * full + ([4 * rest] if rest else [])
        if train.offload is Offload.OPTIMIZER_PARAMS:
            pinned.append(params_partition_bytes)
    requested = sum(pinned) + accumulation
    if not pin:
        return HostRam(pageable + requested, 0, 0)
    return HostRam(pageable, requested, sum(pinned_size(b) for b in pinned) + accumulation_rounded)


def with_activation_offload(host: HostRam, offloaded_bytes: int, offloaded_pinned_bytes: int,
                            device: str = "cuda") -> HostRam:
    """``host`` plus the step's packed activations (the simulated step's ``offloaded_bytes``, as requested and as
    the pinned allocator rounds them). On CPU the copies are the same memory as the run's and the step already
    counts them as live, so nothing is added."""
    if device != "cuda" or not offloaded_bytes:
        return host
    return HostRam(host.pageable_bytes, host.pinned_requested_bytes + offloaded_bytes,
                   host.pinned_bytes + offloaded_pinned_bytes)
