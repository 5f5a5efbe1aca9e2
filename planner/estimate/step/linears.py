"""The step's shapes and switches (``Ctx``) and its linears on the symbolic tape: nn.Linear / HF Conv1D with a
peft LoRA adapter and a bitsandbytes 4-bit base (``Linear``, ``linear``), and peft's LoRA on an embedding
(``lora_embedding``). layers.py builds the blocks on them and re-exports these names.

Sources: peft 0.21 tuners/lora/layer.py (Linear.forward, Embedding.forward), tuners/lora/bnb.py
(Linear4bit.forward); bitsandbytes 0.50 nn/modules.py (Linear4bit.forward), autograd/_functions.py (MatMul4Bit:
the 4-bit weight is dequantized to the compute dtype for the matmul in forward and again in backward).
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.estimate.step import ops
from planner.estimate.step.tape import Fake, Param, Storage, Tape


@dataclass
class Ctx:
    """Shapes and switches of one simulated step (a plain mutable record, built by step/simulate.py)."""

    b: int
    s: int
    h: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: str  # activation/compute dtype (weights are held in it)
    device: str  # "cpu" or "cuda": picks kernels and dropout mask formats
    attn: str  # eager | sdpa | flash_attention_2
    attn_dropout: float
    resid_dropout: float
    adapter_dtype: str
    lora_dropout: float
    quantized: bool  # QLoRA: frozen base linears are bitsandbytes Linear4bit
    quant_compute_dtype: str = ""  # bnb_4bit_compute_dtype (the 4-bit matmuls run in it); "" = dtype
    # DeepSpeed ZeRO-3 replaces torch.nn.functional.linear with LinearFunctionForZeroStage3 (zero/linear.py,
    # memory_efficient_linear defaults to true): setup_context saves the input of every F.linear that autograd
    # records, whether or not the weight is trainable.
    zero3_linear: bool = False
    # peft's ``disable_adapter()`` (TRL's DPO reference pass of a LoRA policy, posttrain_step.py): every LoRA
    # layer runs its base layer alone
    lora_disabled: bool = False
    # --packing: one row of every token, its mask built from the reset position ids (packed.py)
    packed: bool = False


class Linear:
    """One nn.Linear (or HF Conv1D), optionally with a LoRA adapter (A: in x r, B: r x out) and 4-bit base."""

    __slots__ = ("w", "bias", "lora_a", "lora_b", "quant", "d_in", "d_out", "f_linear")

    def __init__(self, d_in: int, d_out: int, dtype: str, trainable: bool, *, bias: bool = False,
                 lora_rank: int = 0, adapter_dtype: str = "fp32", quant: bool = False, f_linear: bool = True) -> None:
        self.d_in, self.d_out = d_in, d_out
        self.f_linear = f_linear  # nn.Linear (F.linear); False for GPT-2's Conv1D (torch.addmm)
        self.w = Param((d_out, d_in), dtype, trainable)
        self.bias = Param((d_out,), dtype, trainable) if bias else None
        self.quant = quant
        self.lora_a = Param((lora_rank, d_in), adapter_dtype, True) if lora_rank else None
        self.lora_b = Param((d_out, lora_rank), adapter_dtype, True) if lora_rank else None


def linear(t: Tape, ctx: Ctx, x: Fake, lin: Linear) -> Fake:
    """Base linear (+ 4-bit dequantization) (+ peft LoRA: ``result + B(A(dropout(x.to(A.dtype)))) * scaling``)."""
    if lin.quant:
        if lin.lora_a is None or ctx.lora_disabled:
            return _linear_4bit(t, x, lin, ctx.quant_compute_dtype)
        return _lora_4bit(t, ctx, x, lin)
    result = ops.linear(t, x, lin.w, lin.bias, save_input=ctx.zero3_linear and lin.f_linear, conv1d=not lin.f_linear,
                        zero3=ctx.zero3_linear)
    if lin.lora_a is None or ctx.lora_disabled:
        return result
    result_dtype = result.dtype
    delta, xa = _lora_branch(t, ctx, x, lin)
    result = ops.add(t, result, delta)
    del delta
    out = ops.to(t, result, result_dtype)
    del result, xa
    return out


def _lora_branch(t: Tape, ctx: Ctx, x: Fake, lin: Linear) -> tuple[Fake, Fake]:
    """peft's LoRA branch, shared by ``lora.Linear`` and ``lora.bnb.Linear4bit`` (tuners/lora/layer.py, bnb.py):
    ``x = self._cast_input_dtype(x, lora_A.weight.dtype)`` (rebound: the cast ``xa`` lives until forward returns,
    so it is returned for the caller to drop), then ``lora_B(lora_A(dropout(x))) * scaling``. The two callers
    differ only in where the cast back to the result dtype comes: after the add (Linear) or before it (4-bit)."""
    xa = ops.to(t, x, lin.lora_a.dtype)
    d = ops.dropout(t, xa, ctx.lora_dropout, ctx.device)
    delta = ops.linear(t, d, lin.lora_a)
    del d
    delta = ops.linear(t, delta, lin.lora_b)
    return ops.mul_scalar(t, delta), xa


def lora_embedding(t: Tape, ctx: Ctx, ids: Fake, result: Fake, a: Param, b: Param, *, scaled: bool = False) -> Fake:
    """peft 0.21 ``lora.Embedding.forward`` (tuners/lora/layer.py) after the base lookup ``result``:
    ``after_A = F.embedding(x, lora_embedding_A.T)`` ([.., r], A is [r, vocab] in the adapter dtype; no LoRA
    dropout on embeddings), ``adapter_output = (after_A @ lora_embedding_B.T) * scaling`` (B is [dim, r]),
    ``* embed_scale`` for a scaled embedding (Gemma), then ``result = result + adapter_output`` and
    ``result.to(torch_result_dtype)``. The lookup saves the indices; its backward (embedding_dense_backward)
    makes a dense [vocab, r] gradient, whose transpose AccumulateGrad copies into A's layout
    (``clone_obey_contract``: the transposed gradient does not match A's strides) before freeing it. ``after_A``
    and ``adapter_output`` are the function's locals: alive until it returns."""
    result_dtype = result.dtype
    r = a.shape[0]
    after_a = t.op("embedding", [a], [(ids.shape + (r,), a.dtype)], [ids], _transposed_leaf_grad)[0]
    # the 3-D @ 2-D matmul folds to mm on [tokens, r] x [r, dim] (B.T is a view): saves both operands
    prod = t.op("linear", [after_a, b], [(ids.shape + (b.shape[0],), a.dtype)],
                [after_a] + ([b] if t.packs else []), _transposed_b_grad)[0]
    adapter_output = ops.mul_scalar(t, prod)  # * scaling
    del prod
    if scaled:
        adapter_output = ops.mul_scalar(t, adapter_output)  # * embed_scale (a 0-dim buffer)
    summed = ops.add(t, result, adapter_output)
    del result
    out = ops.to(t, summed, result_dtype)
    del summed, adapter_output, after_a
    return out


def _transposed_leaf_grad(t: Tape, node, grads_out):
    """A parameter used transposed (``lora_embedding_A.T``): its gradient is made in the transposed layout,
    then AccumulateGrad clones it into the parameter's layout and the first copy is freed."""
    p = node.edges[0][0]
    first = Storage(t.sim, p.numel * _bytes(p.dtype))
    second = Storage(t.sim, p.numel * _bytes(p.dtype))
    del first
    return [second]


def _transposed_b_grad(t: Tape, node, grads_out):
    """mm(after_A, B.T), MmBackward0 (mat2 first): mm_mat2_backward sees B.T column-major and computes
    ``(grad.t() @ after_A).t()``, so B's gradient comes in B's own layout (no copy); then grad @ B.T.t() for
    after_A, mm's [tokens, r] result viewed [.., r]."""
    edges = node.edges
    grads: list = [None, None]
    if edges[1] is not None:
        p = edges[1][0]
        grads[1] = Storage(t.sim, p.numel * _bytes(p.dtype))
    if edges[0] is not None:
        grads[0] = Storage(t.sim, _prod(edges[0][2]) * _bytes(edges[0][3]), "view" if len(edges[0][2]) > 2 else "")
    return grads


def _lora_4bit(t: Tape, ctx: Ctx, x: Fake, lin: Linear) -> Fake:
    """peft lora.bnb.Linear4bit.forward: ``result = base(x).clone()`` (a defensive copy), then without autocast
    ``output = B(A(dropout(x.to(A.dtype)))) * scaling``, cast back to the result dtype, and added.
    (Argument temporaries stay referenced by the caller in CPython, so the base call happens in here.)"""
    result = _linear_4bit(t, x, lin, ctx.quant_compute_dtype)
    result = t.op("clone", [result], [(result.shape, result.dtype)], [], ops._passthrough_rule)[0]
    expected = result.dtype
    out, xa = _lora_branch(t, ctx, x, lin)
    out = ops.to(t, out, expected)
    result = ops.add(t, result, out)
    del out, xa
    return result


def _linear_4bit(t: Tape, x: Fake, lin: Linear, compute: str = "") -> Fake:
    # bitsandbytes 0.50 nn.Linear4bit.forward: ``inp_dtype = x.dtype; x = x.to(self.compute_dtype)``, then
    # ``matmul_4bit(x, weight).to(inp_dtype)``. After peft's prepare_model_for_kbit_training the residual stream
    # is fp32, so the input is cast to the compute dtype and the output back to fp32 (neither cast saves).
    # MatMul4Bit: dequantize_4bit -> [out, in] in the compute dtype, F.linear, free; nothing saved but the
    # packed weight. Backward dequantizes again for grad_A (rule below).
    inp_dtype = x.dtype
    xc = ops.to(t, x, compute or inp_dtype)
    w_dq = t.scratch(lin.d_in * lin.d_out * _bytes(xc.dtype))
    out = t.op("matmul_4bit", [xc], [(x.shape[:-1] + (lin.d_out,), xc.dtype)], [], _dequant_rule(lin, xc.dtype))[0]
    # gemm_4bit's default implementation (bitsandbytes/backends/default/ops.py): F.linear(A, B_dq)
    _workspace(t, xc.dtype, _prod(x.shape[:-1]), lin.d_in, lin.d_out, b_t=True)
    del w_dq, xc
    return ops.to(t, out, inp_dtype)


def _dequant_rule(lin: Linear, dtype: str):
    def rule(t: Tape, node, grads_out):
        w_dq = t.scratch(lin.d_in * lin.d_out * _bytes(dtype))
        grads = [Storage(t.sim, _prod(node.edges[0][2]) * _bytes(node.edges[0][3]))]
        # MatMul4Bit.backward: torch.matmul(grad_output, dequantize_4bit(B)) -- [tokens, out] @ [out, in]
        _workspace(t, dtype, _prod(node.edges[0][2][:-1]), lin.d_out, lin.d_in, b_t=False)
        del w_dq
        return grads

    return rule


def _workspace(t: Tape, dtype: str, m: int, k: int, n: int, *, b_t: bool) -> None:
    if ops.onednn(t, dtype):
        ops.matmul_workspace(t, (dtype, 1, m, k, n, False, b_t))


def _bytes(dtype: str) -> int:
    from planner.units import dtype_bytes

    return dtype_bytes(dtype)


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
