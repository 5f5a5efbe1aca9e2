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
"""

from __future__ import annotations

from planner.errors import PlannerError
from planner.estimate.step import ops
from planner.estimate.step.tape import Fake, Storage, Tape
from planner.units import dtype_bytes

# trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE: tokens per projection tile
TOKEN_CHUNK_SIZE = 4096
# trl/trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE: vocabulary entries per tile, and mm_buf's width
VOCAB_CHUNK_SIZE = 32768
# ChunkedLogProbFunction.forward: running_max, sum_exp, x_sum_exp, sq_sum_exp, z_sum, max_before_target,
# target_logit (fp32 [N] each, allocated whichever outputs are asked for)
NUM_STATISTICS = 7

TRL_NOTE = ("--loss trl-fused-lm-head: TRL's fused LM head (SFTTrainer loss_type nll) projects lm_head in tiles of "
            f"at most {TOKEN_CHUNK_SIZE} tokens x {VOCAB_CHUNK_SIZE} vocabulary entries into a "
            f"[min(tokens, {TOKEN_CHUNK_SIZE}), {VOCAB_CHUNK_SIZE}] buffer, in forward and again in backward, beside "
            "fp32 lm_head and hidden-state gradients; the CUDA path (Triton kernels) is modelled from TRL's source, "
            "the CPU path is measured.")


def tiles(num_tokens: int, vocab: int) -> list[tuple[int, int]]:
    """(tokens, vocabulary entries) of every tile, in the order ChunkedLogProbFunction runs them."""
    return [(min(TOKEN_CHUNK_SIZE, num_tokens - t0), min(VOCAB_CHUNK_SIZE, vocab - v0))
            for t0 in range(0, num_tokens, TOKEN_CHUNK_SIZE) for v0 in range(0, vocab, VOCAB_CHUNK_SIZE)]


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
    vocab = lin.w.shape[0]
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
    log_probs, entropy = _chunked_logprob(t, lin, x, targets, num, vocab, h, cdt, compact)
    del x, targets
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


def _chunked_logprob(t: Tape, lin, x: Fake, targets: Fake, num: int, vocab: int, h: int, cdt: str,
                     compact: bool) -> tuple[Fake, Fake]:
    """ChunkedLogProbFunction.forward; returns (log_probs, entropy) [N] (is_top1 is dropped by the caller's
    masking at once)."""
    stats = [t.new((num,), "fp32") for _ in range(NUM_STATISTICS)]
    mm_buf = t.new((min(num, TOKEN_CHUNK_SIZE), VOCAB_CHUNK_SIZE), cdt)
    for n, nc in tiles(num, vocab):
        cast = t.new((nc, h), cdt) if lin.w.dtype != cdt else None  # weight[start:end].to(compute_dtype)
        _tile_matmul(t, cdt, n, h, nc)
        del cast
        if not compact:
            _forward_tile(t, n, nc, cdt)
    log = t.new((num,), "fp32")  # torch.log(sum_exp)
    log_z = t.new((num,), "fp32")  # running_max + log
    del log
    div = t.new((num,), "fp32")  # x_sum_exp / sum_exp, for the entropy
    top1_parts = [t.new((num,), "bool"), t.new((num,), "bool")]  # >=, > (then &: is_top1)
    extra = {"num": num, "vocab": vocab, "h": h, "cdt": cdt, "compact": compact, "w": lin.w,
             "w_dtype": lin.w.dtype, "x_dtype": x.dtype}
    log_probs, entropy, top1 = t.op("chunked_logprob", [x, lin.w], [((num,), "fp32"), ((num,), "fp32"),
                                                                   ((num,), "bool")],
                                    [x, targets, log_z], _backward_rule, extra)
    t.save_result(entropy)
    del div, top1_parts, top1, log_z, stats, mm_buf  # forward returns: its locals are freed
    return log_probs, entropy


def _tile_matmul(t: Tape, cdt: str, n: int, h: int, nc: int) -> None:
    """torch.mm(hidden_chunk, w_chunk.t(), out=tile): oneDNN's workspace for a 16-bit CPU matmul."""
    if ops.onednn(t, cdt):
        ops.matmul_workspace(t, (cdt, 1, n, h, nc, False, True))


def _forward_tile(t: Tape, n: int, nc: int, cdt: str) -> None:
    """``_forward_tile`` (outputs log_probs, entropy, is_top1): its [n, nc] temporaries in the order the torch ops
    allocate and CPython frees them; the [n] ones beside them are a few bytes per token."""
    sim = t.sim
    f32 = n * nc * 4
    up = Storage(sim, f32) if cdt != "fp32" else None  # tile.float()
    a = Storage(sim, f32)  # _torch_transform: z * logit_scale
    del up
    z = Storage(sim, f32)  # z * inv_t
    del a
    # is_top1: before_target = arange(n_cols) < local.unsqueeze(-1) (kept until return), then
    # z.masked_fill(~before_target, -inf).amax(-1)
    before = Storage(sim, n * nc)
    inv = Storage(sim, n * nc)
    filled = Storage(sim, f32)
    del inv, filled
    diff = Storage(sim, f32)  # z - new_m.unsqueeze(-1)
    e = Storage(sim, f32)  # torch.exp(...)
    del diff
    ez = Storage(sim, f32)  # entropy: (e * z).sum(-1)
    del ez, e, z, before


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
    for n, nc in tiles(num, vocab):
        w_chunk = Storage(sim, nc * h * dtype_bytes(cdt)) if ex["w_dtype"] != cdt else None
        _tile_matmul(tape, cdt, n, h, nc)
        if not compact:
            _backward_tile(sim, n, nc, cdt)
        if not cuda_out_dtype and cdt != "fp32":  # a.float(), b.float()
            if grad_hidden is not None:
                copies = (Storage(sim, n * nc * 4), Storage(sim, nc * h * 4))
                del copies
            if grad_weight is not None:
                copies = (Storage(sim, n * nc * 4), Storage(sim, n * h * 4))
                del copies
        del w_chunk
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
    from planner.estimate.step import tape as tape_mod

    if tape.keep_param_grads and param.grad is None:
        g.tag = tape_mod._STOLEN_SUM
        tape.sim.grads += g.nbytes


def _backward_tile(sim, n: int, nc: int, cdt: str) -> None:
    """``_backward_tile`` (log-probability gradient only): its [n, nc] temporaries in allocation order."""
    f32 = n * nc * 4
    up = Storage(sim, f32) if cdt != "fp32" else None  # tile.float()
    y = Storage(sim, f32)  # * logit_scale
    del up
    z = Storage(sim, f32)  # y * inv_t
    log_p = Storage(sim, f32)  # z - log_z.unsqueeze(-1)
    p = Storage(sim, f32)  # torch.exp(log_p)
    grad = Storage(sim, f32)  # torch.zeros_like(z)
    arange = Storage(sim, nc * 8)  # torch.arange(vocab_start, vocab_start + n_cols)
    is_target = Storage(sim, n * nc)  # == targets.unsqueeze(-1)
    del arange
    as_float = Storage(sim, f32)  # is_target.float()
    diff = Storage(sim, f32)  # - p
    del as_float
    prod = Storage(sim, f32)  # grad_logprobs.unsqueeze(-1) * (...)
    del diff, prod  # grad += ...
    scaled = Storage(sim, f32)  # grad = grad * inv_t
    del grad
    final = Storage(sim, f32)  # grad * logit_scale, copied into the tile
    del final, scaled, y, z, log_p, p, is_target


def _passthrough(tape: Tape, node, grads_out):
    """CloneBackward0 / SumBackward0 (an expand): the incoming gradient is handed on."""
    return [grads_out[0]]
