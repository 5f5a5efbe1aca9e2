"""Option types shared by every command that takes a training specification.

Commands declare the options they need with these ``Annotated`` types and call ``build_train_spec`` /
``build_cluster``, so `estimate`, `profile`, `recommend` and `report` read the same flags the same way.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from planner import catalog
from planner.errors import PlannerError
from planner.specs import (
    AttnImpl,
    Cluster,
    GpuSpec,
    LoraSpec,
    Method,
    ModelSpec,
    Offload,
    Optimizer,
    Precision,
    QuantSpec,
    QuantType,
    TrainSpec,
)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Catalog name, path to config.json or model dir, or hub id.")]
TrustRemoteCodeOpt = Annotated[
    bool, typer.Option("--trust-remote-code", help="Allow configs that ask for remote code (auto_map).")
]
GpuOpt = Annotated[
    str, typer.Option("--gpu", help="Accelerator from 'planner gpus', or 'auto' to read local GPUs via NVML.")
]
GpusOpt = Annotated[int, typer.Option("--gpus", help="Total number of GPUs (data-parallel ranks).")]
NodesOpt = Annotated[int, typer.Option("--nodes", help="Number of nodes; --gpus must be divisible by it.")]
HostRamOpt = Annotated[
    float | None,
    typer.Option("--host-ram", "--host-ram-gib", metavar="GIB",
                 help="Host RAM per node for offload (offloaded states and DeepSpeed's pinned buffers), in GiB "
                      "(2^30 bytes); rows whose offload needs more do not fit. Default: not checked, and offload "
                      "rows say so."),
]
MethodOpt = Annotated[str | None, typer.Option("--method", help="full, lora or qlora (default: all).")]
ZeroOpt = Annotated[int | None, typer.Option("--zero", help="DeepSpeed ZeRO stage 0-3 (default: all).")]
OffloadOpt = Annotated[
    str | None, typer.Option("--offload", help="none, optimizer, optimizer+params (default: all valid).")
]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="bf16-mixed, fp16-mixed, bf16 (pure) or fp32.")]
OptimizerOpt = Annotated[
    str, typer.Option("--optimizer", help="adamw, adamw-8bit, paged-adamw, paged-adamw-8bit, sgd, adafactor.")
]
LoraRankOpt = Annotated[int, typer.Option("--lora-rank", help="LoRA rank r.")]
LoraAlphaOpt = Annotated[int, typer.Option("--lora-alpha", help="LoRA alpha.")]
LoraDropoutOpt = Annotated[float | None, typer.Option(
    "--lora-dropout", help="LoRA dropout probability [default: 0.05; 0 where peft adapts MoE expert or router "
    "parameters (lora.ParamWrapper refuses dropout)].")]
LoraTargetsOpt = Annotated[
    str, typer.Option("--lora-targets", help="'all-linear' or comma-separated module names (q_proj,v_proj).")
]
ModulesToSaveOpt = Annotated[
    str, typer.Option("--modules-to-save", help="Comma-separated modules trained in full beside LoRA.")
]
QuantTypeOpt = Annotated[str, typer.Option("--quant-type", help="QLoRA 4-bit type: nf4 or fp4.")]
DoubleQuantOpt = Annotated[
    bool, typer.Option("--double-quant/--no-double-quant", help="QLoRA double quantization of the constants.")
]
MicroBatchOpt = Annotated[int, typer.Option("--micro-batch", "-b", help="Micro-batch size per GPU (sequences).")]
SeqLenOpt = Annotated[
    int | None,
    typer.Option("--seq-len", "-s", help="Sequence length in tokens (default: 2048, or the model's limit if lower)."),
]
DEFAULT_SEQ_LEN = 2048
GradAccumOpt = Annotated[int, typer.Option("--grad-accum", help="Gradient accumulation steps.")]
CheckpointingOpt = Annotated[
    bool, typer.Option("--grad-checkpointing/--no-grad-checkpointing", help="Activation checkpointing, every layer.")
]
AttnOpt = Annotated[str, typer.Option("--attn", help="Attention implementation: eager, sdpa, flash_attention_2.")]
DropoutOpt = Annotated[
    float | None, typer.Option("--dropout", help="Override the model's dropout probabilities (default: config's).")
]
AllowLongerOpt = Annotated[
    bool, typer.Option("--allow-longer", help="Allow a sequence longer than the model's position limit.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON to stdout instead of a table.")]
TokensOpt = Annotated[
    str,
    typer.Option("--tokens", help="Tokens to train on, for time and cost: 2000000000, 2e9, 2B, 500M, 1.5T."),
]

# --tokens suffixes: thousand, million, billion (short scale), trillion.
_TOKEN_SUFFIXES = {"k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


def parse_tokens(value: str) -> int:
    """A token count as people write it: 2000000000, 2_000_000_000, 2,000,000,000, 2e9, 2B, 500M, 1.5T, 20k.
    The result must be a whole, non-negative number; anything else raises PlannerError."""
    from decimal import Decimal, InvalidOperation

    from planner.config_fields import shown
    from planner.estimate.throughput import validate_tokens

    text = str(value).strip().replace("_", "").replace(",", "")
    scale = _TOKEN_SUFFIXES.get(text[-1:].lower(), 1) if text else 1
    number = text[:-1] if scale != 1 else text
    try:
        amount = Decimal(number)
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite():
        raise PlannerError(
            f"--tokens {shown(value)} is not a number of tokens; write e.g. 2000000000, 2e9, 2B, 500M or 1.5T."
        )
    if amount.adjusted() > 30:  # far beyond validate_tokens' bound: no need to build the integer
        amount = Decimal(10**31).copy_sign(amount)
    tiny = amount != 0 and amount.adjusted() < -30  # would round to 0 below
    amount *= scale
    if tiny or amount != amount.to_integral_value():
        raise PlannerError(f"--tokens {shown(value)} is not a whole number of tokens.")
    tokens = int(amount)
    validate_tokens(tokens)
    return tokens


def _enum(enum_cls, value: str, flag: str):
    try:
        return enum_cls(value.lower())
    except ValueError:
        valid = ", ".join(m.value for m in enum_cls)
        raise PlannerError(f"{flag} {value!r} is not valid; choose one of {valid}.") from None


def parse_method(value: str) -> Method:
    return _enum(Method, value, "--method")


def parse_offload(value: str) -> Offload:
    return _enum(Offload, value, "--offload")


def parse_targets(value: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in value.split(",") if t.strip())
    if not names:
        raise PlannerError(f"--lora-targets {value!r} names no module; use 'all-linear' or e.g. q_proj,v_proj.")
    return names


# peft's LoRA recipes (and the HF PEFT examples) train with lora_dropout 0.05.
DEFAULT_LORA_DROPOUT = 0.05


def build_train_spec(
    *,
    method: str = "full",
    precision: str = "bf16-mixed",
    optimizer: str = "adamw",
    lora_rank: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float | None = None,
    lora_targets: str = "all-linear",
    modules_to_save: str = "",
    quant_type: str = "nf4",
    double_quant: bool = True,
    zero: int = 0,
    offload: str = "none",
    micro_batch: int = 1,
    seq_len: int = 2048,
    grad_accum: int = 1,
    grad_checkpointing: bool = False,
    attn: str = "sdpa",
    dropout: float | None = None,
    model: ModelSpec | None = None,
) -> TrainSpec:
    """TrainSpec from CLI values; every invalid value raises PlannerError naming it. ``lora_dropout`` None is the
    default: 0.05 (peft's recipes), or 0 when ``model`` is given and the targets put an adapter on a parameter
    (MoE experts, routers), where peft's lora.ParamWrapper refuses any dropout."""
    if lora_rank < 1:
        raise PlannerError(f"--lora-rank must be at least 1, got {lora_rank}.")
    if lora_dropout is None:
        lora_dropout = DEFAULT_LORA_DROPOUT
        if model is not None:  # any method: a table's LoRA rows are made from this spec
            from planner.estimate.count.params import count_params, param_wrapped

            probe = LoraSpec(rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout, targets=parse_targets(lora_targets),
                             modules_to_save=tuple(t.strip() for t in modules_to_save.split(",") if t.strip()))
            if param_wrapped(count_params(model), probe):
                lora_dropout = 0.0
    return TrainSpec(
        method=parse_method(method),
        precision=_enum(Precision, precision, "--precision"),
        optimizer=_enum(Optimizer, optimizer, "--optimizer"),
        lora=LoraSpec(
            rank=lora_rank,
            alpha=lora_alpha,
            dropout=lora_dropout,
            targets=parse_targets(lora_targets),
            modules_to_save=tuple(t.strip() for t in modules_to_save.split(",") if t.strip()),
        ),
        quant=QuantSpec(quant_type=_enum(QuantType, quant_type, "--quant-type"), double_quant=double_quant),
        zero_stage=zero,
        offload=parse_offload(offload),
        micro_batch=micro_batch,
        seq_len=seq_len,
        grad_accum=grad_accum,
        grad_checkpointing=grad_checkpointing,
        attn_impl=_enum(AttnImpl, attn, "--attn"),
        dropout=dropout,
    )


def default_seq_len(model) -> int:
    """2048 tokens, or the model's position limit when that is lower (GPT-2: 1024)."""
    return min(DEFAULT_SEQ_LEN, model.max_position_embeddings)


def resolve_gpu(name: str) -> GpuSpec:
    """A catalog GPU, or with 'auto' the local GPU read through NVML."""
    if name.lower() != "auto":
        return catalog.gpu(name)
    from planner.nvml import local_gpu

    return local_gpu()


def build_cluster(gpu: str, gpus: int, nodes: int, host_ram_gib: float | None = None) -> Cluster:
    return Cluster(gpu=resolve_gpu(gpu), num_gpus=gpus, num_nodes=nodes,
                   host_memory_bytes_per_node=host_ram_bytes(host_ram_gib))


def host_ram_bytes(host_ram_gib: float | None) -> int | None:
    """--host-ram in GiB per node as bytes; None (not given) stays None: host RAM is then not checked."""
    if host_ram_gib is None:
        return None
    if not 0 <= host_ram_gib <= 1e9:  # also refuses nan and inf
        raise PlannerError(f"--host-ram (--host-ram-gib) must be a number of GiB per node from 0 to 1e9, "
                          f"got {host_ram_gib}.")
    return int(host_ram_gib * 2**30)


# ---------------------------------------------------------------- --from: a training config people already have

MfuOpt = Annotated[
    float | None,
    typer.Option("--mfu", help="Override the step-time model with one model FLOPs utilisation, in (0, 1] (default: "
                 "the per-phase model checked against published runs, reports/time_accuracy.md)."),
]
FromOpt = Annotated[
    Path | None,
    typer.Option("--from", help="Estimate the run a training config describes: LLaMA-Factory, axolotl or torchtune "
                 "YAML, or TrainingArguments/TRL SFTConfig fields (JSON/YAML), with the DeepSpeed JSON it names. "
                 "Flags given beside it override it."),
]
AccelerateConfigOpt = Annotated[
    Path | None,
    typer.Option("--accelerate-config", help="With --from: the accelerate config the run launches with (GPUs, "
                 "nodes, DeepSpeed)."),
]
# TrainSpec fields each training flag sets (a flag typed beside --from overrides the config's value)
FLAG_FIELDS = {
    "method": ("method",), "precision": ("precision",), "optimizer": ("optimizer",),
    "lora_rank": ("lora.rank",), "lora_alpha": ("lora.alpha",), "lora_dropout": ("lora.dropout",),
    "lora_targets": ("lora.targets",), "modules_to_save": ("lora.modules_to_save",),
    "quant_type": ("quant.quant_type",), "double_quant": ("quant.double_quant",), "zero": ("zero_stage",),
    "offload": ("offload",), "micro_batch": ("micro_batch",), "seq_len": ("seq_len",), "grad_accum": ("grad_accum",),
    "grad_checkpointing": ("grad_checkpointing",), "attn": ("attn_impl",), "dropout": ("dropout",),
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


def from_cluster(fc, typed: set[str], gpus: int, nodes: int) -> tuple[int, int]:
    """GPUs and nodes: the typed flags, else what the config's accelerate config says, else the defaults."""
    return (gpus if "gpus" in typed or not fc.num_gpus else fc.num_gpus,
            nodes if "nodes" in typed or not fc.num_nodes else fc.num_nodes)


def typed_flags(ctx) -> set[str]:
    """The parameters the user gave on the command line (not defaults)."""
    # typer vendors its own click (typer._click), so compare the source by name, not with click's enum
    return {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}


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
    """The config's TrainSpec with every field a typed flag sets taken from the flags' TrainSpec."""
    train = config_train
    for flag, paths in FLAG_FIELDS.items():
        if flag in typed:
            for path in paths:
                train = _set_field(train, path, _get_field(flags_train, path))
    return train


def from_config_json(fc) -> dict:
    """What --json reports about the config it read."""
    return {"path": str(fc.path), "format": fc.format, "files": [str(f) for f in fc.files],
            "model_as_written": fc.model_as_written, "used": list(fc.used),
            "ignored": [{"field": f, "reason": r} for f, r in fc.ignored], "notes": list(fc.notes)}
