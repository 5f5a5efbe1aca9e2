"""The choices a training run makes, as enums: method, precision, optimizer, offload, attention, 4-bit type;
and the safety margin's one check."""

from __future__ import annotations

from enum import Enum

from planner.errors import PlannerError


class Method(str, Enum):
    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"


class Precision(str, Enum):
    """Training precision: what the weights are held in and what the matmuls compute in.

    ``bf16-mixed``/``fp16-mixed``: 16-bit weights and gradients, fp32 master weights in the optimizer (the ZeRO
    paper's mixed-precision recipe; DeepSpeed's bf16/fp16 sections). ``bf16-autocast``/``fp16-autocast``: fp32
    weights, gradients and optimizer states, the forward under ``torch.autocast`` (what the HF Trainer and
    accelerate do with ``bf16``/``fp16`` without DeepSpeed or FSDP; Lightning calls it ``bf16-mixed``/``16-mixed``).
    ``bf16``: pure bf16, no master copy (Lightning's ``bf16-true``). ``fp32``: everything in fp32 (``32-true``).
    ``bf16-base-autocast``: the usual HF LoRA recipe: the base loaded in bf16 (transformers 5 loads a checkpoint in
    its own dtype), peft's fp32 adapters, and the forward under bf16 ``torch.autocast`` (the Trainer's ``bf16=True``
    without DeepSpeed or FSDP), so each adapter's matmuls run in bf16 on cast copies (LoRA only).

    Lightning's ``bf16-mixed`` is planner's ``bf16-autocast``: planner's ``bf16-mixed`` kept the meaning it had
    (16-bit weights with fp32 masters), so no existing estimate or config changes meaning. ``_missing_``
    reads Lightning's other names (``32-true``, ``bf16-true``, ``16-mixed``) as aliases.
    """

    BF16_MIXED = "bf16-mixed"
    FP16_MIXED = "fp16-mixed"
    BF16_AUTOCAST = "bf16-autocast"
    FP16_AUTOCAST = "fp16-autocast"
    BF16 = "bf16"
    FP32 = "fp32"
    BF16_BASE_AUTOCAST = "bf16-base-autocast"

    @classmethod
    def _missing_(cls, value: object) -> Precision | None:
        return cls.__members__.get(PRECISION_ALIASES.get(str(value), ""))

    @property
    def compute_dtype(self) -> str:
        """The dtype the model's weights (and so its gradients) are held in: fp32 under autocast, whose matmuls
        run in ``autocast_dtype``."""
        return {"bf16-mixed": "bf16", "fp16-mixed": "fp16", "bf16": "bf16", "bf16-base-autocast": "bf16"}.get(
            self.value, "fp32")

    @property
    def autocast_dtype(self) -> str:
        """The dtype torch.autocast casts matmul operands to; "" without autocast."""
        return {"bf16-autocast": "bf16", "fp16-autocast": "fp16", "bf16-base-autocast": "bf16"}.get(self.value, "")

    @property
    def matmul_dtype(self) -> str:
        """The dtype the dense matmuls run in (the GPU's FLOP/s figure, bf16 support)."""
        return self.autocast_dtype or self.compute_dtype

    @property
    def has_master_weights(self) -> bool:
        return self in (Precision.BF16_MIXED, Precision.FP16_MIXED)


# Lightning's precision names (lightning/fabric/connector.py _PRECISION_INPUT) read as planner's members.
PRECISION_ALIASES = {"32-true": "FP32", "32": "FP32", "bf16-true": "BF16", "16-mixed": "FP16_AUTOCAST"}


class Optimizer(str, Enum):
    ADAMW = "adamw"  # torch.optim.AdamW, foreach (CUDA's default implementation)
    ADAMW_FUSED = "adamw-fused"  # torch.optim.AdamW(fused=True): the HF Trainer's "adamw_torch_fused"
    ADAMW_8BIT = "adamw-8bit"
    PAGED_ADAMW = "paged-adamw"
    PAGED_ADAMW_8BIT = "paged-adamw-8bit"
    SGD = "sgd"
    ADAFACTOR = "adafactor"


class PeftDtype(str, Enum):
    """The dtype of what peft adds or keeps beside a 16-bit base: LoRA adapters (``--lora-dtype``) and QLoRA's
    parameters that stay unquantized (``--qlora-prep``). ``fp32``: peft's defaults (``autocast_adapter_dtype=True``;
    ``prepare_model_for_kbit_training``'s upcast); ``16bit``: the model's compute dtype (torchtune, Unsloth)."""

    FP32 = "fp32"
    BIT16 = "16bit"


class Offload(str, Enum):
    NONE = "none"
    OPTIMIZER = "optimizer"
    OPTIMIZER_PARAMS = "optimizer+params"


class AttnImpl(str, Enum):
    EAGER = "eager"
    SDPA = "sdpa"
    FLASH_ATTENTION_2 = "flash_attention_2"


class QuantType(str, Enum):
    NF4 = "nf4"
    FP4 = "fp4"


def validate_margin(margin: float) -> None:
    """The safety margin: the share of GPU memory kept free, in [0, 1) (NaN refused). The one check of it."""
    if not 0.0 <= margin < 1.0:
        raise PlannerError(f"--margin must be in [0, 1), got {margin}.")
