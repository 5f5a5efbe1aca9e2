"""Frozen specifications: what is trained (ModelSpec), how (TrainSpec), on what (GpuSpec, Cluster).

Every spec validates itself at construction and raises PlannerError with the offending values.
Memory is int bytes; counts start with ``num_``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from planner.config_fields import MAX_GPUS, MAX_HIDDEN, MAX_LAYERS, MAX_VOCAB
from planner.errors import PlannerError


class Method(str, Enum):
    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"


class Precision(str, Enum):
    """Training precision.

    ``bf16-mixed``/``fp16-mixed``: 16-bit weights and gradients for compute, fp32 master weights in the
    optimizer (the ZeRO paper's mixed-precision recipe). ``bf16``: pure bf16, no master copy.
    ``fp32``: everything in fp32.
    """

    BF16_MIXED = "bf16-mixed"
    FP16_MIXED = "fp16-mixed"
    BF16 = "bf16"
    FP32 = "fp32"

    @property
    def compute_dtype(self) -> str:
        return {"bf16-mixed": "bf16", "fp16-mixed": "fp16", "bf16": "bf16", "fp32": "fp32"}[self.value]

    @property
    def has_master_weights(self) -> bool:
        return self in (Precision.BF16_MIXED, Precision.FP16_MIXED)


class Optimizer(str, Enum):
    ADAMW = "adamw"  # torch.optim.AdamW, foreach (CUDA's default implementation)
    ADAMW_FUSED = "adamw-fused"  # torch.optim.AdamW(fused=True): the HF Trainer's "adamw_torch_fused"
    ADAMW_8BIT = "adamw-8bit"
    PAGED_ADAMW = "paged-adamw"
    PAGED_ADAMW_8BIT = "paged-adamw-8bit"
    SGD = "sgd"
    ADAFACTOR = "adafactor"


class Offload(str, Enum):
    NONE = "none"
    OPTIMIZER = "optimizer"
    OPTIMIZER_PARAMS = "optimizer+params"


class Engine(str, Enum):
    """What runs data parallelism and decides how each rank's states are divided.

    ``ddp``: torch DistributedDataParallel, or one process (the transformers Trainer without DeepSpeed or
    FSDP): every rank holds every state. ``deepspeed``: DeepSpeed ZeRO stage 1-3, optionally with CPU offload.
    A new engine (FSDP2's ``fully_shard``, tensor or context parallelism) is a new member here, its rules a
    module beside ``estimate/sharding.py`` (ARCHITECTURE.md, "A parallelism").
    """

    DDP = "ddp"
    DEEPSPEED = "deepspeed"


@dataclass(frozen=True)
class Parallelism:
    """How the ranks share the work: the engine, DeepSpeed's ZeRO stage and what it offloads to the host.

    ``from_zero(stage, offload)`` is the CLI's ``--zero``/``--offload``: stage 0 is plain data parallelism
    (no DeepSpeed), stages 1-3 are DeepSpeed ZeRO. The one place these combinations are validated.
    """

    engine: Engine = Engine.DDP
    zero_stage: int = 0
    offload: Offload = Offload.NONE

    def __post_init__(self) -> None:
        if not isinstance(self.engine, Engine):
            raise PlannerError(f"unknown parallelism engine {self.engine!r}; use one of "
                               f"{', '.join(e.value for e in Engine)}.")
        if self.zero_stage not in (0, 1, 2, 3):
            raise PlannerError(f"ZeRO stage must be 0, 1, 2 or 3, got {self.zero_stage}.")
        if self.engine is Engine.DDP and self.zero_stage != 0:
            raise PlannerError(f"ZeRO stage {self.zero_stage} is DeepSpeed's; plain data parallelism has stage 0.")
        if self.engine is Engine.DEEPSPEED and self.zero_stage == 0:
            raise PlannerError("DeepSpeed at ZeRO stage 0 is not modelled; use stage 1, 2 or 3, or plain data "
                               "parallelism.")
        if self.offload is not Offload.NONE and self.zero_stage == 0:
            raise PlannerError(f"offload {self.offload.value!r} needs ZeRO stage 1, 2 or 3, not stage 0.")
        if self.offload is Offload.OPTIMIZER_PARAMS and self.zero_stage != 3:
            raise PlannerError(
                f"offload 'optimizer+params' needs ZeRO stage 3 (parameter offload), not stage {self.zero_stage}."
            )

    @classmethod
    def from_zero(cls, zero_stage: int, offload: Offload = Offload.NONE) -> Parallelism:
        """``--zero``/``--offload`` as a spec: stage 0 is plain data parallelism, 1-3 DeepSpeed ZeRO."""
        engine = Engine.DDP if zero_stage == 0 else Engine.DEEPSPEED
        return cls(engine=engine, zero_stage=zero_stage, offload=offload)

    @property
    def uses_deepspeed(self) -> bool:
        return self.engine is Engine.DEEPSPEED

    @property
    def label(self) -> str:
        """``ZeRO-2, offload optimizer`` / ``DDP``: how a table or a plan names it."""
        if self.engine is Engine.DDP:
            return "ZeRO-0"
        off = "" if self.offload is Offload.NONE else f", offload {self.offload.value}"
        return f"ZeRO-{self.zero_stage}{off}"


class AttnImpl(str, Enum):
    EAGER = "eager"
    SDPA = "sdpa"
    FLASH_ATTENTION_2 = "flash_attention_2"


class QuantType(str, Enum):
    NF4 = "nf4"
    FP4 = "fp4"


# ---------------------------------------------------------------- model



def validate_margin(margin: float) -> None:
    """The safety margin: the share of GPU memory kept free, in [0, 1) (NaN refused). The one check of it."""
    if not 0.0 <= margin < 1.0:
        raise PlannerError(f"--margin must be in [0, 1), got {margin}.")

@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only causal LM, described by its Hugging Face config.

    The common shape fields are normalised here; family-specific details stay in ``config`` (the raw
    config.json as a dict) and are read by the estimator module that needs them.
    """

    name: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    num_experts: int = 0
    num_experts_per_tok: int = 0
    source: str = "catalog"
    config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        for attr in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "vocab_size"):
            value = getattr(self, attr)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PlannerError(f"model {self.name!r}: {attr} must be a positive integer, got {value!r}.")
        if self.num_heads % self.num_kv_heads:
            raise PlannerError(
                f"model {self.name!r}: num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})."
            )
        if self.num_layers > MAX_LAYERS or self.hidden_size > MAX_HIDDEN or self.vocab_size > MAX_VOCAB:
            # the limits and why: planner/config_fields.py
            raise PlannerError(
                f"model {self.name!r}: sizes are beyond any real model (layers {self.num_layers:,}, "
                f"hidden {self.hidden_size:,}, vocabulary {self.vocab_size:,}; planner takes at most "
                f"{MAX_LAYERS:,} layers, hidden size {MAX_HIDDEN:,} and a vocabulary of {MAX_VOCAB:,})."
            )

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def config_json(self) -> str:
        return json.dumps(self.config, sort_keys=True)


# ---------------------------------------------------------------- training


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters (Hu et al. 2021). ``targets`` is ``("all-linear",)`` or module leaf names."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: tuple[str, ...] = ("all-linear",)
    modules_to_save: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise PlannerError(f"LoRA rank must be at least 1, got {self.rank}.")
        if self.alpha <= 0:
            raise PlannerError(f"--lora-alpha must be positive (the adapter scale is alpha / rank), got {self.alpha}.")
        if not 0.0 <= self.dropout < 1.0:
            raise PlannerError(f"LoRA dropout must be in [0, 1), got {self.dropout}.")
        if not self.targets:
            raise PlannerError("LoRA targets must name at least one module, or be 'all-linear'.")

    @property
    def all_linear(self) -> bool:
        return "all-linear" in self.targets


@dataclass(frozen=True)
class QuantSpec:
    """bitsandbytes 4-bit quantization of the frozen base (QLoRA, Dettmers et al. 2023)."""

    quant_type: QuantType = QuantType.NF4
    double_quant: bool = True
    blocksize: int = 64


@dataclass(frozen=True)
class TrainSpec:
    method: Method = Method.FULL
    precision: Precision = Precision.BF16_MIXED
    optimizer: Optimizer = Optimizer.ADAMW
    lora: LoraSpec = field(default_factory=LoraSpec)
    quant: QuantSpec = field(default_factory=QuantSpec)
    parallelism: Parallelism = field(default_factory=Parallelism)
    micro_batch: int = 1
    seq_len: int = 2048
    grad_accum: int = 1
    grad_checkpointing: bool = False
    attn_impl: AttnImpl = AttnImpl.SDPA
    # None: use the model config's own dropout probabilities.
    dropout: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.parallelism, Parallelism):
            raise PlannerError(f"parallelism must be a Parallelism spec, got {self.parallelism!r}.")
        if self.micro_batch < 1:
            raise PlannerError(f"micro-batch must be at least 1, got {self.micro_batch}.")
        if self.seq_len < 1:
            raise PlannerError(f"sequence length must be at least 1, got {self.seq_len}.")
        if self.grad_accum < 1:
            raise PlannerError(f"gradient accumulation must be at least 1, got {self.grad_accum}.")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise PlannerError(f"dropout must be in [0, 1), got {self.dropout}.")
        if self.method is Method.QLORA and self.zero_stage == 3:
            raise PlannerError("QLoRA with ZeRO stage 3 is not supported: bitsandbytes 4-bit weights cannot be sharded by this planner; use stage 0-2.")
        if self.method is Method.QLORA and self.precision is Precision.FP32:
            raise PlannerError("QLoRA needs a 16-bit compute dtype; use --precision bf16-mixed or fp16-mixed.")
        if self.optimizer in (Optimizer.ADAMW_8BIT, Optimizer.PAGED_ADAMW_8BIT, Optimizer.PAGED_ADAMW) and (
            self.parallelism.uses_deepspeed
        ):
            raise PlannerError(
                f"optimizer {self.optimizer.value!r} is a bitsandbytes optimizer and cannot be combined with "
                f"DeepSpeed ZeRO stage {self.zero_stage}; use adamw, sgd or adafactor."
            )

    @property
    def zero_stage(self) -> int:
        """DeepSpeed's ZeRO stage (0 without DeepSpeed): how far states are sharded."""
        return self.parallelism.zero_stage

    @property
    def offload(self) -> Offload:
        return self.parallelism.offload

    @property
    def uses_deepspeed(self) -> bool:
        return self.parallelism.uses_deepspeed

    @property
    def num_tokens_per_micro_batch(self) -> int:
        return self.micro_batch * self.seq_len


# ---------------------------------------------------------------- hardware


@dataclass(frozen=True)
class GpuSpec:
    name: str
    vendor: str
    memory_bytes: int
    memory_bandwidth_bytes_per_s: int
    bf16_dense_flops: int
    fp16_dense_flops: int
    supports_bf16: bool
    # Per-GPU unidirectional bandwidth between GPUs of one node (NVLink/Infinity Fabric or PCIe).
    intra_node_bytes_per_s: int
    # Host-device bandwidth, unidirectional (PCIe).
    host_bytes_per_s: int
    memory_stated: str = ""
    unconfirmed: bool = False
    # An indicative on-demand list price in USD per GPU-hour (None: the catalog has none), the date it was
    # read and where (planner/catalog/gpus.json). --price-per-gpu-hour overrides it.
    price_per_gpu_hour_usd: float | None = None
    price_date: str = ""
    price_source: str = ""
    # What a CUDA (ROCm) process sees as the device's total (cudaMemGetInfo, torch's total_memory), below the
    # nominal memory_bytes (driver, ECC and firmware reservations); None: not known, the nominal size stands in.
    # Where the figure comes from: planner/catalog/gpus.json (usable_memory_source).
    usable_memory_bytes: int | None = None
    usable_memory_source: str = ""

    @property
    def capacity_bytes(self) -> int:
        """The memory ``fits`` compares against (before the margin): the CUDA-visible total where known."""
        return self.usable_memory_bytes or self.memory_bytes

    def dense_flops(self, dtype: str) -> int:
        if dtype == "fp16":
            return self.fp16_dense_flops
        if dtype == "bf16":
            return self.bf16_dense_flops
        # fp32 matmuls run as TF32 on tensor cores at about half the 16-bit rate (vendor datasheets).
        return self.bf16_dense_flops // 2


@dataclass(frozen=True)
class Cluster:
    gpu: GpuSpec
    num_gpus: int = 1
    num_nodes: int = 1
    # Inter-node bandwidth per node, unidirectional (default: 8 x 400 Gb/s InfiniBand, a common H100 fabric).
    inter_node_bytes_per_s: int = 400_000_000_000
    # Host RAM per node for offloaded states and pinned buffers (--host-ram); None: not known, not checked.
    host_memory_bytes_per_node: int | None = None

    def __post_init__(self) -> None:
        if self.host_memory_bytes_per_node is not None and self.host_memory_bytes_per_node < 0:
            raise PlannerError(f"--host-ram must not be negative, got {self.host_memory_bytes_per_node} bytes.")
        if self.num_gpus < 1:
            raise PlannerError(f"--gpus must be at least 1, got {self.num_gpus}.")
        if self.num_gpus > MAX_GPUS:  # planner/config_fields.py says why
            raise PlannerError(f"--gpus must be at most {MAX_GPUS:,} (beyond any GPU cluster), got {self.num_gpus:,}.")
        if self.num_nodes < 1:
            raise PlannerError(f"--nodes must be at least 1, got {self.num_nodes}.")
        if self.num_gpus % self.num_nodes:
            raise PlannerError(
                f"--gpus ({self.num_gpus}) must be divisible by --nodes ({self.num_nodes}) so every node has the same number of GPUs."
            )

    @property
    def num_gpus_per_node(self) -> int:
        return self.num_gpus // self.num_nodes


# ---------------------------------------------------------------- (de)serialisation


def train_spec_to_dict(train: TrainSpec) -> dict[str, Any]:
    """A JSON-ready dict of every TrainSpec field (enums as their values)."""
    return {
        "method": train.method.value,
        "precision": train.precision.value,
        "optimizer": train.optimizer.value,
        "lora": {
            "rank": train.lora.rank,
            "alpha": train.lora.alpha,
            "dropout": train.lora.dropout,
            "targets": list(train.lora.targets),
            "modules_to_save": list(train.lora.modules_to_save),
        },
        "quant": {
            "quant_type": train.quant.quant_type.value,
            "double_quant": train.quant.double_quant,
            "blocksize": train.quant.blocksize,
        },
        "zero_stage": train.zero_stage,
        "offload": train.offload.value,
        "micro_batch": train.micro_batch,
        "seq_len": train.seq_len,
        "grad_accum": train.grad_accum,
        "grad_checkpointing": train.grad_checkpointing,
        "attn_impl": train.attn_impl.value,
        "dropout": train.dropout,
    }


def train_spec_from_dict(d: dict[str, Any]) -> TrainSpec:
    """Inverse of train_spec_to_dict; raises PlannerError on a malformed dict."""
    try:
        lora = d.get("lora", {})
        quant = d.get("quant", {})
        return TrainSpec(
            method=Method(d["method"]),
            precision=Precision(d["precision"]),
            optimizer=Optimizer(d["optimizer"]),
            lora=LoraSpec(
                rank=int(lora.get("rank", 16)),
                alpha=int(lora.get("alpha", 32)),
                dropout=float(lora.get("dropout", 0.05)),
                targets=tuple(lora.get("targets", ["all-linear"])),
                modules_to_save=tuple(lora.get("modules_to_save", [])),
            ),
            quant=QuantSpec(
                quant_type=QuantType(quant.get("quant_type", "nf4")),
                double_quant=bool(quant.get("double_quant", True)),
                blocksize=int(quant.get("blocksize", 64)),
            ),
            parallelism=Parallelism.from_zero(int(d["zero_stage"]), Offload(d.get("offload", "none"))),
            micro_batch=int(d["micro_batch"]),
            seq_len=int(d["seq_len"]),
            grad_accum=int(d.get("grad_accum", 1)),
            grad_checkpointing=bool(d.get("grad_checkpointing", False)),
            attn_impl=AttnImpl(d.get("attn_impl", "sdpa")),
            dropout=d.get("dropout"),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PlannerError(f"the training specification is malformed ({type(exc).__name__}: {exc}).") from None


@dataclass(frozen=True)
class Plan:
    """One complete training configuration: what to emit and run."""

    model: ModelSpec
    train: TrainSpec  # micro_batch, grad_accum, zero_stage, offload, checkpointing, attn_impl, method, ...
    cluster: Cluster
    global_batch_size: int  # sequences per optimizer step = micro_batch x grad_accum x num_gpus

    @property
    def num_data_parallel(self) -> int:
        return self.cluster.num_gpus

    @property
    def micro_batch(self) -> int:
        return self.train.micro_batch

    @property
    def grad_accum(self) -> int:
        return self.train.grad_accum

    def label(self) -> str:
        t = self.train
        offload = "" if t.offload is Offload.NONE else f", offload {t.offload.value}"
        return (
            f"{t.method.value}, ZeRO-{t.zero_stage}{offload}, micro-batch {t.micro_batch} x accumulation "
            f"{t.grad_accum} x {self.cluster.num_gpus} GPUs, checkpointing {'on' if t.grad_checkpointing else 'off'}, "
            f"{t.attn_impl.value}"
        )

    def to_dict(self) -> dict:
        return {
            "model": self.model.name,
            "gpu": self.cluster.gpu.name,
            "num_gpus": self.cluster.num_gpus,
            "num_nodes": self.cluster.num_nodes,
            "global_batch_size": self.global_batch_size,
            "train": train_spec_to_dict(self.train),
        }
