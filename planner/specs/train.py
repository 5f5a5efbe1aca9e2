"""How it is trained: TrainSpec (with its LoRA, 4-bit and parallelism parts), validated as a whole, and its
JSON form (the `train` block)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from planner.errors import PlannerError
from planner.specs.enums import AttnImpl, Method, Offload, Optimizer, PeftDtype, Precision, QuantType
from planner.specs.loss import LossSpec
from planner.specs.parallelism import Parallelism, ZeroConfig


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
    # LoRA adapters in fp32 (peft's autocast_adapter_dtype) or the compute dtype; QLoRA's unquantized parameters
    # in fp32 (peft's prepare_model_for_kbit_training) or the compute dtype (estimate/peft_dtypes.py).
    lora_dtype: PeftDtype = PeftDtype.FP32
    qlora_prep: PeftDtype = PeftDtype.FP32
    # Saved activations copied to host RAM in forward and back in backward (torch.autograd.graph.save_on_cpu)
    activation_offload: bool = False
    loss: LossSpec = field(default_factory=LossSpec)
    # The model wrapped in torch.compile (inductor), as the HF Trainer's torch_compile=True does through accelerate
    # (Accelerator.prepare_model: torch.compile(model, backend="inductor"); DeepSpeed: engine.compile). The estimate
    # keeps eager's activations, an upper bound without checkpointing and not with it (estimate/compile_note.py).
    compile: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.loss, LossSpec):
            raise PlannerError(f"loss must be a LossSpec, got {self.loss!r}.")
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
        if self.method is not Method.FULL and self.lora_dtype is PeftDtype.BIT16:
            if self.precision is Precision.FP32:
                raise PlannerError("--lora-dtype 16bit keeps the adapters in the model's 16-bit dtype, and --precision "
                                   "fp32 has none; use --lora-dtype fp32 or a 16-bit --precision.")
            if self.precision is Precision.FP16_MIXED and not self.parallelism.uses_deepspeed:
                raise PlannerError("--lora-dtype 16bit with --precision fp16-mixed trains fp16 adapters, whose "
                                   "gradients torch's GradScaler refuses to unscale (the HF Trainer's fp16 path); "
                                   "use bf16-mixed or --lora-dtype fp32.")
        # DeepSpeed wraps a client optimizer and hands it its flat 1-D fp32 partitions: bitsandbytes' block layout
        # and Adafactor's factored moment (>= 2-D only) would follow those, which planner has not profiled
        # (planner/estimate/optim_rules.py models each on the model's own tensors).
        if self.activation_offload and self.method is Method.QLORA:
            raise PlannerError(
                "--activation-offload is not modelled with QLoRA: which tensors bitsandbytes' 4-bit matmul saves "
                "through autograd (and so copies to the host) is not written down yet; use full or LoRA."
            )
        if self.optimizer in (Optimizer.ADAMW_8BIT, Optimizer.PAGED_ADAMW_8BIT, Optimizer.PAGED_ADAMW) and (
            self.parallelism.uses_deepspeed
        ):
            raise PlannerError(
                f"optimizer {self.optimizer.value!r} is a bitsandbytes optimizer and cannot be combined with "
                f"DeepSpeed ZeRO stage {self.zero_stage}; use adamw or adamw-fused."
            )
        if self.optimizer is Optimizer.ADAFACTOR and self.parallelism.uses_deepspeed:
            raise PlannerError(
                f"optimizer 'adafactor' with DeepSpeed ZeRO stage {self.zero_stage} is not modelled (DeepSpeed steps "
                "flat 1-D partitions, so its second moment would not be factored); use adamw or adamw-fused."
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
        # DeepSpeed's buckets and thresholds, only when a --deepspeed-config set them (absent: "auto")
        **({} if train.parallelism.zero_config.is_default else {"zero_config": train.parallelism.zero_config.to_dict()}),
        "micro_batch": train.micro_batch,
        "seq_len": train.seq_len,
        "grad_accum": train.grad_accum,
        "grad_checkpointing": train.grad_checkpointing,
        "attn_impl": train.attn_impl.value,
        "dropout": train.dropout,
        "lora_dtype": train.lora_dtype.value,
        "qlora_prep": train.qlora_prep.value,
        "activation_offload": train.activation_offload,
        "loss": train.loss.to_dict(),
        "compile": train.compile,
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
            parallelism=Parallelism.from_zero(int(d["zero_stage"]), Offload(d.get("offload", "none")),
                                              ZeroConfig.from_dict(d.get("zero_config") or {})),
            micro_batch=int(d["micro_batch"]),
            seq_len=int(d["seq_len"]),
            grad_accum=int(d.get("grad_accum", 1)),
            grad_checkpointing=bool(d.get("grad_checkpointing", False)),
            attn_impl=AttnImpl(d.get("attn_impl", "sdpa")),
            dropout=d.get("dropout"),
            lora_dtype=PeftDtype(d.get("lora_dtype", "fp32")),
            qlora_prep=PeftDtype(d.get("qlora_prep", "fp32")),
            activation_offload=bool(d.get("activation_offload", False)),
            loss=LossSpec.from_dict(d.get("loss")),
            compile=bool(d.get("compile", False)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PlannerError(f"the training specification is malformed ({type(exc).__name__}: {exc}).") from None
