"""One PPO micro-batch's policy on the tape: TRL 1.12's ``PPOTrainer.train`` (trl/experimental/ppo/ppo_trainer.py),
the policy's half of ``PolicyAndValueWrapper.forward`` and the loss. The value model's half is estimate/ppo.py's.

``train()``, per micro-batch of ``per_device_train_batch_size`` rows of ``query + response`` tokens::

    output, vpred_temp = forward(model, mb_query_responses, pad_token_id)   # PolicyAndValueWrapper: value, policy
    logits = output.logits[:, context_length - 1 : -1]                     # a view [b, R, V], compute dtype
    logits /= args.temperature + 1e-7                                       # in place on the view
    new_logprobs = selective_log_softmax(logits, mb_responses)              # trl/trainer/utils.py
    ... vpred, vpredclipped, vf_losses1/2, vf_loss_max, ratio, pg_losses/2, pg_loss_max: [b, R] tensors
    loss = pg_loss + args.vf_coef * vf_loss
    accelerator.backward(loss); optimizer.step(); optimizer.zero_grad()
    with torch.no_grad(): prob_dist = softmax(logits); entropy = logsumexp(logits) - sum(prob_dist * logits)

``forward`` (ppo_trainer.py) calls the policy with ``output_hidden_states=True`` and no labels: the
``[b, S, V]`` logits in the compute dtype, no loss upcast; the hidden states it returns are the layers' outputs,
tensors the layers keep anyway. ``selective_log_softmax`` (trl/trainer/utils.py, TRL 1.12): for fp32 logits a
``gather`` and a per-row ``logsumexp`` (its [R, V] exponentials one row at a time); for 16-bit logits a per-row
``log_softmax`` whose [R, V] output autograd saves, then ``gather``. ``SliceBackward0`` hands the logits a zero-filled
gradient of their full ``[b, S, V]`` shape. The entropy after ``optimizer.step`` is estimate/ppo.py's.
"""

from __future__ import annotations

from planner.estimate.step import layers as ly
from planner.estimate.step import logits as lg
from planner.estimate.step.tape import Fake, Storage, Tape
from planner.units import dtype_bytes

# the loss's [b, R] fp32 tensors alive at its end: new_logprobs (masked), vpred (masked), vpredclipped, vf_losses1,
# vf_losses2, vf_loss_max, logprobs_diff, ratio, pg_losses, pg_losses2, pg_loss_max (ppo_trainer.py train())
NUM_LOSS_TENSORS = 11


def ppo_policy_loss(t: Tape, fam, ids: Fake, run_layers, response: int) -> lg.LossOutput:
    """The policy forward (logits over every position), the response slice, selective_log_softmax and the PPO
    losses' [b, R] tensors; the logits stay referenced by ``output`` through backward (returned as held)."""
    b, s = ids.shape
    hidden = lg._base_model(t, fam, ids, run_layers)
    logits = ly.linear(t, fam.ctx, hidden, fam.lm_head)  # [b, S, V], the compute dtype
    del hidden
    dtype = logits.dtype
    v = logits.shape[-1]
    shape = (b, response, v)
    # output.logits[:, c - 1 : -1] /= T: a view, divided in place: autograd rebases the view's history on the base
    # (CopySlices), whose backward is _copy_slices_rule's
    db = dtype_bytes(dtype)
    sliced = t.op("slice_div", [logits], [(shape, dtype)], [], _copy_slices_rule(b * s * v * db, b * response * v * db),
                  alias=logits.st)[0]
    if dtype in ("fp32", "fp64"):
        selected = t.op("gather", [sliced], [((b, response), dtype)], [])[0]
        row = t.new((response, v), dtype)  # logsumexp's exponentials of one row at a time
        lse = t.op("logsumexp", [sliced], [((b, response), dtype)], [])[0]
        del row
        new_logprobs = t.op("sub", [selected, lse], [((b, response), dtype)], [])[0]
        del selected, lse
    else:
        lsm = t.op("log_softmax", [sliced], [(shape, dtype)], [])[0]  # per row, each output saved
        t.save_result(lsm)
        new_logprobs = t.op("gather", [lsm], [((b, response), dtype)], [])[0]
        del lsm
    del sliced
    # the value and policy losses: [b, R] fp32 tensors, the last of them reduced to the scalar loss
    losses = t.op("ppo_losses", [new_logprobs], [((b, response), "fp32")] * NUM_LOSS_TENSORS, [])
    loss = t.op("masked_mean", [losses[-1]], [((), "fp32")], [])[0]
    del losses, new_logprobs
    held = logits
    logits_bytes = logits.nbytes
    del logits
    return lg.LossOutput(loss, logits_bytes, held)


def _copy_slices_rule(full_bytes: int, slice_bytes: int):
    """The backward of the in-place division on the logits' response view, as torch's autograd runs it: the view's
    gradient goes through its as-strided backward (zeros of the base's [b, S, V] shape, the view's gradient copied
    in), then CopySlices (torch/csrc/autograd/functions/tensor.cpp ``CopySlices::apply``: ``result = grad.clone()``,
    ``grad_slice.clone()`` of the view's region, the division's backward ``grad / (T + 1e-7)`` on it, copied back):
    two [b, S, V] and two [b, R, V] tensors at once; ``result`` goes on to the output head's backward."""
    def rule(t: Tape, node, grads_out):
        if node.edges[0] is None:
            return [None]
        zeros = Storage(t.sim, full_bytes)
        result = Storage(t.sim, full_bytes)
        piece = Storage(t.sim, slice_bytes)
        quotient = Storage(t.sim, slice_bytes)
        del quotient, piece, zeros
        return [result]
    return rule
