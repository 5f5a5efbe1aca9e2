"""TRL 1.16's fused LM head (``--loss trl-fused-lm-head``): what SFTTrainer's default loss allocates, on the tape.

``SFTTrainer.__init__`` (trl/trainer/sft_trainer.py) calls ``add_fused_lm_head(model, outputs=("log_probs",
"entropy", "is_top1"))`` (trl/trainer/utils.py) and ``compute_loss`` runs ``model(**inputs, fused_lm_head=True)``
for ``loss_type="nll"`` (the default). ``_fused_forward`` runs the backbone, takes
``last_hidden_state[:, :-1]`` and ``labels[:, 1:]`` (views), ``mask = labels != -100``, and calls
``_ChunkedLogProbFunction.apply`` (trl/kernels/chunked_logprob.py ``ChunkedLogProbFunction``) on
``hidden_states[mask]``/``labels[mask]`` where Triton runs (CUDA, XPU: ``compact``) and elsewhere on
``hidden_states.reshape(-1, H)`` (a copy when b > 1: the slice is not contiguous) and
``labels.clamp(min=0).reshape(-1)``, with ``chunk_size = _CHUNKED_LOGPROB_CHUNK_SIZE = 32768``.

``ChunkedLogProbFunction.forward`` allocates seven fp32 [N] statistics and ``mm_buf = torch.empty((min(N,
TOKEN_CHUNK_SIZE), chunk_size))`` in the compute dtype -- the full 32768 columns even for a smaller vocabulary --
and for every tile of at most 4096 tokens x 32768 vocabulary entries writes ``hidden_chunk @ w_chunk.T`` into it
and folds it: a Triton kernel in registers, or on other devices ``_forward_tile``'s torch ops (below). It saves
``hidden, weight, targets, log_z, entropy`` and returns log_probs, entropy and is_top1 ([N] each).
``backward`` allocates fp32 ``grad_hidden`` [N, H] and ``grad_weight`` [V, H] (when they need gradients) and a
second ``mm_buf``, recomputes every tile and turns it into the logits' gradient in place (``_backward_tile``'s
torch ops off Triton), accumulating both matmuls into the fp32 gradients (``_addmm_fp32``: ``a.float()`` and
``b.float()`` copies unless the CUDA ``out_dtype`` addmm applies), and returns them cast to the inputs' dtypes.
``_fused_forward`` masks each per-token output (``x.view(mask.shape).masked_fill(~mask, 0)``; on Triton devices
``new_zeros(...).masked_scatter(mask, x)``); ``compute_loss`` takes ``(-log_probs).sum() / num_tokens`` and drops
the outputs when it returns.

This module writes only what SFTTrainer's caller does around the kernel; ``ChunkedLogProbFunction`` itself (forward,
tiles, backward) is trl_head.chunked_logprob, shared with DPO/GRPO's scoring.
"""

from __future__ import annotations

from planner.errors import PlannerError
from planner.estimate.step import trl_head
from planner.estimate.step.tape import Fake, Tape
from planner.estimate.step.trl_head import TOKEN_CHUNK_SIZE, VOCAB_CHUNK_SIZE, tiles  # noqa: F401 (re-exported)

# SFTTrainer.__init__: add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
SFT_OUTPUTS = ("log_probs", "entropy", "is_top1")

TRL_NOTE = ("--loss trl-fused-lm-head: TRL's fused LM head (SFTTrainer loss_type nll) projects lm_head in tiles of "
            f"at most {TOKEN_CHUNK_SIZE} tokens x {VOCAB_CHUNK_SIZE} vocabulary entries into a "
            f"[min(tokens, {TOKEN_CHUNK_SIZE}), {VOCAB_CHUNK_SIZE}] buffer, in forward and again in backward, beside "
            "fp32 lm_head and hidden-state gradients; the CUDA path (Triton kernels) is modelled from TRL's source, "
            "the CPU path is measured.")


def is_linear_in_micro_batch(micro_batches: tuple[int, ...], seq_len: int) -> bool:
    """Every tensor is linear in the micro-batch while one token tile holds all b * (s - 1) tokens."""
    return max(micro_batches) * (seq_len - 1) <= TOKEN_CHUNK_SIZE


def fused_lm_head(t: Tape, fam, hidden: Fake, ids: Fake) -> Fake:
    """``model(**inputs, fused_lm_head=True)`` and SFTTrainer.compute_loss's nll; returns the loss."""
    lin = fam.lm_head
    if lin.lora_a is not None or lin.quant or lin.bias is not None:
        raise PlannerError("--loss trl-fused-lm-head passes lm_head.weight to TRL's kernel directly: a LoRA adapter, "
                           "4-bit weight or bias on lm_head is not modelled; leave lm_head out of the targets.")
    b, s, h = hidden.shape
    num = b * (s - 1)
    cdt = hidden.dtype  # no autocast in the simulated step: the compute dtype is the hidden states'
    compact = t.device != "cpu"  # _use_triton: CUDA (and XPU)
    # last_hidden_state[:, :-1]: a view; SliceBackward0 allocates a zero [b, s, h] gradient and copies into it
    sliced = t.op("slice", [hidden], [((b, s - 1, h), cdt)], [], alias=hidden.st)[0]
    del hidden
    mask = t.new((b, s - 1), "bool")  # labels != -100
    if compact:
        # hidden_states[mask]: index saves the mask's nonzero indices ([N, 2] int64); labels[mask]
        indices = t.new((num, 2), "int64")
        x = t.op("index", [sliced], [((num, h), cdt)], [indices])[0]
        del indices
    elif b > 1:  # reshape(-1, H) of a slice across the batch copies (clone + _unsafe_view)
        x = t.op("clone", [sliced], [((num, h), cdt)], [], _passthrough)[0]
    else:
        x = t.view(sliced, (num, h))
    del sliced
    targets = t.new((num,), "int64")  # labels[mask] / labels.clamp(min=0).reshape(-1)
    log_probs, entropy, top1_raw = trl_head.chunked_logprob(t, lin.w, x, targets, list(SFT_OUTPUTS), cdt, compact)
    del x, targets, top1_raw  # is_top1 is dropped by the masking below at once
    # _fused_forward: each requested per-token output masked to [b, s - 1]; the originals not saved are dropped
    log_probs = _mask_output(t, log_probs, (b, s - 1), compact)
    entropy_out = [t.new((b, s - 1), "fp32"), t.new((b, s - 1), "bool")]  # entropy (its node keeps ~mask)
    top1 = [t.new((b, s - 1), "bool")]  # is_top1 (no gradient)
    del entropy
    # _fused_forward's own loss: -log_probs.sum() / mask.sum().clamp(min=1) (unused by SFTTrainer)
    neg = t.new((b, s - 1), "fp32")
    del neg
    own_loss = t.new((), "fp32")
    # SFTTrainer.compute_loss: per_token_loss = -outputs.log_probs; loss = per_token_loss.sum() / num_tokens
    per_token = t.op("neg", [log_probs], [((b, s - 1), "fp32")], [])[0]
    total = t.op("sum", [per_token], [((), "fp32")], [], _passthrough)[0]
    num_tokens = t.new((), "int64")
    loss = t.op("div", [total, num_tokens], [((), "fp32")], [num_tokens])[0]
    # compute_loss returns: the outputs (masked log_probs, entropy, is_top1, label_mask, loss) are dropped
    del per_token, total, num_tokens, log_probs, entropy_out, top1, own_loss, mask
    return loss


def _mask_output(t: Tape, x: Fake, shape, compact: bool) -> Fake:
    """The per-token log-probabilities at [b, s - 1], zero on ignored labels."""
    if compact:
        # x.new_zeros(mask.shape).masked_scatter(mask, x): MaskedScatterBackward0 saves the mask
        zeros = t.new(shape, x.dtype)
        out = t.op("masked_scatter", [x], [(shape, x.dtype)], [t.new(shape, "bool")])[0]
        del zeros
        return out
    # x.view(mask.shape).masked_fill(~mask, 0): MaskedFillBackward0 saves ~mask
    not_mask = t.new(shape, "bool")
    return t.op("masked_fill", [t.view(x, shape)], [(shape, x.dtype)], [not_mask])[0]


def _passthrough(tape: Tape, node, grads_out):
    """CloneBackward0 / SumBackward0 (an expand): the incoming gradient is handed on."""
    return [grads_out[0]]
