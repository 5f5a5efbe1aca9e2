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
from typing import Any, NamedTuple

import typer

from planner import catalog
from planner.cli import deepspeed_options, fsdp_options
from planner.cli import grpo_options as go
from planner.cli import ppo_options as po
from planner.cli.deepspeed_options import DeepSpeedConfigOpt
from planner.cli.tokens import parse_tokens  # re-exported: o.parse_tokens
from planner.errors import PlannerError
from planner.estimate.throughput import DEFAULT_MFU, validate_mfu, validate_price
from planner.specs import (
    DEFAULT_LOSS_CHUNKS,
    AttnImpl,
    Cluster,
    Engine,
    FsdpConfig,
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
    TaskSpec,
    TrainSpec,
    ZeroConfig,
    validate_margin,
)
from planner.units import GIB

__all__ = ["ActivationOffloadOpt", "AllowLongerOpt", "AttnOpt", "CheckpointingOpt", "CompileOpt", "DEFAULT_SEQ_LEN", "DoubleQuantOpt", "DropoutOpt", "GpuOpt", "GpusOpt", "GradAccumOpt", "HostRamOpt", "JsonOpt", "LoraAlphaOpt", "LoraDropoutOpt", "LoraDtypeOpt", "LoraRankOpt", "LoraTargetsOpt", "LossChunksOpt", "LossOpt", "MarginOpt", "MethodOneOpt", "MethodOpt", "MfuOpt", "MicroBatchOpt", "ModelOpt", "ModulesToSaveOpt", "NodesOpt", "OffloadOneOpt", "OffloadOpt", "OptimizerInBackwardOpt", "OptimizerOpt", "PackingOpt", "PrecisionOpt", "PriceOpt", "QloraPrepOpt", "QuantTypeOpt", "SelectiveAcOpt", "SeqLenOpt", "TokensOpt", "TrustRemoteCodeOpt", "ZeroOneOpt", "ZeroOpt"]

from planner.cli.option_types import (  # re-exported: the commands read them as options.X
    DEFAULT_SEQ_LEN,
    ActivationOffloadOpt,
    AllowLongerOpt,
    AttnOpt,
    CheckpointingOpt,
    CompileOpt,
    DoubleQuantOpt,
    DropoutOpt,
    GpuOpt,
    GpusOpt,
    GradAccumOpt,
    HostRamOpt,
    JsonOpt,
    LoraAlphaOpt,
    LoraDropoutOpt,
    LoraDtypeOpt,
    LoraRankOpt,
    LoraTargetsOpt,
    LossChunksOpt,
    LossOpt,
    MarginOpt,
    MethodOneOpt,
    MethodOpt,
    MfuOpt,
    MicroBatchOpt,
    ModelOpt,
    ModulesToSaveOpt,
    NodesOpt,
    OffloadOneOpt,
    OffloadOpt,
    OptimizerInBackwardOpt,
    OptimizerOpt,
    PackingOpt,
    PrecisionOpt,
    PriceOpt,
    QloraPrepOpt,
    QuantTypeOpt,
    ReferenceOpt,
    SelectiveAcOpt,
    SeqLenOpt,
    TaskOpt,
    TokensOpt,
    TrustRemoteCodeOpt,
    ZeroOneOpt,
    ZeroOpt,
)


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
    engine: fsdp_options.EngineOpt = None  # None: the stage decides, or every engine (estimate, recommend)
    reshard: fsdp_options.ReshardOpt = None
    fsdp_offload: fsdp_options.FsdpOffloadOpt = False
    reduce_dtype: fsdp_options.ReduceDtypeOpt = "fp32"
    hsdp: fsdp_options.HsdpOpt = 1
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
    optimizer_in_backward: OptimizerInBackwardOpt = False
    compile: CompileOpt = False
    packing: PackingOpt = False
    selective_ac: SelectiveAcOpt = ""
    attn: AttnOpt = "sdpa"
    dropout: DropoutOpt = None
    loss: LossOpt = "standard"
    loss_chunks: LossChunksOpt = DEFAULT_LOSS_CHUNKS
    task: TaskOpt = "sft"
    reference: ReferenceOpt = "auto"
    num_generations: go.NumGenerationsOpt = go.DEFAULT_NUM_GENERATIONS  # --task grpo (grpo_options.py)
    completion_len: go.CompletionLenOpt = go.DEFAULT_COMPLETION_LEN
    beta: go.BetaOpt = go.DEFAULT_BETA
    generation: go.GenerationOpt = go.Generation.TRANSFORMERS.value
    vllm_memory_utilization: go.VllmMemoryOpt = go.DEFAULT_VLLM_MEMORY_UTILIZATION
    vllm_sleep: go.VllmSleepOpt = False
    response_len: po.ResponseLenOpt = po.DEFAULT_RESPONSE_LEN  # --task ppo (ppo_options.py)
    num_ppo_epochs: po.NumPpoEpochsOpt = po.DEFAULT_NUM_PPO_EPOCHS
    num_mini_batches: po.NumMiniBatchesOpt = po.DEFAULT_NUM_MINI_BATCHES
    rollout_batch: po.RolloutBatchOpt = po.DEFAULT_ROLLOUT_BATCH
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


def parse_zero(value: int) -> int:
    if value not in (0, 1, 2, 3):
        raise PlannerError(f"--zero must be 0, 1, 2 or 3, got {value}.")
    return value


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
    precision = _enum(Precision, f.precision, "--precision")
    zero = 0 if f.zero is None else parse_zero(f.zero)
    offload = Offload.NONE if f.offload is None else parse_offload(f.offload)
    return TrainSpec(
        precision=precision,
        optimizer=_enum(Optimizer, f.optimizer, "--optimizer"),
        lora=LoraSpec(
            rank=f.lora_rank,
            alpha=f.lora_alpha,
            dropout=lora_dropout,
            targets=parse_targets(f.lora_targets),
            modules_to_save=parse_modules(f.modules_to_save),
        ),
        quant=QuantSpec(quant_type=_enum(QuantType, f.quant_type, "--quant-type"), double_quant=f.double_quant),
        **_layout(method, zero, offload, f.zero_config, fsdp_options.fsdp_layout(f, precision, zero, offload),
                  deepspeed_stage0=zero == 0 and fsdp_options.parse_engine(f.engine) is Engine.DEEPSPEED),
        micro_batch=f.micro_batch,
        seq_len=seq_len,
        grad_accum=f.grad_accum,
        grad_checkpointing=bool(f.grad_checkpointing),
        activation_offload=bool(f.activation_offload),
        optimizer_in_backward=bool(f.optimizer_in_backward),
        attn_impl=AttnImpl.SDPA if f.attn is None else parse_attn(f.attn),
        dropout=f.dropout,
        lora_dtype=_enum(PeftDtype, f.lora_dtype, "--lora-dtype"),
        qlora_prep=_enum(PeftDtype, f.qlora_prep, "--qlora-prep"),
        loss=LossSpec.from_flags(f.loss, f.loss_chunks),
        task=TaskSpec.from_flags(f.task, f.reference, go.grpo_spec(f), po.ppo_spec(f)),
        compile=bool(f.compile),
        packing=bool(f.packing),
        selective_ac=f.selective_ac.strip().lower(),
    )


def _layout(method: Method, zero: int, offload: Offload, zero_config: ZeroConfig | None = None,
            fsdp: FsdpConfig | None = None, deepspeed_stage0: bool = False) -> dict:
    """The one place the CLI writes a parallelism into a TrainSpec: a ZeRO stage and offload (DeepSpeed's buckets
    kept at stages 1-3; ``deepspeed_stage0``: stage 0 on DeepSpeed's engine, ``--engine deepspeed --zero 0``), or
    with ``fsdp`` FSDP2 with those settings (``fsdp_options``)."""
    if fsdp is not None:
        return {"method": method, "parallelism": Parallelism.fsdp2(fsdp)}
    return {"method": method, "parallelism": Parallelism.from_zero(zero, offload, zero_config,
                                                                   deepspeed_stage0=deepspeed_stage0)}


def with_layout(train: TrainSpec, method: Method, zero: int, offload: Offload,
                fsdp: FsdpConfig | None = None) -> TrainSpec:
    """``train`` with this method and layout, keeping its DeepSpeed buckets, and DeepSpeed's engine at stage 0
    when ``train`` runs it (invalid: the spec's PlannerError)."""
    stage0 = zero == 0 and train.uses_deepspeed and train.zero_stage == 0
    return dataclasses.replace(train, **_layout(method, zero, offload, train.parallelism.zero_config, fsdp,
                                                deepspeed_stage0=stage0))


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
