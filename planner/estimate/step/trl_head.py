"""TRL 1.16's fused LM head on the tape: per-token log-probabilities in tiles, never the [tokens, V] logits.

``add_fused_lm_head`` (trl/trainer/utils.py) replaces the model's forward; called with ``fused_lm_head=True`` it runs
the backbone and then, off Triton devices (``_use_triton``: CUDA/XPU with Triton; the CPU runs the torch path
``compact = False``)::

    hidden_states = backbone_outputs.last_hidden_state[:, :-1]      # a view
    labels = labels[:, 1:]; mask = labels != -100                   # bool [B, S-1]
    per_token = _ChunkedLogProbFunction.apply(
        hidden_states.reshape(-1, H),                               # not contiguous: a copy (autograd: clone)
        lm_head.weight, None, labels.clamp(min=0).reshape(-1), ...)
    per_token = (x.view(mask.shape).masked_fill(~mask, 0) for x in per_token)   # each output, ~mask each time
    loss = -log_probs.sum() / mask.sum().clamp(min=1)

On Triton devices (``compact``) only the N = completion tokens are scored (``hidden_states[mask]``), and
``masked_scatter`` puts them back; planner does not know the completion's share of the sequence and scores every
position there too (an upper bound of the tiles), and the Triton kernels fold each tile without the CPU path's
[tokens, vocabulary] temporaries: that GPU rule is modelled from the source, not measured. ``ChunkedLogProbFunction`` (trl/kernels/chunked_logprob.py) forward, in
no-grad: seven fp32 [N] statistics, ``mm_buf = torch.empty((min(N, TOKEN_CHUNK_SIZE), chunk_size))`` in the
compute dtype (``chunk_size`` is ``_CHUNKED_LOGPROB_CHUNK_SIZE`` = 32768 columns whatever the vocabulary: the buffer
is allocated at full width), then per tile of 4096 tokens x 32768 vocabulary columns ``torch.mm(..., out=tile)`` and
``_forward_tile`` (the CPU fold): ``z`` (``tile.float()`` scaled twice), the is-top-1 masks, ``exp(z - max)``,
``e * z`` for the entropy; after the loop ``log_z``, ``logprobs`` and the optional outputs. It saves
``(hidden, weight, bias, targets, log_z, entropy or log_z)``. Backward: ``grad_hidden`` (fp32 [N, H]),
``grad_weight`` (fp32 [V, H], when lm_head trains), a second ``mm_buf``, and per tile ``_backward_tile``'s
locals (``y``, ``z``, ``log_p``, ``p``, ``grad``, the bool ``is_target`` and two temporaries of its update),
then ``_addmm_fp32`` into the fp32 accumulators.
"""

from __future__ import annotations

from planner.estimate.step.tape import _STOLEN_SUM, Fake, Param, Storage, Tape
from planner.units import dtype_bytes

# trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE; trl/trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE
TOKEN_CHUNK_SIZE = 4096
VOCAB_CHUNK_SIZE = 32768
# DPOTrainer's policy head: add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
# (dpo_trainer.py __init__, without use_weighting); its reference model's: the default ("log_probs",)
POLICY_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")
REFERENCE_OUTPUTS = ("log_probs",)


def _new(t: Tape, shape, dtype: str) -> Storage:
    n = 1
    for d in shape:
        n *= d
    return Storage(t.sim, n * dtype_bytes(dtype))


def fused_lm_head(t: Tape, fam, hidden: Fake, outputs: tuple[str, ...], device: str) -> tuple[Fake, list]:
    """``_fused_forward`` after the backbone. Returns the per-token log-probabilities [B, S-1] (a tensor of the
    graph when gradients are on) and what the output object keeps alive with them (the other outputs, the mask)."""
    b, s, h = hidden.shape
    lin = fam.lm_head
    w = lin.w
    vocab = w.shape[0]
    n = b * (s - 1)
    compute = fam.ctx.dtype
    # labels[:, 1:] != -100 -> mask; ~mask per output below
    mask = t.new((b, s - 1), "bool")
    # the CPU path scores every position: hidden_states.reshape(-1, H) of a [:, :-1] slice copies
    flat = t.op("clone", [hidden], [((n, h), hidden.dtype)], [], _slice_copy_rule)[0]
    targets = t.new((n,), "int64")  # labels.clamp(min=0).reshape(-1)
    grad = flat.node is not None or (isinstance(w, Param) and w.trainable and t.grad_enabled)
    # ChunkedLogProbFunction.forward runs without grad: its locals are plain tensors
    stats = [t.new((n,), "fp32") for _ in range(7)]
    mm_buf = _new(t, (min(n, TOKEN_CHUNK_SIZE), VOCAB_CHUNK_SIZE), compute)
    for start in range(0, n, TOKEN_CHUNK_SIZE):
        rows = min(TOKEN_CHUNK_SIZE, n - start)
        chunk = _new(t, (rows, h), compute) if flat.dtype != compute else None  # hidden[...].to(compute)
        for v0 in range(0, vocab, VOCAB_CHUNK_SIZE):
            cols = min(VOCAB_CHUNK_SIZE, vocab - v0)
            w_copy = _new(t, (cols, h), compute) if w.dtype != compute else None  # weight[...].to(compute)
            del w_copy  # a temporary of the torch.mm call
            if device == "cpu":  # on a GPU _forward_kernel (Triton) folds the tile in registers
                _forward_tile(t, rows, cols, compute, outputs)
        del chunk
    del mm_buf
    log_z = t.new((n,), "fp32")  # running_max + torch.log(sum_exp)
    made = {"log_probs": ("fp32", True)}  # target_logit - log_z
    if "entropy" in outputs:
        tmp = t.new((n,), "fp32")  # x_sum_exp / sum_exp
        made["entropy"] = ("fp32", True)
    if "mean_logits" in outputs:
        made["mean_logits"] = ("fp32", False)  # z_sum / vocab
    if "is_top1" in outputs:
        made["is_top1"] = ("bool", False)  # (target_logit >= running_max) & (target_logit > max_before_target)
    specs = [((n,), dtype) for dtype, _ in made.values()]
    if grad:
        saved = [flat, targets, log_z]  # hidden, targets, log_z (weight: the parameter); entropy is an output
        inputs = [flat, w]
        raw = t.op("trl_chunked_logprob", inputs, specs, saved, _chunked_backward(n, h, vocab, compute, w, device))
        if "entropy" in made:
            t.save_result(raw[1])
    else:
        raw = [t.new(shape, dtype) for shape, dtype in specs]
    if "entropy" in outputs:
        del tmp
    del stats, log_z, targets, flat
    # (x.view(mask.shape).masked_fill(~mask, 0) for x in per_token): the raw outputs die one by one
    kept = [mask]
    log_probs = None
    for name, x in zip(made, raw, strict=True):
        inv = t.new((b, s - 1), "bool")
        differentiable = made[name][1] and x.node is not None
        out = t.op("masked_fill", [x], [((b, s - 1), x.dtype)], [inv] if differentiable else [])[0]
        del inv
        if name == "log_probs":
            log_probs = out
        else:
            kept.append(out)
        del out
    del raw, x
    return log_probs, kept


def _forward_tile(t: Tape, rows: int, cols: int, compute: str, outputs: tuple[str, ...]) -> None:
    """``_forward_tile``'s tensors, in their order (every one freed when it returns)."""
    shape = (rows, cols)
    up = _new(t, shape, "fp32") if compute != "fp32" else None  # tile.float()
    z1 = _new(t, shape, "fp32")  # z * logit_scale
    del up
    z = _new(t, shape, "fp32")  # z * inv_t
    del z1
    local = _new(t, (rows,), "int64")  # targets - vocab_start
    if "mean_logits" in outputs:
        s1 = _new(t, (rows,), "fp32")  # z.sum(-1)
        del s1
    if "is_top1" in outputs:
        ar = _new(t, (cols,), "int64")  # torch.arange(n_cols)
        before = _new(t, shape, "bool")  # < local.unsqueeze(-1)
        del ar
        inv = _new(t, shape, "bool")  # ~before_target
        filled = _new(t, shape, "fp32")  # z.masked_fill(...)
        del inv
        m1 = _new(t, (rows,), "fp32")  # .amax(-1)
        del filled
        m2 = _new(t, (rows,), "fp32")  # torch.maximum(...)
        del m1, m2, before
    am = _new(t, (rows,), "fp32")  # z.amax(-1)
    new_m = _new(t, (rows,), "fp32")  # torch.maximum(running_max, ...)
    del am
    rescale = _new(t, (rows,), "fp32")  # torch.exp(running_max - new_m) (the difference first)
    diff = _new(t, shape, "fp32")  # z - new_m.unsqueeze(-1)
    e = _new(t, shape, "fp32")  # torch.exp(...)
    del diff
    s2 = _new(t, (rows,), "fp32")  # e.sum(-1)
    del s2
    if "entropy" in outputs:
        ez = _new(t, shape, "fp32")  # e * z
        s3 = _new(t, (rows,), "fp32")  # .sum(-1)
        del ez, s3
    del rescale, new_m, e
    clamped = _new(t, (rows,), "int64")  # local.clamp(0, n_cols - 1)
    target_z = _new(t, (rows, 1), "fp32")  # z.gather(...)
    in_tile = _new(t, (rows,), "bool")
    where = _new(t, (rows,), "fp32")  # torch.where(in_tile, target_z, target_logit)
    del clamped, target_z, in_tile, where, local, z


def _chunked_backward(n: int, h: int, vocab: int, compute: str, w, device: str):
    """``ChunkedLogProbFunction.backward``: the fp32 accumulators, a second mm_buf and each tile's locals."""

    def rule(t: Tape, node, grads_out):
        grad_hidden = _new(t, (n, h), "fp32")
        grad_weight = None
        if isinstance(w, Param) and w.trainable:
            # torch.zeros(weight.shape, fp32): returned as it is (.to(weight.dtype) of an fp32 weight), AccumulateGrad
            # steals it as lm_head's .grad, so a profile names it a gradient from its allocation
            grad_weight = _new(t, tuple(w.shape), "fp32")
            if t.keep_param_grads and w.grad is None and w.dtype == "fp32":
                grad_weight.tag = _STOLEN_SUM
                t.sim.grads += grad_weight.nbytes
        mm_buf = _new(t, (min(n, TOKEN_CHUNK_SIZE), VOCAB_CHUNK_SIZE), compute)
        for start in range(0, n, TOKEN_CHUNK_SIZE):
            rows = min(TOKEN_CHUNK_SIZE, n - start)
            chunk = _new(t, (rows, h), compute) if compute != "fp32" else None  # hidden[...].to(compute)
            for v0 in range(0, vocab, VOCAB_CHUNK_SIZE):
                cols = min(VOCAB_CHUNK_SIZE, vocab - v0)
                w_chunk = _new(t, (cols, h), compute) if w.dtype != compute else None
                if device != "cpu":  # _backward_kernel (Triton); addmm(out_dtype=float32) accumulates in place
                    del w_chunk
                    continue
                _backward_tile(t, rows, cols, compute)
                # _addmm_fp32: a.float() and b.float() copy 16-bit operands
                if compute != "fp32":
                    a = _new(t, (rows, cols), "fp32")
                    bb = _new(t, (cols, h), "fp32")
                    del a, bb
                    if grad_weight is not None:
                        a = _new(t, (cols, rows), "fp32")
                        bb = _new(t, (rows, h), "fp32")
                        del a, bb
                del w_chunk
            del chunk
        del mm_buf
        # grad_hidden.to(hidden.dtype), grad_weight.to(weight.dtype): copies only when those are 16-bit
        return [grad_hidden, grad_weight]

    return rule


def _backward_tile(t: Tape, rows: int, cols: int, compute: str) -> None:
    shape = (rows, cols)
    up = _new(t, shape, "fp32") if compute != "fp32" else None  # tile.float()
    y = _new(t, shape, "fp32")  # * logit_scale
    del up
    z = _new(t, shape, "fp32")  # y * inv_t
    log_p = _new(t, shape, "fp32")  # z - log_z.unsqueeze(-1)
    p = _new(t, shape, "fp32")  # torch.exp(log_p)
    grad = _new(t, shape, "fp32")  # torch.zeros_like(z)
    ar = _new(t, (cols,), "int64")  # torch.arange(vocab_start, ...)
    is_target = _new(t, shape, "bool")
    del ar
    f = _new(t, shape, "fp32")  # is_target.float()
    d = _new(t, shape, "fp32")  # ... - p
    del f
    prod = _new(t, shape, "fp32")  # grad_logprobs.unsqueeze(-1) * (...)
    del d, prod  # grad += ...
    g2 = _new(t, shape, "fp32")  # grad * inv_t
    del grad
    g3 = _new(t, shape, "fp32")  # grad * logit_scale, copied into the tile
    del g3, g2, is_target, p, log_p, z, y


def _slice_copy_rule(t: Tape, node, grads_out):
    """``hidden[:, :-1].reshape(-1, H)``: the copy's gradient is a view; SliceBackward makes the full [B, S, H]
    zeros and copies it in."""
    (e,) = node.edges
    if e is None or grads_out[0] is None:
        return [None]
    shape, dtype = e[2], e[3]
    n = 1
    for d in shape:
        n *= d
    return [Storage(t.sim, n * dtype_bytes(dtype))]
