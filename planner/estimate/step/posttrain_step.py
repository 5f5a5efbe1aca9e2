"""One DPO micro-batch on the tape: TRL 1.16's ``DPOTrainer._compute_loss`` (trl/trainer/dpo_trainer.py).

The batch is ``DataCollatorForPreference``'s: chosen rows then rejected rows, ``2 x micro-batch`` rows
(simulate.step_inputs doubles it). ``_compute_loss``::

    outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)      # the policy, with gradients
    per_token_logps = outputs.log_probs[:, -seq_len:]                       # a view
    logps = per_token_logps.sum(dim=1)                                      # [2b]
    chosen_logps, rejected_logps = logps.chunk(2, dim=0)
    with torch.no_grad(), disable_gradient_checkpointing(...):
        # LoRA policy without ref_model: use_adapter(model, None) -> model.disable_adapter()
        ref_outputs = self.model(...) if is_peft_model(self.model) and self.ref_model is None
                      else self.ref_model(...)                              # fused_lm_head=True
    ref_logps = ref_outputs.log_probs[:, -seq_len:].sum(dim=1)
    ... -F.logsigmoid(self.beta * delta_score) ... .mean()                  # [b]-sized tensors

With ``precompute_ref_log_probs`` the reference log-probabilities come with the batch and no reference forward
runs. The reference forward runs while the policy's saved activations are alive, so its own working set (one
layer's temporaries, then the fused head's tile buffer) sits on top of them; it saves nothing. Both output objects
are locals of ``_compute_loss``: freed before ``accelerator.backward`` runs.
"""

from __future__ import annotations

from contextlib import contextmanager

from planner.estimate.step import logits as lg
from planner.estimate.step import trl_head
from planner.estimate.step.tape import Fake, Storage, Tape
from planner.units import dtype_bytes

COPY, ADAPTER, PRECOMPUTED = "copy", "adapter", "precomputed"


@contextmanager
def scoring(t: Tape, fam, reference: str):
    """The reference's pass, as DPOTrainer and GRPOTrainer run it: under no_grad, the adapter disabled for
    ``adapter`` (peft's disable_adapter), recorded as the phase "scoring"; back to the forward after it."""
    was_enabled = t.grad_enabled
    t.grad_enabled = False
    fam.ctx.lora_disabled = reference == ADAPTER or fam.ctx.lora_disabled
    t.sim.set_phase("scoring")
    try:
        yield
    finally:
        t.grad_enabled = was_enabled
        fam.ctx.lora_disabled = False
        t.sim.set_phase("forward")


def reference_head(t: Tape, fam, ids: Fake, num_layers: int, reference: str, policy_outputs: tuple[str, ...]):
    """The reference forward through TRL's fused head, inside ``scoring``: (log-probs, what the head keeps). A LoRA
    policy scores through its own head (``policy_outputs``); a separate model through the head add_fused_lm_head
    gave it (log_probs only). Nothing of the forward is kept (no_grad)."""
    emb, extras, held = fam.embed(t, ids)
    h = emb
    del emb
    for i in range(num_layers):
        h = fam.layer(t, i, h, extras)
    h = fam.final_norm(t, h)
    del extras, held
    outputs = policy_outputs if reference == ADAPTER else trl_head.REFERENCE_OUTPUTS
    return trl_head.fused_lm_head(t, fam, h, outputs, fam.ctx.device)


def dpo_loss(t: Tape, fam, ids: Fake, run_layers, reference: str, num_layers: int) -> lg.LossOutput:
    """The policy forward with TRL's fused head, the reference forward (``reference``: copy, adapter or
    precomputed), and the DPO loss; ``num_layers``: the layers the reference forward runs (its peak is inside
    any one of them, nothing being kept)."""
    device = fam.ctx.device
    hidden = lg._base_model(t, fam, ids, run_layers)
    log_probs, kept = trl_head.fused_lm_head(t, fam, hidden, trl_head.POLICY_OUTPUTS, device)
    del hidden
    rows = log_probs.shape[0]
    # per_token_logps.sum(dim=1): SumBackward0 hands on an expanded view of the [2b] gradient
    logps = t.op("sum", [log_probs], [((rows,), "fp32")], [], _expand_rule)[0]
    del log_probs
    ref_kept: list = []
    if reference in (COPY, ADAPTER):
        with scoring(t, fam, reference):
            ref_lp, ref_kept = reference_head(t, fam, ids, num_layers, reference, trl_head.POLICY_OUTPUTS)
            ref_logps = t.new((rows,), "fp32")  # .sum(dim=1)
            del ref_lp
    else:
        ref_logps = t.new((rows,), "fp32")  # inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
    # chosen/rejected log-ratios, the sigmoid loss and its mean: [b]-sized tensors and a scalar
    loss = t.op("dpo_loss", [logps, ref_logps], [((), "fp32")], [], _loss_rule)[0]
    del logps, ref_logps, kept, ref_kept
    return lg.LossOutput(loss, 0, None)


def _expand_rule(t: Tape, node, grads_out):
    e = node.edges[0]
    return [Storage(t.sim, 0, "view") if e is not None else None]


def _loss_rule(t: Tape, node, grads_out):
    """The loss's backward down to ``logps``: a [2b] fp32 gradient (cat of the chunks' gradients)."""
    e = node.edges[0]
    if e is None:
        return [None, None]
    n = 1
    for d in e[2]:
        n *= d
    return [Storage(t.sim, n * dtype_bytes("fp32")), None]
