"""``SectionReader``: one DeepSpeed config walked section by section, every key classified as it is met.

Typed values (a wrong type or an out-of-range value is one-sentence ``PlannerError`` naming the key), the
``"auto"`` rules of the HF Trainer, and the ZeRO, offload, precision, optimizer and batch sections, each read as
DeepSpeed 0.19.8 reads it. Every key lands in ``used``, ``noted``, ``unsupported`` or ``unknown``, with a note
where the user should know.
"""

from __future__ import annotations

import json
import math
from typing import Any

from planner.deepspeed_config.defaults import (
    AUTO,
    DEEPSPEED_OPTIMIZERS,
    OFFLOAD_OPTIMIZER_DEFAULTS,
    OFFLOAD_PARAM_DEFAULTS,
    OFFLOAD_UNSUPPORTED,
    PRECISION_UNSUPPORTED,
    REMOVED_ZERO_KEYS,
    TRAINER_OPTIMIZER_PARAMS,
    ZERO_BOOL_FIELDS,
    ZERO_FIELD_NAMES,
    ZERO_INT_FIELDS,
    ZERO_NOTED,
    ZERO_STAGE_DEFAULT,
    ZERO_UNSUPPORTED,
    OffloadDevice,
)
from planner.deepspeed_config.settings import OffloadOptimizer, OffloadParam
from planner.errors import PlannerError, one_sentence


def fail(message: str) -> PlannerError:
    return PlannerError(one_sentence(message))


class SectionReader:
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
            raise fail(f"DeepSpeed config key {key} must be an integer, got {value!r}.")
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise fail(f"DeepSpeed config key {key} must be a whole number, got {value!r}.")
        if value < minimum:
            raise fail(f"DeepSpeed config key {key} must be at least {minimum}, got {value!r}.")
        return int(value)

    @staticmethod
    def float_value(key: str, value: Any, low: float, high: float = math.inf) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise fail(f"DeepSpeed config key {key} must be a finite number, got {value!r}.")
        if not low <= value <= high:
            raise fail(f"DeepSpeed config key {key} must be between {low} and {high}, got {value!r}.")
        return float(value)

    @staticmethod
    def bool_value(key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise fail(f"DeepSpeed config key {key} must be true or false, got {value!r}.")
        return value

    @staticmethod
    def section(key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise fail(f"DeepSpeed config key {key} must be a JSON object, got {value!r}.")
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
                    raise fail(f"DeepSpeed config key {full} must be none, cpu or nvme, got {value!r}.")
                out[name] = value
            elif name == "nvme_path":
                if value is not None and not isinstance(value, str):
                    raise fail(f"DeepSpeed config key {full} must be a path, got {value!r}.")
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
                raise fail(f"DeepSpeed 0.19.8 removed zero_optimization.{name}; remove it from the config.")
        out: dict[str, Any] = {}
        stage_raw = zero.get("stage", ZERO_STAGE_DEFAULT)
        if stage_raw == AUTO:
            stage_raw = self.dropped_auto("zero_optimization.stage", ZERO_STAGE_DEFAULT)
        stage = self.int_value("zero_optimization.stage", stage_raw)
        if stage > 3:
            raise fail(f"DeepSpeed config key zero_optimization.stage must be 0, 1, 2 or 3, got {stage_raw!r}.")
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
                raise fail(f"DeepSpeed config sets {key} twice (under its field name and its alias).")
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
                        raise fail(f"DeepSpeed refuses {key} together with zero_optimization.{target}.")
                    zero = {**zero, target: {"device": "cpu"}}
                    self.notes.append(f"{key} is deprecated; DeepSpeed reads it as {target} on the CPU.")
            elif name in ZERO_NOTED:
                self.noted.append(key)
            elif name in ZERO_UNSUPPORTED:
                self.unsupported_key(key, value, ZERO_UNSUPPORTED[name])
            else:
                self.unknown_key(key, refused=True)
        if "stage3_gather_fp16_weights_on_model_save" in given and "stage3_gather_16bit_weights_on_model_save" in given:
            raise fail("DeepSpeed refuses stage3_gather_fp16_weights_on_model_save together with its replacement.")
        if out["overlap_comm"] is None:  # DeepSpeedZeroConfig.overlap_comm_valid
            out["overlap_comm"] = stage == 3
        opt = self.offload("zero_optimization.offload_optimizer", zero.get("offload_optimizer") or {},
                           OFFLOAD_OPTIMIZER_DEFAULTS)
        par = self.offload("zero_optimization.offload_param", zero.get("offload_param") or {},
                           OFFLOAD_PARAM_DEFAULTS)
        if opt["ratio"] < 1.0 and stage != 3:  # DeepSpeedZeroConfig.offload_ratio_check
            raise fail("DeepSpeed config key zero_optimization.offload_optimizer.ratio below 1 needs ZeRO stage 3.")
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
            raise fail(f'DeepSpeed config key {key} is "auto", which the HF Trainer derives from the model\'s '
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
                    raise fail(f"DeepSpeed config key optimizer.type must be an optimizer name, got {value!r}.")
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

