"""The output head and the causal-LM loss, as transformers 5.23 and 5.24 compute them.

``LlamaForCausalLM.forward`` (and every *ForCausalLM here): ``logits = self.lm_head(hidden_states)`` in the
activation dtype, then ``self.loss_function`` = ``transformers/loss/loss_utils.py::ForCausalLMLoss``:

    logits = logits.float()                      # an fp32 copy of [b, s, V] when training in 16 bits
    labels = pad(labels, (0, 1), value=-100)     # labels are shifted, not the logits: no logits copy
    shift_labels = labels[..., 1:].contiguous()
    loss = F.cross_entropy(logits.view(-1, V), shift_labels.view(-1), ignore_index=-100, reduction="mean")

``cross_entropy`` is ``nll_loss(log_softmax(x))``: log_softmax saves its fp32 output (4 bytes x b x s x V) for
backward and nll_loss saves the targets. Backward: nll_loss_backward allocates an fp32 [b*s, V] gradient,
log_softmax_backward another, then the copy back to the logits dtype, then lm_head's matmuls. For a 16-bit
model the forward therefore peaks with logits (2) + fp32 copy (4) + log-probabilities (4) bytes per logit, and
the loss backward with log-probabilities + two fp32 gradients (12 bytes per logit) on top of every layer's
saved activations -- the spike that dominates for 128k-256k vocabularies (DESIGN.md section 3).

Gemma-2 first applies final-logit softcapping (``logits / cap``, ``tanh`` saving its output, ``* cap``).

The other loss recipes (``TrainSpec.loss``, specs/loss.py) are written in ``loss_recipes``: torchtune's chunked
cross-entropy and Liger's fused linear cross-entropy; TRL's fused LM head in ``trl_loss``.
"""

from __future__ import annotations

from typing import NamedTuple

from planner.errors import PlannerError
from planner.estimate.step import layers as ly
from planner.estimate.step import loss_recipes, ops, trl_loss
from planner.estimate.step.tape import Fake, Tape
from planner.specs.loss import Loss, LossSpec


class LossOutput(NamedTuple):
    loss: Fake
    logits_bytes: int  # the [b, s, V] logits in their dtype
    # ``keep_logits``: the logits, which the caller keeps (as it keeps the model's output object) through
    # backward; None otherwise
    held_logits: Fake | None


def causal_lm_loss(t: Tape, fam, ids: Fake, run_layers, *, keep_logits: bool,
                   loss: LossSpec | None = None) -> LossOutput:
    """Forward of the whole model + loss. ``keep_logits``: the caller keeps the output object (and so the
    logits) alive through backward. ``loss``: the recipe (default: transformers' standard loss)."""
    kind = Loss.STANDARD if loss is None else loss.kind
    if kind is not Loss.STANDARD and fam.final_softcap:
        raise PlannerError(f"--loss {kind.value} with final-logit softcapping (Gemma 2) is not modelled; "
                           "use --loss standard.")
    hidden = _base_model(t, fam, ids, run_layers)
    if kind is Loss.CHUNKED_CE:
        out, logits_bytes = loss_recipes.chunked_ce(t, fam, hidden, ids, loss.chunks)
        return LossOutput(out, logits_bytes, None)
    if kind is Loss.FUSED_LINEAR_CE:
        return LossOutput(loss_recipes.fused_linear_ce(t, fam, hidden, ids), 0, None)
    if kind is Loss.TRL_FUSED_LM_HEAD:
        return LossOutput(trl_loss.fused_lm_head(t, fam, hidden, ids), 0, None)
    logits = ly.linear(t, fam.ctx, hidden, fam.lm_head)
    if fam.final_softcap:
        logits = ops.mul_scalar(t, logits)
        logits = ops.unary_saving_output(t, "tanh", logits)
        logits = ops.mul_scalar(t, logits)
    logits_bytes = logits.nbytes
    if t.split_loss:  # FSDP2: the root's forward (and its gathered parameters) ended with the output head
        t.sim.set_phase("forward_loss")
    loss = _for_causal_lm_loss(t, logits, ids)
    del hidden
    held = logits if keep_logits else None
    del logits
    return LossOutput(loss, logits_bytes, held)


def _base_model(t: Tape, fam, ids: Fake, run_layers) -> Fake:
    """``XModel.forward``: its locals (inputs_embeds, position embeddings, mask) live until it returns."""
    emb, extras, held = fam.embed(t, ids)
    h = run_layers(emb, extras)
    del emb
    return fam.final_norm(t, h)


def _for_causal_lm_loss(t: Tape, logits: Fake, ids: Fake) -> Fake:
    b, s, v = logits.shape
    logits = ops.to(t, logits, "fp32")
    labels = t.new((b, s + 1), "int64")  # F.pad(labels, (0, 1))
    shift_labels = t.new((b, s), "int64")  # labels[..., 1:].contiguous()
    logp = ops.unary_saving_output(t, "log_softmax", logits)
    # the fp32 logits stay referenced by ForCausalLMLoss and fixed_cross_entropy until cross_entropy returns;
    # without offloading nothing after log_softmax allocates more than a few bytes, so they are let go here
    # (and golden estimates keep their bytes); with it nll_loss's copy of logp is allocated while they live
    held = logits if t.packs else None
    del logits
    total_weight = t.new((), "fp32")
    # nll_loss saves its input too (derivatives.yaml: nll_loss_backward(grad, self, target, ...)), the storage
    # log_softmax already keeps; only activation offloading, which copies it a second time, lists it
    saved = ([logp] if t.packs else []) + [shift_labels, total_weight]
    loss = t.op("nll_loss", [logp], [((), "fp32")], saved)[0]
    del logp, labels, shift_labels, total_weight, held
    return loss
