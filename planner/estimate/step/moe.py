"""Mixture-of-experts blocks on the symbolic tape (transformers 5.23/5.24 models/mixtral/modeling_mixtral.py,
integrations/moe.py ``grouped_mm_experts_forward``; peft 0.21 tuners/lora/layer.py ``ParamWrapper``).

The router is a bare [E, H] weight; the experts are fused 3-D parameters [E, 2I, H] (gate and up) and
[E, H, I] (down) run with grouped matmuls over the tokens sorted by expert. Each token's top-k routing makes
k copies of it: the selected rows [b*s*k, H], the gate/up projection [b*s*k, 2I], the activation and product
[b*s*k, I] and the weighted down projection [b*s*k, H] (fp32 after the multiplication by the fp32 routing
weights) are what backward keeps.
"""

from __future__ import annotations

from planner.estimate.step import ops
from planner.estimate.step.layers import Ctx, _prod
from planner.estimate.step.tape import Fake, Param, Tape


class Experts:
    """Fused expert weights [E, 2I, H] and [E, H, I] (transformers 5 MixtralExperts) and the [E, H] router.

    ``lora_rank``: peft's 'all-linear' on transformers 5 MoE wraps the router and both expert parameters in
    ``lora.ParamWrapper`` (peft/tuners/lora/layer.py): during forward the parameter is replaced through
    ``nn.utils.parametrize`` by ``W + delta`` -- for the expert stacks ``torch.baddbmm(W, lhs, rhs)``
    (``_LoraFactorsProxy``), a full-size copy of each expert stack in the weight dtype that the grouped matmul
    saves for backward, whose gradient is a full-size tensor again before it is reduced to the factors.
    """

    __slots__ = ("router", "gate_up", "down", "num_experts", "top_k", "inter", "lora_rank", "dtype",
                 "adapter_dtype", "lora_router", "lora_gate_up", "weights_in_model_dtype")

    def __init__(self, h: int, inter: int, num_experts: int, top_k: int, dtype: str, trainable: bool,
                 lora_rank: int = 0, adapter_dtype: str = "fp32") -> None:
        self.router = Param((num_experts, h), dtype, trainable)
        self.gate_up = Param((num_experts, 2 * inter, h), dtype, trainable)
        self.down = Param((num_experts, h, inter), dtype, trainable)
        self.num_experts, self.top_k, self.inter = num_experts, top_k, inter
        self.lora_rank = lora_rank  # down_proj (rank 0: not adapted)
        self.lora_router = lora_rank
        self.lora_gate_up = 2 * lora_rank
        self.dtype = dtype
        self.adapter_dtype = adapter_dtype
        self.weights_in_model_dtype = False


def _lora_param(t: Tape, ex: Experts, p: Param, rank: int, d_in: int, d_out: int, experts: int) -> Param | Fake:
    """The parametrized weight of a LoRA-wrapped parameter (peft ParamWrapper), a new tensor of W's size.

    Expert stacks (``_LoraFactorsProxy``): ``baddbmm(W, lhs.to(W.dtype), rhs.to(W.dtype))`` with lhs
    [E, in, r] and rhs [E, r, out] (adapters in fp32 are cast to the weight dtype, and those casts are what
    baddbmm saves). The router (one "expert", ``_LoraParameterProxy``): ``W + (B @ A * scaling).to(W.dtype)``.
    Backward gets a full-size gradient of W' and reduces it to the factors (fp32 gradients of A and B).
    """
    if rank == 0:
        return p
    factors = Param((rank * experts * (d_in + d_out),), ex.adapter_dtype, True)
    if experts == 1:
        delta = t.op("lora_delta", [factors], [(p.shape, ex.adapter_dtype)], [])[0]
        delta = ops.to(t, delta, p.dtype)
        return t.op("lora_param", [delta], [(p.shape, p.dtype)], [])[0]
    lhs = t.op("lora_lhs", [factors], [((experts * d_in * rank,), p.dtype)], [])[0]
    rhs = t.op("lora_rhs", [factors], [((experts * d_out * rank,), p.dtype)], [])[0]
    if ex.adapter_dtype == p.dtype:
        # the factors are views of the adapter weights: nothing new is saved
        lhs = Fake(lhs.shape, lhs.dtype, None, lhs.node)
        rhs = Fake(rhs.shape, rhs.dtype, None, rhs.node)
    return t.op("lora_param", [lhs, rhs], [(p.shape, p.dtype)], [lhs, rhs])[0]


def moe_block(t: Tape, ctx: Ctx, x: Fake, ex: Experts) -> Fake:
    """MixtralSparseMoeBlock with the default ``grouped_mm`` experts (integrations/moe.py)."""
    n = _prod(x.shape[:-1])
    h = x.shape[-1]
    k, e = ex.top_k, ex.num_experts
    s = n * k
    # router: F.linear -> logits [n, E]; softmax(logits.float()) saved; topk keeps its indices.
    router_w = _lora_param(t, ex, ex.router, ex.lora_router, h, e, 1)
    logits = _weight_linear(t, x, router_w, (n, e), save_input=ctx.zero3_linear)
    del router_w
    probs = ops.unary_saving_output(t, "softmax", ops.to(t, logits, "fp32"))
    top_idx = t.new((n, k), "int64")
    top_val = t.op("topk", [probs], [((n, k), "fp32")], [top_idx])[0]
    del probs
    top_val = t.op("renorm", [top_val], [((n, k), "fp32")], [top_val])[0]  # /= sum: saves the sum and values
    if ex.weights_in_model_dtype:  # Qwen2/3-MoE routers: router_top_value.to(router_logits.dtype)
        top_val = ops.to(t, top_val, x.dtype)
    # experts: sort by expert, gather the routed tokens, two grouped matmuls, weight, unpermute, sum over k.
    perm = t.new((s,), "int64")
    ids_sorted = t.new((s,), "int64")
    tok_idx = t.new((s,), "int64")  # perm // top_k
    selected = t.op("index", [x], [((s, h), x.dtype)], [tok_idx])[0]
    weights_g = t.op("index", [top_val], [((s, 1), top_val.dtype)], [perm])[0]  # sample_weights[perm][:, None]
    del top_val
    # peft's transformers-5 weight conversion fuses gate and up adapters: the gate_up stack has rank 2r
    # (peft/utils/transformers_weight_conversion.py; lora_A is [2r*E, H] for a rank-r config).
    gate_up_w = _lora_param(t, ex, ex.gate_up, ex.lora_gate_up, h, 2 * ex.inter, e)
    proj = _weight_linear(t, selected, gate_up_w if isinstance(gate_up_w, Fake) else _Grouped(ex.gate_up),
                          (s, 2 * ex.inter))
    # selected (a local of grouped_mm_experts_forward) and gate_up_w (cached by nn.utils.parametrize.cached())
    # stay alive until the experts return
    gate = t.view(proj, (s, ex.inter))
    act = ops.unary_saving_input(t, "act", gate)  # saves gate: a view, keeps proj alive
    up = t.view(proj, (s, ex.inter))
    inner = ops.mul(t, act, up)
    del act, up, gate, proj
    down_w = _lora_param(t, ex, ex.down, ex.lora_rank, ex.inter, h, e)
    down = _weight_linear(t, inner, down_w if isinstance(down_w, Fake) else _Grouped(ex.down), (s, x.shape[-1]))
    del inner
    weighted = ops.mul(t, down, weights_g)  # proj_out (down) and sample_weights_g stay referenced
    inv_perm = t.new((s,), "int64")
    unperm = t.op("index", [weighted], [((s, h), weighted.dtype)], [inv_perm])[0]
    del weighted
    summed = t.op("sum_k", [unperm], [((n, h), unperm.dtype)], [])[0]
    out = t.view(ops.to(t, summed, x.dtype), x.shape)  # .reshape(batch_size, sequence_length, hidden_dim)
    del unperm, perm, ids_sorted, tok_idx, top_idx, inv_perm, gate_up_w, down_w, summed, selected, down
    del weights_g
    return out


def _weight_linear(t: Tape, x: Fake, w, out_shape, save_input: bool = False) -> Fake:
    """A (grouped) matmul with a parameter or a computed weight: saves x if the weight needs a gradient (or
    ``save_input``: ZeRO-3's F.linear) and the weight if x needs one (a Param is never counted)."""
    if isinstance(w, Param):
        return t.op("linear", [x, w], [(out_shape, x.dtype)], [x] if (w.trainable or save_input) else [])[0]
    saved = ([x] if (w.requires_grad or save_input) else []) + ([w] if x.requires_grad else [])
    return t.op("linear", [x, w], [(out_shape, x.dtype)], saved)[0]


class _Grouped(Param):
    """A grouped-mm weight seen as one linear of [out, in] (for the saved-input rule and the output width)."""

    def __init__(self, p: Param) -> None:
        super().__init__((p.shape[1], p.shape[2]), p.dtype, p.trainable)
        self.grad = p.grad
        self._full = p

    @property
    def numel(self) -> int:
        return self._full.numel
