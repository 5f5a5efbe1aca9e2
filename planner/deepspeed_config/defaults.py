"""DeepSpeed 0.19.8's defaults for every key planner reads, and the tables that classify every other key.

Each constant cites the DeepSpeed file and field it copies (tests/test_deepspeed_config.py compares them with
DeepSpeed's pydantic models instantiated empty): the ZeRO, offload and precision fields with their defaults and
bounds, and the keys that are noted (no memory effect), unsupported (may change memory or time, not modelled)
or removed (DeepSpeed raises).
"""

from __future__ import annotations

import sys
from enum import Enum
from typing import Any

AUTO = "auto"


class OffloadDevice(str, Enum):
    """deepspeed/runtime/zero/offload_config.py ``OffloadDeviceEnum``."""

    NONE = "none"
    CPU = "cpu"
    NVME = "nvme"


# --- DeepSpeed's defaults (deepspeed 0.19.8) ------------------------------------------------------------
# deepspeed/runtime/zero/config.py, DeepSpeedZeroConfig: (field, alias) -> default, lower bound.
ZERO_STAGE_DEFAULT = 0  # DeepSpeedZeroConfig.stage
ZERO_INT_FIELDS: dict[str, tuple[str, int, int]] = {
    # key as written: (settings attribute, default, minimum)
    "reduce_bucket_size": ("reduce_bucket_size", 500_000_000, 1),  # Field(pp_int(5e8), gt=0)
    "allgather_bucket_size": ("allgather_bucket_size", 500_000_000, 0),  # Field(pp_int(5e8), ge=0)
    "stage3_prefetch_bucket_size": ("stage3_prefetch_bucket_size", 50_000_000, 0),  # prefetch_bucket_size 5e7
    "stage3_param_persistence_threshold": ("stage3_param_persistence_threshold", 100_000, 0),  # 1e5
    "stage3_model_persistence_threshold": ("stage3_model_persistence_threshold", sys.maxsize, 0),  # sys.maxsize
    "stage3_max_live_parameters": ("stage3_max_live_parameters", 1_000_000_000, 0),  # max_live_parameters 1e9
    "stage3_max_reuse_distance": ("stage3_max_reuse_distance", 1_000_000_000, 0),  # max_reuse_distance 1e9
    "sub_group_size": ("sub_group_size", 1_000_000_000, 0),  # Field(pp_int(1e9), ge=0)
}
ZERO_BOOL_FIELDS: dict[str, tuple[str, bool | None]] = {
    "contiguous_gradients": ("contiguous_gradients", True),  # DeepSpeedZeroConfig.contiguous_gradients
    "reduce_scatter": ("reduce_scatter", True),  # .reduce_scatter
    "allgather_partitions": ("allgather_partitions", True),  # .allgather_partitions
    "round_robin_gradients": ("round_robin_gradients", False),  # .round_robin_gradients
    # .overlap_comm is None, then validator overlap_comm_valid sets it to (stage == 3).
    "overlap_comm": ("overlap_comm", None),
    # .gather_16bit_weights_on_model_save, Field(False, alias="stage3_gather_16bit_weights_on_model_save")
    "stage3_gather_16bit_weights_on_model_save": ("stage3_gather_16bit_weights_on_model_save", False),
}
# populate_by_name=True (config_utils.DeepSpeedConfigModel.model_config): the field names work as keys too.
# The HF Trainer fills "auto" only under the alias, so an "auto" under a field name falls to the default.
ZERO_FIELD_NAMES = {
    "prefetch_bucket_size": "stage3_prefetch_bucket_size",
    "param_persistence_threshold": "stage3_param_persistence_threshold",
    "model_persistence_threshold": "stage3_model_persistence_threshold",
    "max_live_parameters": "stage3_max_live_parameters",
    "max_reuse_distance": "stage3_max_reuse_distance",
    "gather_16bit_weights_on_model_save": "stage3_gather_16bit_weights_on_model_save",
    "module_granularity_threshold": "stage3_module_granularity_threshold",
    "use_all_reduce_for_fetch_params": "stage3_use_all_reduce_for_fetch_params",
    "allgather_sequential": "stage3_allgather_sequential",
}
# DeepSpeedZeroConfig fields with no memory effect.
ZERO_NOTED = {"load_from_fp32_weights", "elastic_checkpoint", "ignore_unused_parameters", "legacy_stage1",
              "log_trace_cache_warnings", "enable_sanity_checks", "pipeline_loading_checkpoint",
              "override_module_apply", "compute_grad_norm", "use_multi_rank_bucket_allreduce",
              "cpu_offload_use_pin_memory"}  # deprecated, set_new_param=False: DeepSpeed drops it
# DeepSpeedZeroConfig fields that change memory or time and that planner does not model: their defaults.
ZERO_UNSUPPORTED: dict[str, Any] = {
    "zenflow": None, "stage3_module_granularity_threshold": 0, "stage3_use_all_reduce_for_fetch_params": False,
    "stage3_allgather_sequential": False, "parameter_alignment": False, "zero_hpz_partition_size": 1,
    "zero_quantized_weights": False, "zero_quantized_nontrainable_weights": False,
    "zero_quantized_gradients": False, "memory_efficient_linear": True,
    "save_muon_momentum_buffer_in_memory": False, "leaf_module": None,  # None: a section, any value counts
}
# deepspeed/runtime/config.py _REMOVED_ZERO_CONFIG_KEYS / _REMOVED_TOP_LEVEL_CONFIG_KEYS: DeepSpeed raises.
REMOVED_ZERO_KEYS = {"mics_shard_size", "mics_hierarchical_params_gather", "zeropp_loco_param"}
REMOVED_TOP_KEYS = {"nebula", "compression_training", "amp", "quantize_training", "sparse_gradients",
                    "eigenvalue", "sparse_attention", "elasticity", "graph_harvesting", "curriculum_learning",
                    "progressive_layer_drop"}

# deepspeed/runtime/zero/offload_config.py: key -> default, minimum (None: not an int).
OFFLOAD_OPTIMIZER_DEFAULTS: dict[str, Any] = {  # DeepSpeedZeroOffloadOptimizerConfig
    "device": "none", "nvme_path": None, "buffer_count": 4, "pin_memory": True, "pipeline_read": False,
    "pipeline_write": False, "fast_init": False, "ratio": 1.0, "super_offload": False, "cpuadam_cores_perc": 0.8,
}
OFFLOAD_PARAM_DEFAULTS: dict[str, Any] = {  # DeepSpeedZeroOffloadParamConfig
    "device": "none", "nvme_path": None, "buffer_count": 5, "buffer_size": 100_000_000,
    "max_in_cpu": 1_000_000_000, "pin_memory": True,
}
# Offload keys that change memory on NVMe or Superchip paths planner does not model.
OFFLOAD_UNSUPPORTED = {"pipeline_read", "pipeline_write", "super_offload", "cpuadam_cores_perc"}

# deepspeed/runtime/precision_config.py DeepSpeedFP16Config / DeepSpeedBF16Config.
FP16_DEFAULTS: dict[str, Any] = {"enabled": False, "auto_cast": False, "loss_scale": 0.0, "initial_scale_power": 16,
                                 "loss_scale_window": 1000, "hysteresis": 2, "consecutive_hysteresis": False,
                                 "min_loss_scale": 1, "fp16_master_weights_and_grads": False}
BF16_DEFAULTS: dict[str, Any] = {"enabled": False, "immediate_grad_update": False, "check_grad_overflow": True,
                                 "bf16_master_weights_and_grads": False, "bf16_optimizer_states": False}
PRECISION_UNSUPPORTED = {"fp16_master_weights_and_grads", "bf16_master_weights_and_grads", "bf16_optimizer_states"}

# deepspeed/runtime/constants.py
GRADIENT_CLIPPING_DEFAULT = 1.0  # GRADIENT_CLIPPING_DEFAULT
ZERO_FORCE_DS_CPU_OPTIMIZER_DEFAULT = True  # ZERO_FORCE_DS_CPU_OPTIMIZER_DEFAULT
# deepspeed/runtime/config.py DEEPSPEED_OPTIMIZERS: these names are lower-cased (DeepSpeedConfig.optimizer_name).
DEEPSPEED_OPTIMIZERS = {"adagrad", "adam", "adamw", "lamb", "muadam", "muadamw", "musgd", "lion", "muon"}

# Top-level keys DeepSpeedConfig reads with no memory effect (runtime/config.py _initialize_params, the monitor,
# profiler and checkpoint sections).
TOP_NOTED = {"steps_per_print", "wall_clock_breakdown", "memory_breakdown", "dump_state", "disable_python_gc",
             "zero_allow_untested_optimizer", "scheduler", "comms_logger", "tensorboard", "wandb", "csv_monitor",
             "comet", "flops_profiler", "checkpoint", "log_level", "dataloader_drop_last", "timers",
             "vocabulary_size", "prescale_gradients", "gradient_predivide_factor", "gradient_allreduce_op",
             "disable_allgather", "autotuning", "datastates", "use_data_before_expert_parallelism", "aio",
             "zero_optimization_stage"}
# Top-level keys DeepSpeed reads that may change memory or time and that planner does not model.
TOP_UNSUPPORTED = {"activation_checkpointing", "communication_data_type", "seq_parallel_communication_data_type",
                   "torch_autocast", "data_types", "hybrid_engine", "pipeline", "data_efficiency",
                   "weight_quantization", "compile", "tensor_parallel", "expert_parallel",
                   "sequence_parallel_size", "managed_gradient_accumulation"}
# transformers HfTrainerDeepSpeedConfig.trainer_config_process: "auto" optimizer params it fills from the args.
TRAINER_OPTIMIZER_PARAMS = {"lr", "betas", "eps", "weight_decay"}
