"""TRL 1.16's fused LM head on the tape: ``ChunkedLogProbFunction`` (trl/kernels/chunked_logprob.py), shared by
SFT's loss (``--loss trl-fused-lm-head``, trl_loss.py) and DPO/GRPO's policy and reference scoring (below).

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
``masked_scatter`` puts them back; for DPO/GRPO planner does not know the completion's share of the sequence and
scores every position there too (an upper bound of the tiles), and the Triton kernels fold each tile without the
CPU path's [tokens, vocabulary] temporaries: that GPU rule is modelled from the source, not measured.

``ChunkedLogProbFunction.forward`` (``chunked_logprob`` below): seven fp32 [N] statistics, ``mm_buf =
torch.empty((min(N, TOKEN_CHUNK_SIZE), chunk_size))`` in the compute dtype (``chunk_size`` is
``_CHUNKED_LOGPROB_CHUNK_SIZE`` = 32768 columns whatever the vocabulary: the buffer is allocated at full width),
then per tile of 4096 tokens x 32768 vocabulary columns ``torch.mm(..., out=tile)`` and ``_forward_tile`` (the CPU
fold): ``z`` (``tile.float()`` scaled twice), the is-top-1 masks, ``exp(z - max)``, ``e * z`` for the entropy;
after the loop ``log_z``, ``logprobs`` and the optional outputs. It saves ``(hidden, weight, bias, targets, log_z,
entropy or log_z)``. Backward: ``grad_hidden`` (fp32 [N, H]) and ``grad_weight`` (fp32 [V, H]) when they need
gradients, a second ``mm_buf``, and per tile ``_backward_tile``'s locals (``y``, ``z``, ``log_p``, ``p``,
``grad``, the bool ``is_target`` and two temporaries of its update), then ``_addmm_fp32`` into the fp32
accumulators (``a.float()`` and ``b.float()`` copies unless the CUDA ``out_dtype`` addmm applies), returned cast
to the inputs' dtypes.
"""

from __future__ import annotations

from planner.estimate.step import ops
from planner.estimate.step.tape import _STOLEN_SUM, Fake, Storage, Tape
from planner.units import dtype_bytes

# trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE: tokens per projection tile
TOKEN_CHUNK_SIZE = 4096
# trl/trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE: vocabulary entries per tile, and mm_buf's width
VOCAB_CHUNK_SIZE = 32768
# ChunkedLogProbFunction.forward: running_max, sum_exp, x_sum_exp, sq_sum_exp, z_sum, max_before_target,
# target_logit (fp32 [N] each, allocated whichever outputs are asked for)
NUM_STATISTICS = 7
# DPOTrainer's policy head: add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
# (dpo_trainer.py __init__, without use_weighting); its reference model's: the default ("log_probs",)
POLICY_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")
REFERENCE_OUTPUTS = ("log_probs",)
# ChunkedLogProbFunction.forward's outputs in its return order, with their dtype and whether they are differentiable
# (mark_non_differentiable: log_sum_sq_probs, mean_logits, is_top1)
_OUTPUTS = {"log_probs": ("fp32", True), "entropy": ("fp32", True), "mean_logits": ("fp32", False),
            "is_top1": ("bool", False)}


def _new(t: Tape, shape, dtype: str) -> Storage:
    n = 1
    for d in shape:
        n *= d
    return Storage(t.sim, n * dtype_bytes(dtype))


def tiles(num_tokens: int, vocab: int) -> list[tuple[int, int]]:
    """(tokens, vocabulary entries) of every tile, in the order ChunkedLogProbFunction runs them."""
    return [(min(TOKEN_CHUNK_SIZE, num_tokens - t0), min(VOCAB_CHUNK_SIZE, vocab - v0))
            for t0 in range(0, num_tokens, TOKEN_CHUNK_SIZE) for v0 in range(0, vocab, VOCAB_CHUNK_SIZE)]


def fused_lm_head(t: Tape, fam, hidden: Fake, outputs: tuple[str, ...], device: str) -> tuple[Fake, list]:
    """``_fused_forward`` after the backbone. Returns the per-token log-probabilities [B, S-1] (a tensor of the
    graph when gradients are on) and what the output object keeps alive with them (the other outputs, the mask)."""
    b, s, h = hidden.shape
    lin = fam.lm_head
    w = lin.w
    n = b * (s - 1)
    compute = fam.ctx.dtype
    # labels[:, 1:] != -100 -> mask; ~mask per output below
    mask = t.new((b, s - 1), "bool")
    # the CPU path scores every position: hidden_states.reshape(-1, H) of a [:, :-1] slice copies
    flat = t.op("clone", [hidden], [((n, h), hidden.dtype)], [], _slice_copy_rule)[0]
    targets = t.new((n,), "int64")  # labels.clamp(min=0).reshape(-1)
    made = [name for name in _OUTPUTS if name in outputs]
    raw = chunked_logprob(t, w, flat, targets, made, compute, compact=device != "cpu")
    del targets, flat
    # (x.view(mask.shape).masked_fill(~mask, 0) for x in per_token): the raw outputs die one by one
    kept = [mask]
    log_probs = None
    for name, x in zip(made, raw, strict=True):
        inv = t.new((b, s - 1), "bool")
        differentiable = _OUTPUTS[name][1] and x.node is not None
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


def chunked_logprob(t: Tape, w, x: Fake, targets: Fake, outputs: list[str], compute: str,
                    compact: bool) -> list[Fake]:
    """``ChunkedLogProbFunction.forward`` on ``x`` [N, H] and lm_head's weight ``w``; returns the asked ``outputs``
    ([N] each) in its return order. ``compact``: Triton folds each tile in registers (CUDA, XPU)."""
    num, h = x.shape
    vocab = w.shape[0]
    stats = [t.new((num,), "fp32") for _ in range(NUM_STATISTICS)]
    mm_buf = t.new((min(num, TOKEN_CHUNK_SIZE), VOCAB_CHUNK_SIZE), compute)
    for start in range(0, num, TOKEN_CHUNK_SIZE):
        rows = min(TOKEN_CHUNK_SIZE, num - start)
        chunk = t.new((rows, h), compute) if x.dtype != compute else None  # hidden[...].to(compute_dtype)
        for v0 in range(0, vocab, VOCAB_CHUNK_SIZE):
            cols = min(VOCAB_CHUNK_SIZE, vocab - v0)
            cast = t.new((cols, h), compute) if w.dtype != compute else None  # weight[start:end].to(compute_dtype)
            _tile_matmul(t, compute, rows, h, cols)
            del cast
            if not compact:
                _forward_tile(t, rows, cols, compute, outputs)
        del chunk
    log = t.new((num,), "fp32")  # torch.log(sum_exp)
    log_z = t.new((num,), "fp32")  # running_max + log
    del log
    div = t.new((num,), "fp32") if "entropy" in outputs else None  # x_sum_exp / sum_exp, for the entropy
    top1_parts = [t.new((num,), "bool"), t.new((num,), "bool")] if "is_top1" in outputs else []  # >=, > (then &)
    extra = {"num": num, "vocab": vocab, "h": h, "cdt": compute, "compact": compact, "w": w,
             "w_dtype": w.dtype, "x_dtype": x.dtype}
    specs = [((num,), _OUTPUTS[name][0]) for name in outputs]
    raw = t.op("chunked_logprob", [x, w], specs, [x, targets, log_z], _backward_rule, extra)
    if "entropy" in outputs:
        t.save_result(raw[1])
    del div, top1_parts, log_z, stats, mm_buf  # forward returns: its locals are freed
    return raw


def _tile_matmul(t: Tape, cdt: str, n: int, h: int, nc: int) -> None:
    """torch.mm(hidden_chunk, w_chunk.t(), out=tile): oneDNN's workspace for a 16-bit CPU matmul."""
    if ops.onednn(t, cdt):
        ops.matmul_workspace(t, (cdt, 1, n, h, nc, False, True))


def _backward_rule(tape: Tape, node, grads_out):
    """ChunkedLogProbFunction.backward (grad_entropy is None: the entropy only feeds a metric)."""
    ex = node.extra
    sim = tape.sim
    num, vocab, h, cdt, compact = ex["num"], ex["vocab"], ex["h"], ex["cdt"], ex["compact"]
    needs_hidden = node.edges[0] is not None
    needs_weight = node.edges[1] is not None
    grad_hidden = Storage(sim, num * h * 4) if needs_hidden else None  # zeros fp32
    grad_weight = None
    if needs_weight:
        grad_weight = Storage(sim, vocab * h * 4)  # zeros fp32
        if ex["w_dtype"] == "fp32":
            _counts_as_grad(tape, ex["w"], grad_weight)  # returned as is: AccumulateGrad steals it
    mm_buf = Storage(sim, min(num, TOKEN_CHUNK_SIZE) * VOCAB_CHUNK_SIZE * dtype_bytes(cdt))
    cuda_out_dtype = compact and cdt in ("bf16", "fp16")  # _addmm_fp32: addmm(out_dtype=float32) on CUDA
    for start in range(0, num, TOKEN_CHUNK_SIZE):
        n = min(TOKEN_CHUNK_SIZE, num - start)
        # hidden[...].to(compute_dtype): a copy only when the dtypes differ (Tensor.to returns self otherwise)
        chunk = Storage(sim, n * h * dtype_bytes(cdt)) if ex["x_dtype"] != cdt else None
        for v0 in range(0, vocab, VOCAB_CHUNK_SIZE):
            nc = min(VOCAB_CHUNK_SIZE, vocab - v0)
            w_chunk = Storage(sim, nc * h * dtype_bytes(cdt)) if ex["w_dtype"] != cdt else None
            _tile_matmul(tape, cdt, n, h, nc)
            if not compact:
                _backward_tile(tape, n, nc, cdt)
            if not cuda_out_dtype and cdt != "fp32":  # a.float(), b.float()
                if grad_hidden is not None:
                    copies = (Storage(sim, n * nc * 4), Storage(sim, nc * h * 4))
                    del copies
                if grad_weight is not None:
                    copies = (Storage(sim, n * nc * 4), Storage(sim, n * h * 4))
                    del copies
            del w_chunk
        del chunk
    # grad_hidden.to(hidden.dtype), grad_weight.to(weight.dtype): copies unless already fp32
    out_hidden = grad_hidden
    if grad_hidden is not None and ex["x_dtype"] != "fp32":
        out_hidden = Storage(sim, num * h * dtype_bytes(ex["x_dtype"]))
    out_weight = grad_weight
    if grad_weight is not None and ex["w_dtype"] != "fp32":
        out_weight = Storage(sim, vocab * h * dtype_bytes(ex["w_dtype"]))
        _counts_as_grad(tape, ex["w"], out_weight)
    del grad_hidden, grad_weight, mm_buf
    return [out_hidden, out_weight]


def _counts_as_grad(tape: Tape, param, g: Storage) -> None:
    """The tensor AccumulateGrad will steal as ``.grad``: a gradient from its allocation, as a profile names it
    (tape._STOLEN_SUM)."""
    if tape.keep_param_grads and param.grad is None:
        g.tag = _STOLEN_SUM
        tape.sim.grads += g.nbytes


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
