"""DeepSpeed ZeRO-3 offload when the accelerator is the CPU: the host and the "device" are one memory pool.

DeepSpeed's CPU accelerator (deepspeed/accelerator/cpu_accelerator.py) names its device ``cpu``, the same device
``offload_optimizer``/``offload_param`` move states to, and its ``pin_memory`` returns the tensor as it is, so a
CPU run (the validation profiles) allocates the offloaded states in the same pool as everything else. The
estimate of such a run therefore counts both sides, each in the category the states have on the device:

- deepspeed/runtime/zero/stage3.py ``_setup_for_real_optimizer``: ``grad_partitions_flat_buffer``, the rank's
  gradient partition in ``gradient_accumulation_dtype`` (engine.py ``get_data_types``: the model's 16-bit dtype
  unless ``data_types.grad_accum_dtype`` says otherwise), on ``self.device`` (the offload device): the same bytes
  as the gradient partition without offload (``grads``).
- ``_create_fp32_partitions``: the fp32 master partition, and ``initialize_optimizer_states``: the optimizer's
  moments, on the offload device: the same bytes as without offload (``optimizer_states``).
- ``initialize_optimizer_states``: with ``offload_optimizer`` every sub-group's fp32 gradient buffer
  (``subgroup_gradient_buffer``) is made at start-up and kept as the fp32 partition's ``.grad`` through the whole
  step, where without offload ``_prepare_fp32_grad_for_sub_group`` makes one sub-group's at the step: counted as
  a persistent temporary (the profiler sees a DeepSpeed engine buffer).
- ``_create_param_groups_fp16_flat_cpu_memory``: with ``offload_param`` the 16-bit partition is one flat host
  buffer instead of the device's ``lp_param_buffer`` of the same size (``params``).
- The optimizer steps the host partitions: the run's optimizer's scratch (planner's profiler runs torch AdamW,
  ``zero_force_ds_cpu_optimizer: false``, instead of DeepSpeedCPUAdam, whose C++ step updates in place).

What stays on the device is the same with and without this pool: the gathered parameters (the coordinator's
reuse distance is the same with ``offload_param``: partitioned_param_coordinator.py), the reduce bucket, the
activations. On a GPU the split between device and host follows the source above and is not measured here
(host_ram.py, sharding.py).
"""

from __future__ import annotations

from dataclasses import replace

from planner.specs import Offload, TrainSpec


def applies(train: TrainSpec, device: str) -> bool:
    """ZeRO-3 with an offload, estimated for a CPU run."""
    return device == "cpu" and train.uses_deepspeed and train.zero_stage == 3 and train.offload is not Offload.NONE


def pool_train(train: TrainSpec) -> TrainSpec:
    """The same run without offload: DeepSpeed's tensors are the same, only their device differs (above)."""
    return replace(train, parallelism=replace(train.parallelism, offload=Offload.NONE))


def subgroup_grads_bytes(partition_numel: int, sub_groups: tuple[int, ...] | None) -> int:
    """Every fp32 ``subgroup_gradient_buffer`` of the rank, alive through the step: 4 bytes per partition element
    (the sub-groups cover the partition however ``sub_group_size`` splits it: stage3.py ``_create_fp16_sub_groups``)."""
    return 4 * (sum(sub_groups) if sub_groups else partition_numel)
