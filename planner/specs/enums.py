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
