"""The optimizer stepped in backward (``--optimizer-in-backward``; torchtune's optimizer_in_bwd) on the tape.

torchtune 0.6.1 training/memory.py ``register_optim_in_bwd_hooks``: each trainable parameter has its own
optimizer, stepped by the parameter's post-accumulate-grad hook, which then calls ``zero_grad()`` (set_to_none):
the gradient is freed as soon as it has been used, so the gradients are never all alive. tape.py calls
``_step_in_hook`` from AccumulateGrad and names fresh parameter gradients through ``param_grad_storage``.
"""

from __future__ import annotations

from planner.estimate.step.sim import Storage

# A parameter's out-of-place gradient sum that AccumulateGrad will steal as .grad: counted as a gradient from
# its allocation, as a profile names it (the tensor that becomes .grad).
_STOLEN_SUM = "stolen_sum"


def scratch_per_element(train) -> int | None:
    """Bytes of step scratch per element of one parameter stepped in its gradient hook (temporaries.py's rule
    for an update over that one tensor), or None without --optimizer-in-backward."""
    if not train.optimizer_in_backward:
        return None
    from planner.estimate.temporaries import optimizer_scratch_bytes
    from planner.specs import Precision

    moment_bytes = 2 if train.precision is Precision.BF16 else 4
    return optimizer_scratch_bytes(train, num_trainable_on_gpu=1, moment_bytes=moment_bytes, largest_trainable=1)


def _step_in_hook(tape, param) -> None:
    """torchtune training/memory.py ``register_optim_in_bwd_hooks``: the parameter's post-accumulate-grad hook
    runs ``optim_dict[param].step()`` (torch's AdamW/SGD over this one tensor: its scratch, e.g. foreach's copy of
    the second moment, lives for the update) then ``zero_grad()`` (set_to_none): the gradient is freed."""
    scratch = Storage(tape.sim, tape.step_in_backward * param.numel, "step_in_backward")
    del scratch
    tape.sim.grads -= param.grad.nbytes
    param.grad = None


def param_grad_storage(tape, p, nbytes: int, tag: str = "") -> Storage:
    """A parameter's gradient made by a backward rule. With the optimizer in backward the step's peak can be the
    moment it is made, and a profile names the tensor that becomes ``.grad`` a gradient from its allocation (as
    for _STOLEN_SUM): one that AccumulateGrad will steal at once (``tape.fresh_params``) is counted as a gradient
    before it is allocated."""
    fresh = bool(tape.fresh_params) and id(p) in tape.fresh_params
    if fresh:
        tape.sim.grads += nbytes
    st = Storage(tape.sim, nbytes, tag)
    if fresh:
        tape.counted_grads.add(id(st))
    return st


def _fresh_params(tape, uses: dict, pending: dict, edges) -> set[int]:
    """The parameters of ``edges`` at their last use with nothing pending and no ``.grad``: AccumulateGrad will
    steal the gradient the node makes for them."""
    if not tape.keep_param_grads:
        return set()
    return {id(e[0]) for e in edges if e is not None and len(e) == 1 and uses.get(id(e[0])) == 1
            and id(e[0]) not in pending and e[0].grad is None}


def _name_fresh_param_grads(tape, edges, grads) -> None:
    """After the rule: a fresh parameter's gradient is tagged as counted (a rule that made it without
    param_grad_storage has it counted now), so that AccumulateGrad does not count it again."""
    for e, g in zip(edges, grads, strict=True):
        if e is None or g is None or len(e) != 1 or id(e[0]) not in tape.fresh_params:
            continue
        if id(g) not in tape.counted_grads:
            tape.sim.grads += g.nbytes
        g.tag = _STOLEN_SUM
    tape.fresh_params = set()
    tape.counted_grads = set()


