"""--from: the run a training config people already have describes, with the flags typed beside it on top
(estimate, recommend and report)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from planner.cli.options import TrainingFlags, build_train_spec, with_layout
from planner.errors import PlannerError
from planner.specs import ModelSpec, TrainSpec

FromOpt = Annotated[
    Path | None,
    typer.Option("--from", help="Estimate the run a training config describes: LLaMA-Factory, axolotl or torchtune "
                 "YAML, TrainingArguments/TRL SFTConfig fields (JSON/YAML), with the DeepSpeed JSON it names, or a bundle "
                 "'planner recommend --out' wrote (its directory or train.py). "
                 "Flags given beside it override it."),
]
AccelerateConfigOpt = Annotated[
    Path | None,
    typer.Option("--accelerate-config", help="With --from: the accelerate config the run launches with (GPUs, "
                 "nodes, DeepSpeed)."),
]
# TrainSpec fields each training flag sets (a flag typed beside --from overrides the config's value), in the
# order they are set; --zero and --offload (None) set the layout through with_layout.
FLAG_FIELDS = {
    "method": ("method",), "precision": ("precision",), "optimizer": ("optimizer",),
    "lora_rank": ("lora.rank",), "lora_alpha": ("lora.alpha",), "lora_dropout": ("lora.dropout",),
    "lora_targets": ("lora.targets",), "modules_to_save": ("lora.modules_to_save",),
    "lora_dtype": ("lora_dtype",), "qlora_prep": ("qlora_prep",), "quant_type": ("quant.quant_type",), "double_quant": ("quant.double_quant",), "zero": None,
    "offload": None, "micro_batch": ("micro_batch",), "seq_len": ("seq_len",), "grad_accum": ("grad_accum",),
    "grad_checkpointing": ("grad_checkpointing",), "activation_offload": ("activation_offload",),
    "optimizer_in_backward": ("optimizer_in_backward",),
    "compile": ("compile",),
    "packing": ("packing",),
    "attn": ("attn_impl",), "dropout": ("dropout",),
    "loss": ("loss.kind",), "loss_chunks": ("loss.chunks",),
}


def read_from(from_config: Path | None, accelerate_config: Path | None, model: str | None):
    """(the config --from reads, or None; the model to load: --model, else the config's). One sentence when the
    config names no model, or when --accelerate-config comes without --from."""
    if from_config is None:
        if accelerate_config is not None:
            raise PlannerError("--accelerate-config goes with --from; give the training config it launches.")
        return None, model
    from planner.from_config import read_training_config

    fc = read_training_config(from_config, accelerate_config=accelerate_config)
    model = model or fc.model
    if not model:
        raise PlannerError(f"--from {str(from_config)!r} names no model; give --model.")
    return fc, model


def from_cluster(fc, flags: TrainingFlags) -> TrainingFlags:
    """The flags with the GPUs and nodes of the run: typed, else what the config's accelerate config says, else
    the defaults."""
    return dataclasses.replace(flags, gpus=flags.gpus if "gpus" in flags.typed or not fc.num_gpus else fc.num_gpus,
                               nodes=flags.nodes if "nodes" in flags.typed or not fc.num_nodes else fc.num_nodes)


def _set_field(train: TrainSpec, path: str, value) -> TrainSpec:
    if "." in path:
        outer, inner = path.split(".")
        return dataclasses.replace(train, **{outer: dataclasses.replace(getattr(train, outer), **{inner: value})})
    return dataclasses.replace(train, **{path: value})


def _get_field(train: TrainSpec, path: str):
    obj = train
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def merge_from_config(config_train: TrainSpec, flags_train: TrainSpec, typed: set[str]) -> TrainSpec:
    """The config's TrainSpec with every field a typed flag sets taken from the flags' TrainSpec; a typed --zero
    replaces only the stage of the config's parallelism and a typed --offload only its offload (both at once, so
    --zero 2 --offload optimizer beside a ZeRO-3 parameter-offload config is never half applied)."""
    train = config_train
    for flag, paths in FLAG_FIELDS.items():
        if flag in typed and paths is not None:
            for path in paths:
                train = _set_field(train, path, _get_field(flags_train, path))
    if typed & {"zero", "offload"}:
        stage = (flags_train if "zero" in typed else config_train).zero_stage
        offload = (flags_train if "offload" in typed else config_train).offload
        train = with_layout(train, train.method, stage, offload)
    return _merge_engine(train, flags_train, typed)


def _merge_engine(train: TrainSpec, flags_train: TrainSpec, typed: set[str]) -> TrainSpec:
    """A typed --engine (or FSDP2 flags that make the flags' run FSDP2) replaces the config's parallelism; FSDP2
    flags typed beside an FSDP2 config replace only those settings of it."""
    fsdp_typed = typed & {"reshard", "fsdp_offload", "reduce_dtype", "hsdp"}
    if "engine" in typed:
        fsdp = flags_train.parallelism.fsdp_config if flags_train.uses_fsdp2 else None
        return with_layout(train, train.method, flags_train.zero_stage, flags_train.offload, fsdp)
    if fsdp_typed and train.uses_fsdp2 and flags_train.uses_fsdp2:
        fields = {"reshard": "reshard_after_forward", "fsdp_offload": "cpu_offload", "reduce_dtype": "reduce_dtype",
                  "hsdp": "replicate_degree"}
        cfg, ours = train.parallelism.fsdp_config, flags_train.parallelism.fsdp_config
        cfg = dataclasses.replace(cfg, **{fields[f]: getattr(ours, fields[f]) for f in fsdp_typed})
        return with_layout(train, train.method, 0, train.offload, cfg)
    return train


def from_config_run(fc, flags: TrainingFlags, model: ModelSpec, *, seq_len_from_flags: bool = False):
    """(the TrainSpec of the run --from describes, with every flag typed beside it on top; the flags with that
    run's method, ZeRO stage, offload, GPUs and nodes where they were not typed). ``seq_len_from_flags``: a
    config that leaves the sequence length unset takes --seq-len's default instead of the config format's."""
    typed = set(flags.typed) | ({"seq_len"} if seq_len_from_flags and "seq_len" in fc.unset else set())
    fsdp2 = fc.train.uses_fsdp2 and flags.engine is None and not flags.zero  # the FSDP2 flags' own settings
    deepspeed = flags.zero is None and str(flags.engine).lower() == "deepspeed"  # the stage left to the rows
    own = build_train_spec(flags, model=model, method=flags.method or "full", zero=1 if deepspeed else flags.zero or 0,
                           offload=flags.offload or "none", engine="fsdp2" if fsdp2 else flags.engine)
    train = merge_from_config(fc.train, own, typed)
    fsdp2 = train.uses_fsdp2 and flags.zero is None  # the run's engine: FSDP2 rows only (estimate_cmd.fsdp2_rows)
    flags = dataclasses.replace(flags, method=flags.method or train.method.value,
                                engine="fsdp2" if fsdp2 else flags.engine,
                                zero=None if fsdp2 or deepspeed else train.zero_stage if flags.zero is None else
                                flags.zero,
                                offload=flags.offload or train.offload.value)
    return train, from_cluster(fc, flags)


def from_config_json(fc) -> dict:
    """What --json reports about the config it read."""
    return {"path": str(fc.path), "format": fc.format, "files": [str(f) for f in fc.files],
            "model_as_written": fc.model_as_written, "used": list(fc.used),
            "ignored": [{"field": f, "reason": r} for f, r in fc.ignored], "notes": list(fc.notes)}
