"""The options every command that plans or runs a training shares, declared once, and their one reading.

``TrainingFlags`` declares the shared options (flag names, help, defaults; estimate's "all" defaults for
--method, --zero, --offload and --seq-len) and is what a command receives: ``@training_options(...)`` puts its
fields into the command's signature in place of a ``flags: TrainingFlags`` parameter, so `estimate`, `profile`,
`recommend` and `report` offer the same flags with the same help. A command that reads one differently (profile
runs one concrete configuration, recommend searches what is not fixed) names that difference in its decorator.
``build_train_spec`` turns the flags into a ``TrainSpec``, ``build_cluster`` into a ``Cluster``,
``check_flags`` checks what needs no model before any work; every invalid value is a
``PlannerError`` naming its flag, each checked by one function (``parse_*``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import Annotated, Any, NamedTuple

import typer

from planner import catalog
from planner.cli import deepspeed_options
from planner.cli.deepspeed_options import DeepSpeedConfigOpt
from planner.errors import PlannerError
from planner.estimate.throughput import DEFAULT_MFU, validate_mfu, validate_price
from planner.specs import (
    DEFAULT_LOSS_CHUNKS,
    LOSS_CHUNKS_HELP,
    LOSS_HELP,
    AttnImpl,
    Cluster,
    GpuSpec,
    LoraSpec,
    LossSpec,
    Method,
    ModelSpec,
    Offload,
    Optimizer,
    Parallelism,
    PeftDtype,
    Precision,
    QuantSpec,
    QuantType,
    TrainSpec,
    ZeroConfig,
    validate_margin,
)
from planner.units import GIB

ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Catalog name, path to config.json or model dir, "
                                               "or hub id (with --from: instead of the config's model).")]
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
                 help="Host RAM per node for offload (offloaded states, DeepSpeed's pinned buffers, offloaded activations), in GiB "
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
    str, typer.Option("--optimizer", help="adamw (torch foreach, the default), adamw-fused (torch fused=True), adamw-8bit (bitsandbytes, 8-bit states), paged-adamw, paged-adamw-8bit (bitsandbytes, states in CUDA unified memory), sgd, adafactor (transformers, factored; no ZeRO for these three kinds).")
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
LoraDtypeOpt = Annotated[str, typer.Option(
    "--lora-dtype", help="LoRA adapter dtype: fp32 (peft's default, autocast_adapter_dtype=True) or 16bit (the "
    "model's compute dtype, as torchtune and Unsloth keep them; stepped without an fp32 master copy).")]
QloraPrepOpt = Annotated[str, typer.Option(
    "--qlora-prep", help="QLoRA's unquantized parameters (embeddings, norms, lm_head): fp32 (peft's "
    "prepare_model_for_kbit_training upcasts them, the default) or 16bit (kept in the compute dtype, as torchtune "
    "and Unsloth do).")]
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
ActivationOffloadOpt = Annotated[
    bool,
    typer.Option("--activation-offload/--no-activation-offload",
                 help="Copy saved activations to host RAM in forward and back in backward "
                      "(torch.autograd.graph.save_on_cpu around the forward; default: off)."),
]
LossOpt = Annotated[str, typer.Option("--loss", help=LOSS_HELP)]
LossChunksOpt = Annotated[int, typer.Option("--loss-chunks", help=LOSS_CHUNKS_HELP)]
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

MarginOpt = Annotated[float, typer.Option("--margin", help="Safety margin: keep this share of GPU memory free.")]
PriceOpt = Annotated[float, typer.Option("--price-per-gpu-hour", help="Price of one GPU-hour, for cost.")]
MfuOpt = Annotated[
    float | None,
    typer.Option("--mfu", help="Override the step-time model with one model FLOPs utilisation, in (0, 1] (default: "
                 "the per-phase model checked against published runs, reports/time_accuracy.md)."),
]
# One configuration (profile runs exactly one) instead of "all": concrete --method, --zero and --offload.
MethodOneOpt = Annotated[str, typer.Option("--method", help="full, lora or qlora.")]
ZeroOneOpt = Annotated[int, typer.Option("--zero", help="DeepSpeed ZeRO stage 0-3 (0: plain / DDP).")]
OffloadOneOpt = Annotated[str, typer.Option("--offload", help="none, optimizer, optimizer+params.")]


@dataclasses.dataclass(frozen=True)
class TrainingFlags:
    """The shared options as the user typed them (strings and numbers, not yet checked), declared once: each
    field's annotation is its typer option and its default the option's default. ``None`` for method, zero,
    offload (estimate, report: every one; recommend: searched), attn and grad_checkpointing (recommend: searched)
    means "not fixed"; seq_len None means the model's default (``default_seq_len``)."""

    # the cluster
    gpus: GpusOpt = 1
    gpu: GpuOpt = catalog.DEFAULT_GPU
    nodes: NodesOpt = 1
    host_ram: HostRamOpt = None
    # the run
    method: MethodOpt = None
    zero: ZeroOpt = None
    offload: OffloadOpt = None
    precision: PrecisionOpt = "bf16-mixed"
    optimizer: OptimizerOpt = "adamw"
    lora_rank: LoraRankOpt = 16
    lora_alpha: LoraAlphaOpt = 32
    lora_dropout: LoraDropoutOpt = None
    lora_targets: LoraTargetsOpt = "all-linear"
    modules_to_save: ModulesToSaveOpt = ""
    lora_dtype: LoraDtypeOpt = "fp32"
    qlora_prep: QloraPrepOpt = "fp32"
    quant_type: QuantTypeOpt = "nf4"
    double_quant: DoubleQuantOpt = True
    micro_batch: MicroBatchOpt = 1
    seq_len: SeqLenOpt = None
    grad_accum: GradAccumOpt = 1
    grad_checkpointing: CheckpointingOpt = False
    activation_offload: ActivationOffloadOpt = False
    attn: AttnOpt = "sdpa"
    dropout: DropoutOpt = None
    loss: LossOpt = "standard"
    loss_chunks: LossChunksOpt = DEFAULT_LOSS_CHUNKS
    allow_longer: AllowLongerOpt = False
    deepspeed_config: DeepSpeedConfigOpt = None
    # time, cost and the fit (estimate, recommend, report)
    margin: MarginOpt = 0.1
    mfu: MfuOpt = DEFAULT_MFU
    tokens: TokensOpt = "0"
    price_per_gpu_hour: PriceOpt = 0.0
    # not an option: the fields above the user typed on the command line (a flag typed beside --from wins)
    typed: frozenset[str] = dataclasses.field(default=frozenset(), metadata={"option": False})
    # not options: what --deepspeed-config sets beyond the fields above (deepspeed_options.apply)
    zero_config: ZeroConfig = dataclasses.field(default=ZeroConfig(), metadata={"option": False})
    deepspeed_notes: tuple[str, ...] = dataclasses.field(default=(), metadata={"option": False})


# What a command leaves out: the cluster options beyond --gpus/--nodes, and the plan's (time, cost, fit).
HOST_OPTIONS = ("gpu", "host_ram")
PLAN_OPTIONS = ("allow_longer", "margin", "mfu", "tokens", "price_per_gpu_hour")


class Variant(NamedTuple):
    """A command's own declaration of a shared option (another type, help or default)."""

    annotation: Any
    default: Any


_CONTEXT = "training_flags_context"


def training_options(*, omit: tuple[str, ...] = (), **changes):
    """Decorator: the command's ``flags: TrainingFlags`` parameter becomes the shared options (in
    ``TrainingFlags``' order, at its place), and the command is called with one ``TrainingFlags``. ``omit``
    names options the command does not offer (they keep their defaults); ``name=value`` changes an option's
    default, ``name=Variant(annotation, default)`` replaces its declaration. Rewrites ``__signature__``, which
    typer reads."""
    hints = typing.get_type_hints(TrainingFlags, include_extras=True)
    shared = []
    for f in dataclasses.fields(TrainingFlags):
        if not f.metadata.get("option", True) or f.name in omit:
            continue
        annotation, default = hints[f.name], changes.pop(f.name, f.default)
        if isinstance(default, Variant):
            annotation, default = default
        shared.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                        default=default))
    if changes or set(omit) - set(hints):
        raise TypeError(f"not shared options: {sorted(set(changes) | (set(omit) - set(hints)))}")
    names = frozenset(p.name for p in shared)

    def decorate(command):
        own = list(inspect.signature(command, eval_str=True).parameters.values())
        at = next(i for i, p in enumerate(own) if p.annotation is TrainingFlags)
        context = inspect.Parameter(_CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in (*own[:at], *shared, *own[at + 1:])]

        @functools.wraps(command)
        def run(**kwargs):
            typed = typed_flags(kwargs.pop(_CONTEXT)) & names
            flags = TrainingFlags(**{n: kwargs.pop(n) for n in names}, typed=frozenset(typed))
            flags = deepspeed_options.apply(flags)
            return command(**kwargs, **{own[at].name: flags})

        run.__signature__ = inspect.Signature([*params, context])
        run.__annotations__ = {p.name: p.annotation for p in (*params, context)}
        return run

    return decorate


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


def parse_zero(value: int) -> int:
    if value not in (0, 1, 2, 3):
        raise PlannerError(f"--zero must be 0, 1, 2 or 3, got {value}.")
    return value


def parse_offload(value: str) -> Offload:
    return _enum(Offload, value, "--offload")


def parse_attn(value: str) -> AttnImpl:
    return _enum(AttnImpl, value, "--attn")


def parse_targets(value: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in value.split(",") if t.strip())
    if not names:
        raise PlannerError(f"--lora-targets {value!r} names no module; use 'all-linear' or e.g. q_proj,v_proj.")
    return names


def parse_modules(value: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in value.split(",") if t.strip())


def check_flags(flags: TrainingFlags) -> int:
    """The checks of shared flags that need no model, made before any work: --mfu, --price-per-gpu-hour, --tokens,
    --margin and a fixed --zero (in this order). Returns the number of tokens."""
    validate_mfu(flags.mfu)
    validate_price(flags.price_per_gpu_hour)
    num_tokens = parse_tokens(flags.tokens)
    validate_margin(flags.margin)
    if flags.zero is not None:
        parse_zero(flags.zero)
    return num_tokens


# peft's LoRA recipes (and the HF PEFT examples) train with lora_dropout 0.05.
DEFAULT_LORA_DROPOUT = 0.05


def build_train_spec(flags: TrainingFlags | None = None, /, *, model: ModelSpec | None = None, **values) -> TrainSpec:
    """The TrainSpec of ``flags`` (default ``TrainingFlags()``) with ``values`` (fields of TrainingFlags) put in
    their place; every invalid value raises PlannerError naming its flag. Not fixed (None): method full, ZeRO
    stage 0, no offload, sdpa, no checkpointing, sequence ``default_seq_len(model)`` (2048 without a model).
    ``lora_dropout`` None is the default: 0.05 (peft's recipes), or 0 when ``model`` is given and the targets put
    an adapter on a parameter (MoE experts, routers), where peft's lora.ParamWrapper refuses any dropout."""
    f = dataclasses.replace(flags or TrainingFlags(), **values)
    if f.lora_rank < 1:
        raise PlannerError(f"--lora-rank must be at least 1, got {f.lora_rank}.")
    lora_dropout = f.lora_dropout
    if lora_dropout is None:
        lora_dropout = DEFAULT_LORA_DROPOUT
        if model is not None:  # any method: a table's LoRA rows are made from this spec
            from planner.estimate.count.params import count_params, param_wrapped

            probe = LoraSpec(rank=f.lora_rank, alpha=f.lora_alpha, dropout=lora_dropout,
                             targets=parse_targets(f.lora_targets), modules_to_save=parse_modules(f.modules_to_save))
            if param_wrapped(count_params(model), probe):
                lora_dropout = 0.0
    seq_len = f.seq_len
    if seq_len is None:
        seq_len = DEFAULT_SEQ_LEN if model is None else default_seq_len(model)
    method = parse_method("full" if f.method is None else f.method)
    return TrainSpec(
        precision=_enum(Precision, f.precision, "--precision"),
        optimizer=_enum(Optimizer, f.optimizer, "--optimizer"),
        lora=LoraSpec(
            rank=f.lora_rank,
            alpha=f.lora_alpha,
            dropout=lora_dropout,
            targets=parse_targets(f.lora_targets),
            modules_to_save=parse_modules(f.modules_to_save),
        ),
        quant=QuantSpec(quant_type=_enum(QuantType, f.quant_type, "--quant-type"), double_quant=f.double_quant),
        **_layout(method, 0 if f.zero is None else parse_zero(f.zero),
                  Offload.NONE if f.offload is None else parse_offload(f.offload), f.zero_config),
        micro_batch=f.micro_batch,
        seq_len=seq_len,
        grad_accum=f.grad_accum,
        grad_checkpointing=bool(f.grad_checkpointing),
        activation_offload=bool(f.activation_offload),
        attn_impl=AttnImpl.SDPA if f.attn is None else parse_attn(f.attn),
        dropout=f.dropout,
        lora_dtype=_enum(PeftDtype, f.lora_dtype, "--lora-dtype"),
        qlora_prep=_enum(PeftDtype, f.qlora_prep, "--qlora-prep"),
        loss=LossSpec.from_flags(f.loss, f.loss_chunks),
    )


def _layout(method: Method, zero: int, offload: Offload, zero_config: ZeroConfig | None = None) -> dict:
    """The TrainSpec fields of a method, ZeRO stage and offload: the one place the CLI writes a stage and an
    offload into a TrainSpec (``build_train_spec``, ``with_layout``). ``zero_config``: DeepSpeed's buckets and
    thresholds (``--deepspeed-config``), kept at stages 1-3."""
    return {"method": method, "parallelism": Parallelism.from_zero(zero, offload, zero_config)}


def with_layout(train: TrainSpec, method: Method, zero: int, offload: Offload) -> TrainSpec:
    """``train`` with this method, ZeRO stage and offload, keeping its DeepSpeed buckets and thresholds (an
    invalid combination raises the TrainSpec's PlannerError)."""
    return dataclasses.replace(train, **_layout(method, zero, offload, train.parallelism.zero_config))


def default_seq_len(model) -> int:
    """2048 tokens, or the model's position limit when that is lower (GPT-2: 1024)."""
    return min(DEFAULT_SEQ_LEN, model.max_position_embeddings)


def resolve_gpu(name: str) -> GpuSpec:
    """A catalog GPU, or with 'auto' the local GPU read through NVML."""
    if name.lower() != "auto":
        return catalog.gpu(name)
    from planner.nvml import local_gpu

    return local_gpu()


def build_cluster(flags: TrainingFlags) -> Cluster:
    """--gpu, --gpus, --nodes and --host-ram as a Cluster (which checks --gpus and --nodes)."""
    return Cluster(gpu=resolve_gpu(flags.gpu), num_gpus=flags.gpus, num_nodes=flags.nodes,
                   host_memory_bytes_per_node=host_ram_bytes(flags.host_ram))


def host_ram_bytes(host_ram_gib: float | None) -> int | None:
    """--host-ram in GiB per node as bytes; None (not given) stays None: host RAM is then not checked."""
    if host_ram_gib is None:
        return None
    if not 0 <= host_ram_gib <= 1e9:  # also refuses nan and inf
        raise PlannerError(f"--host-ram (--host-ram-gib) must be a number of GiB per node from 0 to 1e9, "
                          f"got {host_ram_gib}.")
    return int(host_ram_gib * GIB)


def typed_flags(ctx) -> set[str]:
    """The parameters the user gave on the command line (not defaults)."""
    # typer vendors its own click (typer._click), so compare the source by name, not with click's enum
    return {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}
