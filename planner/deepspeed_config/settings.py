"""The frozen result of reading a DeepSpeed config: ``DeepSpeedSettings`` and its offload and loss-scaling parts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from planner.deepspeed_config.defaults import OffloadDevice


@dataclass(frozen=True)
class OffloadOptimizer:
    """``zero_optimization.offload_optimizer`` (device NONE when absent; DeepSpeed's model holds None then)."""

    device: OffloadDevice = OffloadDevice.NONE
    pin_memory: bool = True
    buffer_count: int = 4  # NVMe buffer pool
    ratio: float = 1.0  # fraction of the optimizer states stepped on the CPU (ZeRO-3 only below 1)
    nvme_path: str | None = None


@dataclass(frozen=True)
class OffloadParam:
    """``zero_optimization.offload_param`` (ZeRO-3 only; DeepSpeed ignores it below stage 3)."""

    device: OffloadDevice = OffloadDevice.NONE
    pin_memory: bool = True
    buffer_count: int = 5  # NVMe buffer pool, each ``buffer_size`` elements
    buffer_size: int = 100_000_000
    max_in_cpu: int = 1_000_000_000  # elements kept in CPU memory with NVMe offload
    nvme_path: str | None = None


@dataclass(frozen=True)
class Fp16LossScaling:
    """``fp16`` loss scaling; ``loss_scale`` 0 means dynamic, starting at 2**initial_scale_power."""

    loss_scale: float = 0.0
    initial_scale_power: int = 16
    loss_scale_window: int = 1000
    hysteresis: int = 2
    consecutive_hysteresis: bool = False
    min_loss_scale: int = 1


@dataclass(frozen=True)
class DeepSpeedSettings:
    """A DeepSpeed config as DeepSpeed 0.19.8 runs it under the HF Trainer. Element counts are ints.

    ``None`` in a batch, clipping, precision or optimizer-parameter field: the file says "auto", so the HF
    Trainer fills it from its training arguments (the dotted key is in ``from_trainer``); for the three batch
    keys it can also mean absent, which DeepSpeed derives from the other two and the world size.
    """

    zero_stage: int
    offload_optimizer: OffloadOptimizer
    offload_param: OffloadParam
    reduce_bucket_size: int
    allgather_bucket_size: int
    stage3_prefetch_bucket_size: int
    stage3_param_persistence_threshold: int
    stage3_model_persistence_threshold: int
    stage3_max_live_parameters: int
    stage3_max_reuse_distance: int
    sub_group_size: int
    contiguous_gradients: bool
    overlap_comm: bool
    round_robin_gradients: bool
    reduce_scatter: bool
    allgather_partitions: bool
    stage3_gather_16bit_weights_on_model_save: bool
    bf16_enabled: bool | None
    fp16_enabled: bool | None
    fp16_loss_scaling: Fp16LossScaling
    optimizer_type: str | None  # None: the Trainer builds its own optimizer (a client optimizer to DeepSpeed)
    optimizer_params: tuple[tuple[str, Any], ...]  # sorted (name, value); "auto" -> None
    zero_force_ds_cpu_optimizer: bool
    gradient_accumulation_steps: int | None
    train_micro_batch_size_per_gpu: int | None
    train_batch_size: int | None
    gradient_clipping: float | None
    from_trainer: tuple[str, ...]
    used_keys: tuple[str, ...]
    noted_keys: tuple[str, ...]
    unsupported_keys: tuple[str, ...]
    unknown_keys: tuple[str, ...]
    notes: tuple[str, ...]
