"""Transformer building blocks on the symbolic tape, written line by line like transformers 5.x writes them.

Sources (transformers 5.23 and 5.24, which allocate alike: planner/modelled.py): models/llama/modeling_llama.py (LlamaRMSNorm, LlamaAttention, LlamaMLP,
apply_rotary_pos_emb, repeat_kv, eager_attention_forward), integrations/sdpa_attention.py, models/gpt2/
modeling_gpt2.py (GPT2Attention, GPT2MLP, Conv1D), models/gemma2/modeling_gemma2.py (Gemma2RMSNorm, softcapping),
models/mixtral/modeling_mixtral.py + integrations/moe.py (router, grouped_mm experts), step/simulate.py
(NewGELUActivation); peft 0.21 tuners/lora/layer.py (Linear.forward); bitsandbytes 0.50 autograd/_functions.py
(MatMul4Bit: the 4-bit weight is dequantized to the compute dtype for the matmul in forward and again in backward).

``Ctx``, the linears (LoRA, 4-bit) and peft's LoRA embedding are in linears.py, re-exported here.

Local variables are kept exactly as long as the HF code keeps them (function scope), because their storages
are freed when the last reference goes, which is what sets the forward peak.
"""

from __future__ import annotations

from planner.estimate.step import autocast, ops, packed
from planner.estimate.step.linears import Ctx, Linear, _prod, linear, lora_embedding
from planner.estimate.step.tape import Fake, Param, Tape

# ---------------------------------------------------------------- norms


def rms_norm(t: Tape, x: Fake, w: Param) -> Fake:
    """LlamaRMSNorm (also Qwen2, Mistral, Mixtral, Qwen3): fp32 math, ``weight * hs.to(input_dtype)``."""
    input_dtype = x.dtype
    hs = ops.to(t, x, "fp32")
    variance = ops.mean_last(t, ops.pow_(t, hs))
    hs = ops.mul(t, hs, ops.rsqrt(t, ops.add_scalar(t, variance)))
    del variance
    return ops.mul(t, w, ops.to(t, hs, input_dtype))


def gemma_rms_norm(t: Tape, x: Fake, w: Param) -> Fake:
    """Gemma2RMSNorm: ``_norm(x.float()) * (1.0 + weight.float())``, then ``type_as(x)``."""
    xf = ops.to(t, x, "fp32")
    variance = ops.mean_last(t, ops.pow_(t, xf))
    out = ops.mul(t, xf, ops.rsqrt(t, ops.add_scalar(t, variance)))
    del xf, variance
    scale = t.op("one_plus_w", [w], [(w.shape, "fp32")], [])[0]  # 1.0 + weight.float(): [h], fp32
    out = ops.mul(t, out, scale)
    del scale
    return ops.to(t, out, x.dtype)


def layer_norm(t: Tape, x: Fake, w: Param, bias: Param) -> Fake:
    """nn.LayerNorm: native_layer_norm saves input, mean and rstd ([N, 1] fp32 for 16-bit inputs)."""
    n = _prod(x.shape[:-1])
    mean = t.new((n,), "fp32")
    rstd = t.new((n,), "fp32")
    # native_layer_norm saves weight and bias too (derivatives.yaml); only activation offloading copies them
    params = [w, bias] if t.packs else []
    out = t.op("layer_norm", [x, w, bias], [(x.shape, x.dtype)], [x, mean, rstd] + params)[0]
    del mean, rstd
    return out


# ---------------------------------------------------------------- attention pieces


def rotary(t: Tape, q: Fake, cos: Fake, sin: Fake) -> Fake:
    """``(q * cos) + (rotate_half(q) * sin)``: the muls save cos and sin (no grad), nothing of q."""
    a = ops.mul(t, q, cos)
    half = t.op("neg_half", [q], [(q.shape[:-1] + (q.shape[-1] // 2,), q.dtype)], [])[0]
    rot = t.op("cat", [half, q], [(q.shape, q.dtype)], [])[0]
    del half
    bpart = ops.mul(t, rot, sin)
    del rot
    return ops.add(t, a, bpart)


def qkv_projections(t: Tape, ctx: Ctx, x: Fake, w: dict, fused: bool) -> tuple[Fake, Fake, Fake]:
    """q [b, heads, s, d], k and v [b, kv_heads, s, d]: three projections viewed per head, or one fused projection
    (phi3 qkv_proj, falcon query_key_value) split into views of its output (``w["qkv"]``)."""
    b, s, a, kv, d = ctx.b, ctx.s, ctx.heads, ctx.kv_heads, ctx.head_dim
    if fused:
        qkv = linear(t, ctx, x, w["qkv"])
        q, k, v = t.op("split", [qkv], [((b, a, s, d), qkv.dtype), ((b, kv, s, d), qkv.dtype),
                                         ((b, kv, s, d), qkv.dtype)], [], alias=qkv.st)
        del qkv
        return q, k, v
    q = t.view(linear(t, ctx, x, w["q"]), (b, a, s, d))
    k = t.view(linear(t, ctx, x, w["k"]), (b, kv, s, d))
    v = t.view(linear(t, ctx, x, w["v"]), (b, kv, s, d))
    return q, k, v


def repeat_kv(t: Tape, x: Fake, n_rep: int) -> Fake:
    """expand + reshape: a copy of [b, heads, s, d] when n_rep > 1; backward sums over the repeats. With a single
    KV head the reshape merges a size-1 dim and stays a view of x (heads at stride 0)."""
    if n_rep == 1:
        return x
    b, kv, s, d = x.shape
    alias = x.st if kv == 1 else None
    return t.op("repeat_kv", [x], [((b, kv * n_rep, s, d), x.dtype)], [], alias=alias)[0]


def mask_add(t: Tape, scores: Fake, mask: Fake | None) -> Fake:
    return scores if mask is None else ops.add(t, scores, mask)


def eager_core(t: Tape, ctx: Ctx, q: Fake, k: Fake, v: Fake, mask: Fake | None, *, softmax_fp32: bool,
               softcap: bool = False, copy_q: bool = False, copy_k: bool = False, copy_v: bool = True):
    """QK^T, (softcap), mask, softmax, dropout, PV; returns the [b, s, heads, d] contiguous output and the
    attention weights (returned by the HF attention module and held by the decoder layer's ``_`` until it
    returns).

    Llama-style (``softmax(..., dtype=float32).to(q.dtype)``) keeps an fp32 softmax output and a 16-bit copy;
    GPT-2 keeps the softmax output in the activation dtype. Dropout on the probabilities keeps its mask.
    """
    b, a, s, d = q.shape
    # torch.matmul(query, key_states.transpose(2, 3)): k^T is a transposed view unless the reshape copies it
    scores = ops.matmul(t, q, k, (b, a, s, s), copy_a=copy_q, copy_b=copy_k, b_t=True)
    scores = ops.mul_scalar(t, scores)  # * scaling
    if softcap:
        scores = ops.mul_scalar(t, scores)  # / softcap
        scores = ops.unary_saving_output(t, "tanh", scores)
        scores = ops.mul_scalar(t, scores)  # * softcap
    scores = mask_add(t, scores, mask)
    if softmax_fp32:
        probs = ops.unary_saving_output(t, "softmax", scores, dtype="fp32")
        del scores
        probs = ops.to(t, probs, q.dtype)
    else:
        probs = ops.unary_saving_output(t, "softmax", scores)
        del scores
    probs = ops.dropout(t, probs, ctx.attn_dropout, ctx.device)
    out = ops.matmul(t, probs, v, (b, a, s, d), copy_b=copy_v)
    # .transpose(1, 2).contiguous(): a copy; its backward hands the gradient on.
    return t.op("contiguous", [out], [((b, s, a, d), out.dtype)], [], ops._passthrough_rule)[0], probs


def sdpa_math(t: Tape, ctx: Ctx, q: Fake, k: Fake, v: Fake, n_rep: int, strided: bool = False) -> Fake:
    """SDPA's composite math path (aten/src/ATen/native/transformers/attention.cpp,
    ``_scaled_dot_product_attention_math``), taken on CPU when the flash kernel cannot run (dropout > 0):
    16-bit q, k, v are upcast to fp32 on CPU; ``q * sqrt(scale)`` and ``k^T * sqrt(scale)`` are saved by the
    matmul; a causal [s, s] mask is built; ``_safe_softmax`` saves its fp32 output, dropout its noise and
    output, the PV matmul the (repeated) value; the fp32 result is cast back to the input dtype. ``strided``:
    q/k/v are views of a fused projection (GPT-2), so matmul's reshapes copy them (the copies are saved)."""
    if t.autocast:
        q, k, v = autocast.cast(t, q), autocast.cast(t, k), autocast.cast(t, v)
    b, a, s, d = q.shape
    acc = "fp32" if (ctx.device == "cpu" and q.dtype != "fp32") else q.dtype
    qa = ops.to(t, q, acc)
    ka = ops.to(t, k, acc)
    va = ops.to(t, v, acc)
    qs = ops.mul_scalar(t, qa)
    del qa
    causal_bool = t.new((s, s), "bool")
    causal = t.new((s, s), acc)
    del causal_bool
    kr = repeat_kv(t, ka, n_rep)
    vr = repeat_kv(t, va, n_rep)
    del ka, va
    ks = ops.mul_scalar(t, kr)
    del kr
    mqa = n_rep > 1 and k.shape[1] == 1  # repeat_kv of one KV head is a stride-0 view
    scores = ops.matmul(t, qs, ks, (b, a, s, s), copy_a=strided, copy_b=strided or mqa)
    del qs, ks
    probs = ops.unary_saving_output(t, "softmax", scores)  # attn.add_(mask) in place, then _safe_softmax
    del scores, causal
    probs = ops.dropout(t, probs, ctx.attn_dropout, ctx.device)
    out = ops.matmul(t, probs, vr, (b, a, s, d), copy_b=strided or n_rep == 1 or mqa)
    del probs, vr
    out = ops.to(t, out, q.dtype)
    # the output is [b, heads, s, d]; transpose(1, 2).contiguous() copies it
    return t.op("contiguous", [out], [((b, s, a, d), out.dtype)], [], ops._passthrough_rule)[0]


def sdpa_core(t: Tape, ctx: Ctx, q: Fake, k: Fake, v: Fake, qkv_base: Fake | None = None,
              q_contiguous: bool = False, mask: Fake | None = None) -> Fake:
    """``F.scaled_dot_product_attention`` with a memory-efficient kernel (CPU flash, CUDA flash/efficient):
    saves q, k, v (the tensors passed in; views keep their base alive: ``qkv_base``), the output and an fp32
    logsumexp [b, heads, s]. The output takes q's layout: q made by elementwise ops on a transposed projection
    is laid out [b, s, heads, d], so transpose().contiguous() is free; a contiguous [b, heads, s, d] q (phi3's
    partial-rotary cat) makes that .contiguous() a copy, which o_proj then saves."""
    if t.autocast:  # scaled_dot_product_attention is on autocast's lower-precision list (autocast.py)
        q, k, v = autocast.cast(t, q), autocast.cast(t, k), autocast.cast(t, v)
    b, a, s, d = q.shape
    # --packing: the additive mask this call converts before the kernel runs, which saves it (packed.py)
    converted = [] if mask is None else [packed.sdpa_saved_mask(t, mask, q.dtype)]
    lse = t.new((b, a, s), "fp32")
    saved = ([q, k, v, lse] if qkv_base is None else [qkv_base, lse]) + converted
    if ctx.device != "cpu" and ctx.attn_dropout > 0:
        saved.append(t.new((2,), "int64"))  # philox seed and offset
    out = t.op("sdpa", [q, k, v], [((b, s, a, d), q.dtype)], saved)[0]
    t.save_result(out)
    del lse, converted
    if q_contiguous:
        return t.op("contiguous", [out], [((b, s, a, d), out.dtype)], [], ops._passthrough_rule)[0]
    return out


# ---------------------------------------------------------------- MLPs


def swiglu_mlp(t: Tape, ctx: Ctx, x: Fake, gate: Linear, up: Linear, down: Linear) -> Fake:
    """``down(act(gate(x)) * up(x))`` (LlamaMLP, Qwen2MLP, Gemma2MLP with gelu-tanh)."""
    g = ops.unary_saving_input(t, "act", linear(t, ctx, x, gate))
    u = linear(t, ctx, x, up)
    p = ops.mul(t, g, u)
    del g, u
    return linear(t, ctx, p, down)


def new_gelu(t: Tape, x: Fake) -> Fake:
    """NewGELUActivation (GPT-2's gelu_new), a Python composite:
    ``0.5 * x * (1.0 + tanh(sqrt(2/pi) * (x + 0.044715 * pow(x, 3.0))))`` -- pow saves x, tanh its output,
    and the final product saves both factors."""
    half_x = ops.mul_scalar(t, x)
    p = ops.pow_(t, x)
    inner = ops.mul_scalar(t, p)
    del p
    inner2 = ops.add(t, x, inner)
    del inner
    inner3 = ops.mul_scalar(t, inner2)
    del inner2
    th = ops.unary_saving_output(t, "tanh", inner3)
    del inner3
    one_plus = ops.add_scalar(t, th)
    del th
    return ops.mul(t, half_x, one_plus)


__all__ = ["Ctx", "Linear", "eager_core", "gemma_rms_norm", "layer_norm", "linear", "lora_embedding", "mask_add",
           "new_gelu", "qkv_projections", "repeat_kv", "rms_norm", "rotary", "sdpa_core", "sdpa_math",
           "swiglu_mlp"]
