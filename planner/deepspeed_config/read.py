"""``read_deepspeed_config``: a DeepSpeed JSON file (or its dict) read into one frozen ``DeepSpeedSettings``.

It checks the file and the removed sections, has ``SectionReader`` read each section, reads the top-level keys
(clipping, the CPU-optimizer switch, the noted, unsupported and unknown ones) and derives the batch sizes as
DeepSpeedConfig does when the world size is given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from planner.deepspeed_config.defaults import (
    AUTO,
    BF16_DEFAULTS,
    FP16_DEFAULTS,
    GRADIENT_CLIPPING_DEFAULT,
    REMOVED_TOP_KEYS,
    TOP_NOTED,
    TOP_UNSUPPORTED,
    ZERO_FORCE_DS_CPU_OPTIMIZER_DEFAULT,
)
from planner.deepspeed_config.sections import SectionReader, fail
from planner.deepspeed_config.settings import DeepSpeedSettings, Fp16LossScaling


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
        raise fail("DeepSpeed needs train_batch_size or train_micro_batch_size_per_gpu in the config.")
    if min(tb, mb, ga) < 1 or tb != mb * ga * world_size:
        raise fail(f"DeepSpeed config batch keys disagree: train_batch_size {tb} != micro batch {mb} x "
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
            raise fail(f"Cannot read DeepSpeed config {path}: {exc.strerror or exc}.") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise fail(f"DeepSpeed config {path} is not valid JSON: {exc}.") from exc
        if not isinstance(config, dict):
            raise fail(f"DeepSpeed config {path} must hold a JSON object, got {type(config).__name__}.")
    if hidden_size is not None and (isinstance(hidden_size, bool) or not isinstance(hidden_size, int)
                                    or hidden_size < 1):
        raise fail(f"hidden_size must be a positive integer, got {hidden_size!r}.")
    for key in config:
        if key in REMOVED_TOP_KEYS:
            raise fail(f"DeepSpeed 0.19.8 removed the {key} section; remove it from the config.")

    r = SectionReader(hidden_size)
    zero_raw = config.get("zero_optimization", {})
    out = r.zero(zero_raw, config)
    if "zero_optimization" in config:
        r.used.append("zero_optimization")
    bf16_key = "bf16" if "bf16" in config or "bfloat16" not in config else "bfloat16"  # get_bfloat16_config
    bf16, _ = r.precision(bf16_key, config.get(bf16_key, {}), BF16_DEFAULTS)
    fp16, fp16_section = r.precision("fp16", config.get("fp16", {}), FP16_DEFAULTS)
    if bf16 and fp16:  # DeepSpeedConfig._initialize_params asserts
        raise fail("DeepSpeed config enables both bf16 and fp16; it refuses that.")
    if fp16 is not False and fp16_section["loss_scale"] == 0:  # DeepSpeedFP16Config._validate_dynamic_...
        for key in ("loss_scale_window", "min_loss_scale"):
            if fp16_section[key] <= 0:
                raise fail(f"DeepSpeed config key fp16.{key} must be above 0 with dynamic loss scaling.")
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
