"""One GRPO micro-batch on the tape: TRL 1.16's ``GRPOTrainer`` (trl/trainer/grpo_trainer.py), after generation.

The batch is ``--micro-batch`` completions of ``--seq-len`` tokens (prompt + ``completion`` tokens), as
``_generate_and_score_completions`` buffers them: ``prompt_ids``/``prompt_mask`` (int64), ``completion_ids``
(int64), ``completion_mask`` (int32, ``.int()``), ``advantages`` [B] fp32 and, with ``beta != 0``,
``ref_per_token_logps`` [B, C] fp32.

Scoring (``beta != 0``; ``_generate_and_score_completions``, before the training step's forward, under
``torch.no_grad()``): ``_get_per_token_logps_and_entropies(self.ref_model, ...)`` for a full policy, or the policy
under ``use_adapter(model, None)`` (peft ``disable_adapter``) for a PEFT one, in chunks of
``per_device_train_batch_size`` rows: one no-grad forward of the micro-batch through the fused LM head
(trl_head.py; the reference copy's head was added with the default ``outputs=("log_probs",)``, the policy's with
``("log_probs", "entropy")``). ``old_per_token_logps`` is not computed with the defaults (``num_iterations`` 1,
``steps_per_generation`` = ``gradient_accumulation_steps``): ``per_token_logps.detach()`` stands in.

Training (``_compute_loss``, defaults ``loss_type="dapo"``, ``importance_sampling_level="token"``,
``top_entropy_quantile=1.0``, ``use_bias_correction_kl=True``)::

    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)              # int64 [B, S]
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)      # int64 [B, S]
    # _get_per_token_logps_and_entropies: labels = input_ids.masked_fill(attention_mask == 0, -100)
    outputs = model(..., labels=labels, fused_lm_head=True)                 # log_probs, entropy [B, S-1]
    logps = torch.cat([outputs.log_probs[:, -C:]])                          # [B, C] (a copy)
    entropies = torch.cat([outputs.entropy[:, -C:]])
    log_ratio = logps - logps.detach(); coef_1 = torch.exp(log_ratio)
    per_token_kl = (torch.exp(ref - logps) - (ref - logps) - 1) * coef_1    # beta != 0
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages) (+ beta * per_token_kl)
    loss = (per_token_loss * mask).sum() / normalizer

Every loss tensor is [B, C] fp32; the metrics after the loss (clip ratios, entropy means) are [B, C]-sized
temporaries under no grad that are not written here (a few bytes per completion token).
"""

from __future__ import annotations

from planner.estimate.step import logits as lg
from planner.estimate.step import trl_head
from planner.estimate.step.posttrain_step import ADAPTER, COPY, reference_head, scoring
from planner.estimate.step.tape import Fake, Tape

# GRPOTrainer.__init__: add_fused_lm_head(policy, outputs=("log_probs", "entropy")); the reference copy's head
# keeps add_fused_lm_head's default ("log_probs",)
POLICY_OUTPUTS = ("log_probs", "entropy")


def _completion_slice(t: Tape, per_token: Fake, completion: int) -> Fake:
    """``torch.cat([per_token[:, -C:]], dim=0)``: a [B, C] copy (its backward scatters into a [B, S-1] zero
    gradient: SliceBackward0, the default rule's gradient shaped like the input)."""
    b = per_token.shape[0]
    return t.op("cat", [per_token], [((b, completion), per_token.dtype)], [])[0]


def _elementwise(t: Tape, name: str, inputs: list, saved: list, shape) -> Fake:
    return t.op(name, inputs, [(shape, "fp32")], saved)[0]


def grpo_loss(t: Tape, fam, ids: Fake, run_layers, reference: str, num_layers: int, completion: int,
              kl: bool) -> lg.LossOutput:
    """The scoring forward (``reference``: copy, adapter, or "" for none), the policy forward with TRL's fused head,
    and the GRPO loss over the last ``completion`` positions; ``kl``: beta != 0."""
    device = fam.ctx.device
    b, s = ids.shape
    shape = (b, completion)
    # the buffered batch (the prompt and completion ids and masks, the advantages): alive through the step
    batch = [t.new((b, s - completion), "int64"), t.new((b, s - completion), "int64"), t.new(shape, "int64"),
             t.new(shape, "int32"), t.new((b,), "fp32")]
    ref_logps = None
    if reference in (COPY, ADAPTER):
        with scoring(t, fam, reference):
            lp, kept = reference_head(t, fam, ids, num_layers, reference, POLICY_OUTPUTS)
            ref_logps = _completion_slice(t, lp, completion)  # ref_per_token_logps, kept in the batch
            del lp, kept
    elif kl:
        ref_logps = t.new(shape, "fp32")
    # _compute_loss: torch.cat of the prompt and completion ids and masks (int64 [B, S]), the labels and their mask
    inputs = [t.new((b, s), "int64"), t.new((b, s), "int64"), t.new((b, s), "int64"), t.new((b, s), "bool")]
    hidden = lg._base_model(t, fam, ids, run_layers)
    log_probs, kept = trl_head.fused_lm_head(t, fam, hidden, POLICY_OUTPUTS, device)
    del hidden
    logps = _completion_slice(t, log_probs, completion)
    entropies = _completion_slice(t, kept[1], completion)
    del log_probs, kept  # outputs dies when _get_per_token_logps_and_entropies returns
    old = Fake(shape, "fp32", logps.st)  # logps.detach(): a view of the same storage, no gradient
    log_ratio = _elementwise(t, "sub", [logps, old], [], shape)
    coef_1 = _elementwise(t, "exp", [log_ratio], [], shape)
    t.save_result(coef_1)
    locals_ = [log_ratio, coef_1]
    if kl:
        d1 = _elementwise(t, "sub", [ref_logps, logps], [], shape)
        e = _elementwise(t, "exp", [d1], [], shape)
        t.save_result(e)
        d2 = _elementwise(t, "sub", [ref_logps, logps], [], shape)
        k0 = _elementwise(t, "sub", [e, d2], [], shape)
        del d1, e, d2
        k1 = _elementwise(t, "sub", [k0], [], shape)  # - 1
        del k0
        per_token_kl = _elementwise(t, "mul", [k1, coef_1], [k1, coef_1], shape)  # use_bias_correction_kl
        del k1
        locals_.append(per_token_kl)
    coef_2 = _elementwise(t, "clamp", [coef_1], [coef_1], shape)
    adv = batch[4]
    l1 = _elementwise(t, "mul", [coef_1, adv], [adv], shape)
    l2 = _elementwise(t, "mul", [coef_2, adv], [adv], shape)
    mn = _elementwise(t, "minimum", [l1, l2], [l1, l2], shape)
    per_token_loss = _elementwise(t, "neg", [mn], [], shape)
    locals_ += [coef_2, l1, l2]
    del mn
    if kl:
        bk = _elementwise(t, "mul", [per_token_kl], [], shape)  # self.beta * per_token_kl
        per_token_loss = _elementwise(t, "add", [per_token_loss, bk], [], shape)
        del bk
    mask = batch[3]
    masked = _elementwise(t, "mul", [per_token_loss, mask], [mask], shape)
    total = t.op("sum", [masked], [((), "fp32")], [])[0]
    del masked
    loss = t.op("div", [total], [((), "fp32")], [])[0]
    del total, per_token_loss, locals_, logps, entropies, old, inputs, batch, ref_logps
    return lg.LossOutput(loss, 0, None)
