"""The loss recipe: how the output head and the cross-entropy are computed (LossSpec, validated here).

``standard``: transformers' ``ForCausalLMLoss`` on the full [b, s, V] logits, upcast to fp32 (the default).
``chunked-ce``: torchtune's ``CEWithChunkedOutputLoss`` (torchtune/modules/loss/ce_chunked_output_loss.py), with
the output projection applied per chunk of the sequence as torchtune's ``TransformerDecoder.chunked_output`` does:
each chunk's logits are upcast to fp32 on their own (``chunks``: torchtune's ``num_output_chunks``, default 8).
``fused-linear-ce``: Liger's ``LigerFusedLinearCrossEntropyLoss`` (liger_kernel/ops/fused_linear_cross_entropy.py),
the projection and the loss fused so that the [tokens, V] logits never exist: Triton kernels, GPU only.
``trl-fused-lm-head``: TRL 1.16's SFTTrainer loss (``loss_type="nll"``, its default): ``add_fused_lm_head``
(trl/trainer/utils.py) projects the final hidden states through lm_head in tiles of at most 4096 tokens x 32768
vocabulary entries (trl/kernels/chunked_logprob.py ``ChunkedLogProbFunction``), never the full logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from planner.errors import PlannerError

# torchtune's default: CEWithChunkedOutputLoss(num_output_chunks=8), and its recipes' set_num_output_chunks.
DEFAULT_LOSS_CHUNKS = 8


LOSS_HELP = ("Loss recipe: standard (transformers' loss on the full [tokens, vocab] logits, upcast to fp32), "
             "chunked-ce (torchtune's CEWithChunkedOutputLoss: projection and fp32 upcast per chunk) or "
             "fused-linear-ce (Liger's fused linear cross-entropy: the logits never exist; GPU only, modelled from "
             "its source) or trl-fused-lm-head (TRL's SFTTrainer loss_type nll: lm_head in tiles of 4096 tokens x "
             "32768 vocabulary entries). Default: standard.")
LOSS_CHUNKS_HELP = f"chunked-ce: chunks of the sequence (torchtune's num_output_chunks). Default: {DEFAULT_LOSS_CHUNKS}."


class Loss(str, Enum):
    STANDARD = "standard"
    CHUNKED_CE = "chunked-ce"
    FUSED_LINEAR_CE = "fused-linear-ce"
    TRL_FUSED_LM_HEAD = "trl-fused-lm-head"


@dataclass(frozen=True)
class LossSpec:
    kind: Loss = Loss.STANDARD
    # chunked-ce: how many chunks the sequence is cut into (torch.chunk along the sequence: ceil(s / chunks)
    # tokens each, so a short sequence may give fewer chunks). Ignored by the other losses.
    chunks: int = DEFAULT_LOSS_CHUNKS

    def __post_init__(self) -> None:
        if not isinstance(self.kind, Loss):
            raise PlannerError(f"loss must be one of {', '.join(k.value for k in Loss)}, got {self.kind!r}.")
        if isinstance(self.chunks, bool) or not isinstance(self.chunks, int) or self.chunks < 1:
            raise PlannerError(f"--loss-chunks must be a whole number of at least 1, got {self.chunks!r}.")

    @property
    def label(self) -> str:
        if self.kind is Loss.CHUNKED_CE:
            return f"chunked-ce x{self.chunks}"
        return self.kind.value

    def to_dict(self) -> dict:
        return {"kind": self.kind.value, "chunks": self.chunks}

    @classmethod
    def from_flags(cls, kind: str, chunks: int) -> LossSpec:
        """``--loss`` and ``--loss-chunks`` as typed; an unknown recipe is a PlannerError naming the flag."""
        try:
            loss = Loss(kind.lower())
        except ValueError:
            raise PlannerError(f"--loss {kind!r} is not valid; choose one of "
                               f"{', '.join(k.value for k in Loss)}.") from None
        return cls(loss, chunks)

    @classmethod
    def from_dict(cls, d: dict | None) -> LossSpec:
        """The JSON ``train.loss`` block; absent (a plan written before the loss was a knob): the standard loss."""
        if d is None:
            return cls()
        try:
            return cls(kind=Loss(d.get("kind", "standard")), chunks=int(d.get("chunks", DEFAULT_LOSS_CHUNKS)))
        except ValueError:
            raise PlannerError(f"the training specification's loss is malformed: {d!r}.") from None
