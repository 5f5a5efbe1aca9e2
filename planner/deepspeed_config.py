"""A user's DeepSpeed JSON read into one frozen ``DeepSpeedSettings``, as DeepSpeed and the HF Trainer read it.

Defaults are DeepSpeed 0.19.8's own for every absent key (each constant below cites the file and field it
copies; tests/test_deepspeed_config.py compares them with DeepSpeed's pydantic models instantiated empty).
``"auto"`` is resolved as transformers 5.24 resolves it (``integrations/deepspeed.py``,
``HfTrainerDeepSpeedConfig.trainer_config_process`` and ``trainer_config_finalize``): bucket sizes from the
model's hidden size; batch sizes, accumulation, clipping, precision and the optimizer's lr/betas/eps/weight
decay from the training arguments, kept here as ``None`` ("from the trainer", listed in ``from_trainer``).
An ``"auto"`` the Trainer does not fill inside a DeepSpeed pydantic section is dropped by DeepSpeed
(``config_utils.DeepSpeedConfigModel.__init__``), which then uses its default: so does this reader.

Every key is accounted for: ``used_keys`` (a field below: it changes memory or time), ``noted_keys`` (read,
no memory effect, or a memory-relevant key left at DeepSpeed's default), ``unsupported_keys`` (DeepSpeed reads
it and it may change memory or time, planner does not model it: a note) and ``unknown_keys`` (DeepSpeed 0.19.8
does not know it: a note). A wrong type or an out-of-range value raises one-sentence ``PlannerError`` naming
the key. Pure: imports neither torch nor deepspeed. Types are stricter than pydantic's lax mode in one way:
a number written as a string ("5e8") or a bool written as 0/1 is refused rather than coerced.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from planner.errors import PlannerError, one_sentence

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


def _fail(message: str) -> PlannerError:
    return PlannerError(one_sentence(message))


class _Reader:
    """Walks one config dict, classifying every key it meets."""

    def __init__(self, hidden_size: int | None) -> None:
        self.hidden_size = hidden_size
        self.used: list[str] = []
        self.noted: list[str] = []
        self.unsupported: list[str] = []
        self.unknown: list[str] = []
        self.from_trainer: list[str] = []
        self.notes: list[str] = []

    # -- typed values --------------------------------------------------------------------------------
    @staticmethod
    def int_value(key: str, value: Any, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(f"DeepSpeed config key {key} must be an integer, got {value!r}.")
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise _fail(f"DeepSpeed config key {key} must be a whole number, got {value!r}.")
        if value < minimum:
            raise _fail(f"DeepSpeed config key {key} must be at least {minimum}, got {value!r}.")
        return int(value)

    @staticmethod
    def float_value(key: str, value: Any, low: float, high: float = math.inf) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _fail(f"DeepSpeed config key {key} must be a finite number, got {value!r}.")
        if not low <= value <= high:
            raise _fail(f"DeepSpeed config key {key} must be between {low} and {high}, got {value!r}.")
        return float(value)

    @staticmethod
    def bool_value(key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise _fail(f"DeepSpeed config key {key} must be true or false, got {value!r}.")
        return value

    @staticmethod
    def section(key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _fail(f"DeepSpeed config key {key} must be a JSON object, got {value!r}.")
        return value

    def dropped_auto(self, key: str, default: Any) -> Any:
        """An "auto" the Trainer does not fill: DeepSpeedConfigModel drops it and DeepSpeed uses its default."""
        self.notes.append(f'{key} is "auto", which the HF Trainer does not fill; DeepSpeed drops it and uses its '
                          f"default {default!r}.")
        return default

    def unknown_key(self, key: str, refused: bool) -> None:
        self.unknown.append(key)
        why = "DeepSpeed 0.19.8 refuses it (extra keys are forbidden there)" if refused else "DeepSpeed ignores it"
        self.notes.append(f"Unknown DeepSpeed key {key}: planner does not read it and {why}.")

    def unsupported_key(self, key: str, value: Any, default: Any) -> None:
        if value == default:
            self.noted.append(key)
            return
        self.unsupported.append(key)
        self.notes.append(f"DeepSpeed key {key} = {json.dumps(value)[:80]} may change memory or time; planner does "
                          "not model it and estimates as if it were absent.")

    # -- sections ------------------------------------------------------------------------------------
    def offload(self, key: str, raw: Any, defaults: dict[str, Any]) -> dict[str, Any]:
        section = self.section(key, raw)
        out = dict(defaults)
        for name, value in section.items():
            full = f"{key}.{name}"
            if name not in defaults:
                self.unknown_key(full, refused=True)
                continue
            if value == AUTO:
                self.used.append(full)
                out[name] = self.dropped_auto(full, defaults[name])
                continue
            if name in OFFLOAD_UNSUPPORTED:
                self.unsupported_key(full, value, defaults[name])
                continue
            self.used.append(full)
            if name == "device":
                if value not in {d.value for d in OffloadDevice}:
                    raise _fail(f"DeepSpeed config key {full} must be none, cpu or nvme, got {value!r}.")
                out[name] = value
            elif name == "nvme_path":
                if value is not None and not isinstance(value, str):
                    raise _fail(f"DeepSpeed config key {full} must be a path, got {value!r}.")
                out[name] = value
            elif name == "ratio":
                out[name] = self.float_value(full, value, 0.0, 1.0)
            elif isinstance(defaults[name], bool):
                out[name] = self.bool_value(full, value)
            else:
                out[name] = self.int_value(full, value)
        return out

    def zero(self, raw: Any, top: dict[str, Any]) -> dict[str, Any]:
        """zero_optimization -> the settings' ZeRO fields (deepspeed/runtime/zero/config.py)."""
        if isinstance(raw, bool):  # read_zero_config_deprecated: true means stage 1
            self.notes.append("zero_optimization: true is DeepSpeed's deprecated form of stage 1.")
            raw = {"stage": 1 if raw else 0}
            if raw["stage"] and "allgather_size" in top:
                raw["allgather_bucket_size"] = top["allgather_size"]
        zero = self.section("zero_optimization", raw)
        for name in zero:
            if name in REMOVED_ZERO_KEYS:
                raise _fail(f"DeepSpeed 0.19.8 removed zero_optimization.{name}; remove it from the config.")
        out: dict[str, Any] = {}
        stage_raw = zero.get("stage", ZERO_STAGE_DEFAULT)
        if stage_raw == AUTO:
            stage_raw = self.dropped_auto("zero_optimization.stage", ZERO_STAGE_DEFAULT)
        stage = self.int_value("zero_optimization.stage", stage_raw)
        if stage > 3:
            raise _fail(f"DeepSpeed config key zero_optimization.stage must be 0, 1, 2 or 3, got {stage_raw!r}.")
        out["zero_stage"] = stage
        for attr, default, _ in ZERO_INT_FIELDS.values():
            out[attr] = default
        for attr, default in ZERO_BOOL_FIELDS.values():
            out[attr] = default
        given: set[str] = set()
        for written, value in zero.items():
            key = f"zero_optimization.{written}"
            name = ZERO_FIELD_NAMES.get(written, written)
            if written == "stage" or written in ("offload_optimizer", "offload_param"):
                self.used.append(key)
                continue
            if name in given:
                raise _fail(f"DeepSpeed config sets {key} twice (under its field name and its alias).")
            given.add(name)
            if name in ZERO_INT_FIELDS:
                self.used.append(key)
                attr, default, minimum = ZERO_INT_FIELDS[name]
                out[attr] = self._zero_int(key, written, name, value, stage, default, minimum)
            elif name in ZERO_BOOL_FIELDS:
                self.used.append(key)
                attr, default = ZERO_BOOL_FIELDS[name]
                if value != AUTO:
                    out[attr] = self.bool_value(key, value)
                elif default is None:  # overlap_comm: the validator's stage-dependent default
                    self.dropped_auto(key, "true at stage 3, false below")
                else:
                    out[attr] = self.dropped_auto(key, default)
            elif name == "stage3_gather_fp16_weights_on_model_save":  # deprecated alias, new_param set from it
                self.used.append(key)
                out["stage3_gather_16bit_weights_on_model_save"] = self.bool_value(key, value)
            elif name in ("cpu_offload", "cpu_offload_param"):  # deprecated: true -> device cpu
                self.used.append(key)
                if self.bool_value(key, value):
                    target = "offload_optimizer" if name == "cpu_offload" else "offload_param"
                    if target in zero:
                        raise _fail(f"DeepSpeed refuses {key} together with zero_optimization.{target}.")
                    zero = {**zero, target: {"device": "cpu"}}
                    self.notes.append(f"{key} is deprecated; DeepSpeed reads it as {target} on the CPU.")
            elif name in ZERO_NOTED:
                self.noted.append(key)
            elif name in ZERO_UNSUPPORTED:
                self.unsupported_key(key, value, ZERO_UNSUPPORTED[name])
            else:
                self.unknown_key(key, refused=True)
        if "stage3_gather_fp16_weights_on_model_save" in given and "stage3_gather_16bit_weights_on_model_save" in given:
            raise _fail("DeepSpeed refuses stage3_gather_fp16_weights_on_model_save together with its replacement.")
        if out["overlap_comm"] is None:  # DeepSpeedZeroConfig.overlap_comm_valid
            out["overlap_comm"] = stage == 3
        opt = self.offload("zero_optimization.offload_optimizer", zero.get("offload_optimizer") or {},
                           OFFLOAD_OPTIMIZER_DEFAULTS)
        par = self.offload("zero_optimization.offload_param", zero.get("offload_param") or {},
                           OFFLOAD_PARAM_DEFAULTS)
        if opt["ratio"] < 1.0 and stage != 3:  # DeepSpeedZeroConfig.offload_ratio_check
            raise _fail("DeepSpeed config key zero_optimization.offload_optimizer.ratio below 1 needs ZeRO stage 3.")
        if par["device"] != "none" and stage != 3:
            self.notes.append(f"zero_optimization.offload_param is ignored at ZeRO stage {stage}: DeepSpeed "
                              "offloads parameters only at stage 3.")
            par["device"] = "none"
        if stage == 0 and opt["device"] != "none":
            self.notes.append("zero_optimization.offload_optimizer is ignored at ZeRO stage 0.")
            opt["device"] = "none"
        out["offload_optimizer"] = OffloadOptimizer(OffloadDevice(opt["device"]), opt["pin_memory"],
                                                    opt["buffer_count"], opt["ratio"], opt["nvme_path"])
        out["offload_param"] = OffloadParam(OffloadDevice(par["device"]), par["pin_memory"], par["buffer_count"],
                                            par["buffer_size"], par["max_in_cpu"], par["nvme_path"])
        return out

    def _zero_int(self, key: str, written: str, name: str, value: Any, stage: int, default: int,
                  minimum: int) -> int:
        if value != AUTO:
            return self.int_value(key, value, minimum)
        # trainer_config_finalize fills these three under their alias names only; the stage-3 two at stage 3 only.
        hidden_rules = {"reduce_bucket_size": (lambda h: h * h, True),
                        "stage3_prefetch_bucket_size": (lambda h: int(0.9 * h * h), stage == 3),
                        "stage3_param_persistence_threshold": (lambda h: 10 * h, stage == 3)}
        if written not in hidden_rules or not hidden_rules[written][1]:
            return self.dropped_auto(key, default)
        if self.hidden_size is None:
            raise _fail(f'DeepSpeed config key {key} is "auto", which the HF Trainer derives from the model\'s '
                        "hidden size, and no hidden size was given.")
        return hidden_rules[written][0](self.hidden_size)

    def precision(self, name: str, raw: Any, defaults: dict[str, Any]) -> tuple[bool | None, dict[str, Any]]:
        section = self.section(name, raw)
        out = dict(defaults)
        for key, value in section.items():
            full = f"{name}.{key}"
            if key not in defaults:
                self.unknown_key(full, refused=True)
            elif key == "enabled":
                self.used.append(full)
                if value == AUTO:  # trainer_config_process: fill_match("<fp16|bf16>.enabled", args.<fp16|bf16>)
                    self.from_trainer.append(full)
                    out[key] = None
                else:
                    out[key] = self.bool_value(full, value)
            elif key in PRECISION_UNSUPPORTED:
                self.unsupported_key(full, value, defaults[key])
            elif value == AUTO:
                self.used.append(full)
                out[key] = self.dropped_auto(full, defaults[key])
            elif key in ("immediate_grad_update", "check_grad_overflow", "auto_cast"):
                self.noted.append(full)
                self.bool_value(full, value)
            else:
                self.used.append(full)
                if key == "loss_scale":
                    out[key] = self.float_value(full, value, 0.0)
                elif isinstance(defaults[key], bool):
                    out[key] = self.bool_value(full, value)
                else:
                    out[key] = self.int_value(full, value, minimum=-(2**31))
        return out["enabled"], out

    def optimizer(self, raw: Any) -> tuple[str | None, tuple[tuple[str, Any], ...]]:
        section = self.section("optimizer", raw)
        params: dict[str, Any] = {}
        kind = None
        for key, value in section.items():
            full = f"optimizer.{key}"
            if key == "type":
                self.used.append(full)
                if not isinstance(value, str) or not value:
                    raise _fail(f"DeepSpeed config key optimizer.type must be an optimizer name, got {value!r}.")
                kind = value.lower() if value.lower() in DEEPSPEED_OPTIMIZERS else value
            elif key == "params":
                self.used.append(full)
                params = self.section(full, value)
            elif key == "legacy_fusion":
                self.noted.append(full)
            else:
                self.unknown_key(full, refused=False)
        if kind is None:  # get_optimizer_name/get_optimizer_params: no type, so DeepSpeed reads no params either
            if params:
                self.notes.append("The optimizer section has params but no type; DeepSpeed ignores them and the "
                                  "HF Trainer's own optimizer runs.")
            return None, ()
        resolved = []
        for key, value in sorted(params.items()):
            if value == AUTO:
                if key in TRAINER_OPTIMIZER_PARAMS:
                    self.from_trainer.append(f"optimizer.params.{key}")
                else:
                    self.notes.append(f'optimizer.params.{key} is "auto", which the HF Trainer does not fill; '
                                      "the optimizer receives the string.")
                value = None
            resolved.append((key, _frozen(value)))
        return kind, tuple(resolved)

    def batch(self, config: dict[str, Any], key: str) -> int | None:
        value = config.get(key)
        if key in config:
            self.used.append(key)
        if value == AUTO:  # trainer_config_process fills it from TrainingArguments
            self.from_trainer.append(key)
            return None
        return None if value is None else self.int_value(key, value, minimum=1)


def _frozen(value: Any) -> Any:
    """A JSON value as a hashable one: lists become tuples, objects sorted (name, value) tuples."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _frozen(v)) for k, v in sorted(value.items()))
    return value


def _derive_batch(out: dict[str, Any], world_size: int) -> None:
    """DeepSpeedConfig._set_batch_related_parameters and _batch_assertion (runtime/config.py)."""
    tb, mb, ga = out["train_batch_size"], out["train_micro_batch_size_per_gpu"], out["gradient_accumulation_steps"]
    if tb is not None and mb is not None and ga is None:
        ga = tb // mb // world_size
    elif tb is not None and ga is not None and mb is None:
        mb = tb // world_size // ga
    elif mb is not None and ga is not None and tb is None:
        tb = mb * ga * world_size
    elif tb is not None and mb is None and ga is None:
        ga, mb = 1, tb // world_size
    elif mb is not None and tb is None and ga is None:
        ga, tb = 1, mb * world_size
    elif tb is None and mb is None:
        raise _fail("DeepSpeed needs train_batch_size or train_micro_batch_size_per_gpu in the config.")
    if min(tb, mb, ga) < 1 or tb != mb * ga * world_size:
        raise _fail(f"DeepSpeed config batch keys disagree: train_batch_size {tb} != micro batch {mb} x "
                    f"accumulation {ga} x world size {world_size}.")
    out.update(train_batch_size=tb, train_micro_batch_size_per_gpu=mb, gradient_accumulation_steps=ga)


def read_deepspeed_config(path_or_dict: str | Path | dict[str, Any], *, hidden_size: int | None,
                          world_size: int | None = None) -> DeepSpeedSettings:
    """Read a DeepSpeed config (a JSON file or its dict) as DeepSpeed 0.19.8 under the HF Trainer would.

    ``hidden_size`` resolves the bucket "auto" values (None: refuse those). ``world_size``, when given and no
    batch key is "auto", derives and checks the batch keys as DeepSpeedConfig does.
    """
    if isinstance(path_or_dict, dict):
        config = path_or_dict
    else:
        path = Path(path_or_dict)
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise _fail(f"Cannot read DeepSpeed config {path}: {exc.strerror or exc}.") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _fail(f"DeepSpeed config {path} is not valid JSON: {exc}.") from exc
        if not isinstance(config, dict):
            raise _fail(f"DeepSpeed config {path} must hold a JSON object, got {type(config).__name__}.")
    if hidden_size is not None and (isinstance(hidden_size, bool) or not isinstance(hidden_size, int)
                                    or hidden_size < 1):
        raise _fail(f"hidden_size must be a positive integer, got {hidden_size!r}.")
    for key in config:
        if key in REMOVED_TOP_KEYS:
            raise _fail(f"DeepSpeed 0.19.8 removed the {key} section; remove it from the config.")

    r = _Reader(hidden_size)
    zero_raw = config.get("zero_optimization", {})
    out = r.zero(zero_raw, config)
    if "zero_optimization" in config:
        r.used.append("zero_optimization")
    bf16_key = "bf16" if "bf16" in config or "bfloat16" not in config else "bfloat16"  # get_bfloat16_config
    bf16, _ = r.precision(bf16_key, config.get(bf16_key, {}), BF16_DEFAULTS)
    fp16, fp16_section = r.precision("fp16", config.get("fp16", {}), FP16_DEFAULTS)
    if bf16 and fp16:  # DeepSpeedConfig._initialize_params asserts
        raise _fail("DeepSpeed config enables both bf16 and fp16; it refuses that.")
    if fp16 is not False and fp16_section["loss_scale"] == 0:  # DeepSpeedFP16Config._validate_dynamic_...
        for key in ("loss_scale_window", "min_loss_scale"):
            if fp16_section[key] <= 0:
                raise _fail(f"DeepSpeed config key fp16.{key} must be above 0 with dynamic loss scaling.")
    scaling = Fp16LossScaling(fp16_section["loss_scale"], fp16_section["initial_scale_power"],
                              fp16_section["loss_scale_window"], fp16_section["hysteresis"],
                              fp16_section["consecutive_hysteresis"], fp16_section["min_loss_scale"])
    opt_type, opt_params = r.optimizer(config["optimizer"]) if "optimizer" in config else (None, ())
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        out[key] = r.batch(config, key)
    if world_size is not None and not any(k in r.from_trainer for k in ("train_batch_size",
                                                                       "train_micro_batch_size_per_gpu",
                                                                       "gradient_accumulation_steps")):
        _derive_batch(out, r.int_value("world_size", world_size, minimum=1))
    clipping: float | None = GRADIENT_CLIPPING_DEFAULT
    if "gradient_clipping" in config:
        r.used.append("gradient_clipping")
        if config["gradient_clipping"] == AUTO:  # fill_match("gradient_clipping", args.max_grad_norm)
            r.from_trainer.append("gradient_clipping")
            clipping = None
        else:
            clipping = r.float_value("gradient_clipping", config["gradient_clipping"], 0.0)
    force_cpu = ZERO_FORCE_DS_CPU_OPTIMIZER_DEFAULT
    if "zero_force_ds_cpu_optimizer" in config:
        r.used.append("zero_force_ds_cpu_optimizer")
        force_cpu = r.bool_value("zero_force_ds_cpu_optimizer", config["zero_force_ds_cpu_optimizer"])
    handled = {"zero_optimization", "bf16", "bfloat16", "fp16", "optimizer", "train_batch_size",
               "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping",
               "zero_force_ds_cpu_optimizer", "allgather_size"}
    for key, value in config.items():
        if key in ("bf16", "bfloat16") and key != bf16_key:
            r.noted.append(key)
            r.notes.append(f"DeepSpeed reads bf16 and ignores the old bfloat16 section when both are given ({key}).")
        elif key in handled:
            if key == "allgather_size":
                r.noted.append(key)
            elif key in ("bf16", "bfloat16", "fp16", "optimizer"):
                r.used.append(key)
        elif key in TOP_NOTED:
            r.noted.append(key)
        elif key in TOP_UNSUPPORTED:
            r.unsupported_key(key, value, None)
        else:
            r.unknown_key(key, refused=False)
    if r.from_trainer:
        r.notes.append("Set by the HF Trainer from its training arguments: " + ", ".join(sorted(r.from_trainer))
                       + ".")
    return DeepSpeedSettings(
        **out, bf16_enabled=bf16, fp16_enabled=fp16, fp16_loss_scaling=scaling, optimizer_type=opt_type,
        optimizer_params=opt_params, zero_force_ds_cpu_optimizer=force_cpu, gradient_clipping=clipping,
        from_trainer=tuple(sorted(r.from_trainer)), used_keys=tuple(sorted(set(r.used))),
        noted_keys=tuple(sorted(set(r.noted))), unsupported_keys=tuple(sorted(set(r.unsupported))),
        unknown_keys=tuple(sorted(set(r.unknown))), notes=tuple(r.notes),
    )
