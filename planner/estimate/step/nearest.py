"""Causal LM families planner has no layer of its own for: the nearest validated layer, and what is refused.

A model type the activation model does not know (``gpt_neox``, ``falcon``, ``olmo``, ...) gets its parameters
exactly from transformers on the meta device (planner.meta) and its activations from the validated layer it
resembles most, chosen by its architecture as that module inventory and the config (with transformers' class
defaults) show it:

- the llama layer (step/simulate.py, validated against CPU measurements) when the layers have RMSNorm, separate
  q/k/v/o projections, a gated MLP (gate, up, down) and a sequential residual;
- otherwise GPT-2's layer (LayerNorm, one fused QKV projection, an ungated MLP with GELU), adjusted by what the
  config says: rotary embeddings on q and k (llama's, with the contiguous copy of a partial rotary as Phi-3
  makes it) instead of learned positions, a parallel residual (attention and MLP both read the layer input,
  ``x + attn(ln1(x)) + mlp(ln2(x))``, one shared norm when the layer has one), separate or grouped K/V
  projections, RMSNorm or a gated MLP.

Every LoRA adapter goes on the stand-in of the module it adapts (roles: qkv, q, k, v, o, gate, up, down). The
estimate says so in a note; a tiny ``gpt_neox`` measured on CPU (``planner profile``) is the data point it
quotes. Encoders and encoder-decoders (BERT, RoBERTa, T5, BART, ...) are not causal language models and are
refused in one sentence (causal.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from planner.estimate.count.params import count_params
from planner.meta import config_with_defaults
from planner.specs import ModelSpec

# Families whose eager attention is written as modeling_falcon.py's FalconAttention.forward (no ALiBi):
# ``scores = q @ k.T; scores /= sqrt(d)`` (in place), ``F.softmax(scores + mask, dtype=hidden_states.dtype)``
# (the softmax in the activation dtype, while the scores and the masked sum are both alive), ``probs @ v``.
_FALCON_EAGER = ("falcon",)


# ------------------------------------------------------------------------------------------ the description


@dataclass(frozen=True)
class Arch:
    """What the tape needs to know about an unknown family's decoder layer (sizes come from the ModelSpec)."""

    model_type: str
    layout: str  # "llama": the llama layer; "gpt2": GPT-2's layer with the adjustments below
    norm: str  # "rms" or "layer"
    norm_bias: bool
    shared_norm: bool  # one norm per layer, read by attention and MLP (Falcon-7B)
    fused_qkv: bool
    kv_heads: int
    rotary: bool
    partial_rotary: bool
    rotary_cat: bool  # q and k rebuilt by torch.cat([rotated part, pass-through]) (a copy), even at factor 1
    learned_positions: int  # rows of a learned position embedding (0: none)
    parallel: bool
    gated: bool
    act: str
    attn_dropout: float
    resid_dropout: float
    tied: bool
    roles: tuple[tuple[str, str, bool], ...]  # (role, module path, has bias)

    def path(self, role: str) -> str:
        return next((p for r, p, _ in self.roles if r == role), "")

    def bias(self, role: str) -> bool:
        return next((b for r, _, b in self.roles if r == role), False)

    def describe(self) -> str:
        if self.layout == "llama":
            base = "the llama layer (RMSNorm, rotary embeddings, SwiGLU MLP)"
            extras = []
        else:
            parts = ["LayerNorm" if self.norm == "layer" else "RMSNorm",
                     "fused QKV" if self.fused_qkv else "separate Q/K/V",
                     ("gated " if self.gated else "") + f"{self.act} MLP"]
            base = f"GPT-2's layer ({', '.join(parts)})"
            extras = []
            if self.rotary:
                extras.append("partial rotary embeddings" if self.partial_rotary else "rotary embeddings")
            if self.parallel:
                extras.append("a parallel residual" + (" with one shared norm" if self.shared_norm else ""))
            if self.fused_qkv and self.kv_heads == 1:
                extras.append("multi-query attention")
        return base + (" with " + " and ".join(extras) if extras else "")


# What measurements say, per family (tests/test_nearest_family.py: tiny random-weight models on CPU, torch
# profiler vs the simulated step, fp32 and bf16, eager and sdpa, checkpointing on and off, full and LoRA).
MEASURED = {
    "gpt_neox": "a tiny gpt_neox measured on CPU came within 1.4% at the end of forward and within 0.9% at the "
                "forward and backward peaks",
    "falcon": "a tiny falcon measured on CPU came within 1.1% at the end of forward and at the backward peak; its "
              "forward peak with eager attention and checkpointing in fp32 was 8-15% low",
}


def note(arch: Arch) -> str:
    measured = MEASURED.get(arch.model_type, f"no {arch.model_type} model has been measured")
    return (
        f"model type {arch.model_type!r} has no activation model of its own: its parameters are counted exactly "
        f"(transformers on the meta device) and its activations follow the nearest validated family, "
        f"{arch.describe()}, so they are approximate ({measured})."
    )


def _get(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


_Q, _K, _V = ("q_proj", "query", "q", "wq"), ("k_proj", "key", "k", "wk"), ("v_proj", "value", "v", "wv")
_OUT = ("o_proj", "dense", "out_proj", "c_proj", "wo", "o", "proj", "out")
_GATE = ("gate_proj", "w1", "gate", "wi_0", "fc_gate")


@lru_cache(maxsize=64)
def _describe(model: ModelSpec, config_key: str) -> Arch | None:
    counts = count_params(model)
    cfg = {**config_with_defaults(model), **(model.config or {})}
    h, a, d = model.hidden_size, model.num_heads, model.head_dim
    per_layer = [g for g in counts.modules if ".*." in g.path and g.kind == "linear"]
    attn = [g for g in per_layer if g.component == "attention"]
    mlp = [g for g in per_layer if g.component == "mlp"]
    norms = [g for g in counts.modules if g.kind == "norm" and ".*." in g.path]
    if counts.num_experts or not attn or not mlp:
        return None  # MoE or an inventory not recognised: the llama layer, as before (note in build_family)
    roles: list[tuple[str, str, bool]] = []
    out = next((g for g in reversed(attn) if g.name in _OUT and g.out_features == h), None)
    out = out or next((g for g in reversed(attn) if g.out_features == h), None)
    inputs = [g for g in attn if g is not out and g.in_features == h]
    if out is None or not inputs:
        return None
    roles.append(("o", out.path, out.bias))
    kv = a
    if len(inputs) == 1:
        qkv = inputs[0]
        roles.append(("qkv", qkv.path, qkv.bias))
        n = qkv.out_features // d - a if qkv.out_features % d == 0 else 0
        kv = n // 2 if n >= 2 and n % 2 == 0 else a
    else:
        by_name = {}
        for role, names in (("q", _Q), ("k", _K), ("v", _V)):
            by_name[role] = next((g for g in inputs if g.name in names), None)
        if any(v is None for v in by_name.values()):
            by_name = dict(zip(("q", "k", "v"), inputs[:3], strict=False))  # registration order
        for role in ("q", "k", "v"):
            g = by_name.get(role)
            if g is not None:
                roles.append((role, g.path, g.bias))
        k = by_name.get("k")
        if k is not None and k.out_features % d == 0:
            kv = max(1, k.out_features // d)
    ups = [g for g in mlp if g.in_features == h]
    downs = [g for g in mlp if g.out_features == h and g not in ups]
    if not ups or not downs:
        return None
    gated = len(ups) >= 2
    if gated:
        gate = next((g for g in ups if g.name in _GATE), ups[0])
        up = next(g for g in ups if g is not gate)
        roles.append(("gate", gate.path, gate.bias))
    else:
        up = ups[0]
    roles.append(("up", up.path, up.bias))
    roles.append(("down", downs[0].path, downs[0].bias))
    emb = next((g for g in counts.modules if g.kind == "embedding" and g.component == "embedding"), None)
    if emb is not None:
        roles.append(("embedding", emb.path, False))
    if counts.head is not None:
        roles.append(("lm_head", counts.head.path, counts.head.bias))
    norm = "rms" if (_get(cfg, "rms_norm_eps") is not None and _get(cfg, "layer_norm_eps", "layer_norm_epsilon")
                     is None) else "layer"
    norm_bias = any(g.bias for g in norms)
    rope = cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"), dict) else {}
    alibi = bool(cfg.get("alibi"))
    positions = next((g for g in counts.modules if g.kind == "embedding" and g.component == "other"), None)
    rotary = not alibi and positions is None and any(
        cfg.get(k) is not None for k in ("rope_parameters", "rope_theta", "rotary_pct", "rotary_emb_base",
                                         "rope_scaling", "partial_rotary_factor", "rotary_dim"))
    factor = _get(rope, "partial_rotary_factor") or _get(cfg, "partial_rotary_factor", "rotary_pct", default=1.0)
    rotary_dim = cfg.get("rotary_dim")
    partial = rotary and ((isinstance(factor, (int, float)) and factor < 1.0)
                          or (isinstance(rotary_dim, int) and rotary_dim < d))
    # a family whose config has a partial-rotary setting writes apply_rotary_pos_emb with q[..., :rotary_dim] and
    # torch.cat([q_embed, q_pass], dim=-1) (GPT-NeoX, Phi, StableLM): a copy of q and k at any factor
    sliced = rotary and ("partial_rotary_factor" in rope or any(
        k in (model.config or {}) or cfg.get(k) is not None for k in ("rotary_pct", "partial_rotary_factor", "rotary_dim")))
    parallel = bool(_get(cfg, "use_parallel_residual", "parallel_attn", "parallel_residual", default=False)) or \
        model.model_type in ("gptj", "phi", "codegen")
    act = str(_get(cfg, "hidden_act", "activation_function", "activation", "hidden_activation", default="gelu"))
    layout = "llama" if (norm == "rms" and gated and len(inputs) == 3 and not parallel and rotary) else "gpt2"
    return Arch(
        model_type=model.model_type, layout=layout, norm=norm, norm_bias=norm_bias,
        shared_norm=len({g.path for g in norms}) == 1, fused_qkv=len(inputs) == 1, kv_heads=kv, rotary=rotary,
        partial_rotary=bool(partial), rotary_cat=bool(sliced or partial), learned_positions=positions.in_features if positions else 0,
        parallel=parallel, gated=gated, act=act,
        attn_dropout=float(_get(cfg, "attention_dropout", "attn_pdrop", "attention_probs_dropout_prob", default=0.0)),
        resid_dropout=float(_get(cfg, "hidden_dropout", "resid_pdrop", "hidden_dropout_prob", default=0.0)),
        tied=counts.tied, roles=tuple(roles),
    )  # fmt: skip


def describe(model: ModelSpec) -> Arch | None:
    """The nearest validated layer for an unknown family, or None when its inventory is not recognised (MoE,
    no attention or MLP linears found), which keeps the llama layer."""
    return _describe(model, model.config_json())


# ------------------------------------------------------------------------------------------ the layer (tape)


def layer_weights(fam, i: int) -> dict:
    """The stand-in layer's weights: norms, attention and MLP linears with the adapters of the modules they
    stand for (``fam._lin`` with the module path of each role)."""
    from planner.estimate.step.tape import Param

    arch: Arch = fam.arch
    m, c = fam.model, fam.ctx
    h, a, d, kv = m.hidden_size, m.num_heads, m.head_dim, arch.kv_heads
    w: dict = {"ln1": fam._norm(), "ln1_b": Param((h,), c.dtype, fam.full and arch.norm_bias)}
    if not arch.shared_norm:
        w.update(ln2=fam._norm(), ln2_b=Param((h,), c.dtype, fam.full and arch.norm_bias))
    if arch.fused_qkv:
        w["qkv"] = fam._lin(arch.path("qkv"), h, (a + 2 * kv) * d, arch.bias("qkv"))
    else:
        w.update(q=fam._lin(arch.path("q"), h, a * d, arch.bias("q")),
                 k=fam._lin(arch.path("k"), h, kv * d, arch.bias("k")),
                 v=fam._lin(arch.path("v"), h, kv * d, arch.bias("v")))
    w["o"] = fam._lin(arch.path("o"), a * d, h, arch.bias("o"))
    inter = m.intermediate_size
    if arch.gated:
        w["gate"] = fam._lin(arch.path("gate"), h, inter, arch.bias("gate"))
    w["up"] = fam._lin(arch.path("up"), h, inter, arch.bias("up"))
    w["down"] = fam._lin(arch.path("down"), inter, h, arch.bias("down"))
    return w


def norm(fam, t, x, weight, bias):
    from planner.estimate.step import layers as ly

    if fam.arch.norm == "rms":
        return ly.rms_norm(t, x, weight)
    return ly.layer_norm(t, x, weight, bias)


def layer(fam, t, w: dict, x, extras: dict):
    """GPT-2's block with the family's adjustments (module doc). GPTNeoXLayer / FalconDecoderLayer: the attention
    input norm's output is an argument temporary (freed when attention returns); with a parallel residual the
    MLP reads its own norm of the layer input (or the same norm's output), and ``mlp + attn + x`` sums it."""
    from planner.estimate.step import ops

    arch: Arch = fam.arch
    c = fam.ctx
    residual = x
    h1 = norm(fam, t, x, w["ln1"], w["ln1_b"])
    # the attention weights (eager) come back with the output and stay referenced (``attn_output, _ = ...``)
    # until the layer returns
    attn, _weights = _attention(fam, t, w, h1, extras)
    attn = ops.dropout(t, attn, c.resid_dropout, c.device)
    if arch.parallel:
        h2 = h1 if arch.shared_norm else norm(fam, t, x, w["ln2"], w["ln2_b"])
        del h1
        mlp = ops.dropout(t, _mlp(fam, t, w, h2), c.resid_dropout, c.device)
        del h2
        out = ops.add(t, mlp, attn)
        del mlp, attn
        return ops.add(t, out, residual)
    del h1
    hs = ops.add(t, attn, residual)
    del attn
    ln2, ln2_b = (w["ln1"], w["ln1_b"]) if arch.shared_norm else (w["ln2"], w["ln2_b"])
    h2 = norm(fam, t, hs, ln2, ln2_b)
    mlp = ops.dropout(t, _mlp(fam, t, w, h2), c.resid_dropout, c.device)
    del h2
    return ops.add(t, mlp, hs)


def _mlp(fam, t, w: dict, x):
    from planner.estimate.step import layers as ly
    from planner.estimate.step import ops

    c = fam.ctx
    if fam.arch.gated:
        return ly.swiglu_mlp(t, c, x, w["gate"], w["up"], w["down"])
    hs = ly.linear(t, c, x, w["up"])
    hs = ly.new_gelu(t, hs) if fam.arch.act == "gelu_new" else ops.unary_saving_input(t, "act", hs)
    return ly.linear(t, c, hs, w["down"])


def _attention(fam, t, w: dict, x, extras: dict):
    """Q, K, V (views of one fused projection, or three), rotary on q and k, attention, output projection."""
    from planner.estimate.step import layers as ly
    from planner.estimate.step import ops

    arch: Arch = fam.arch
    c = fam.ctx
    b, s, a, kv, d = c.b, c.s, c.heads, c.kv_heads, c.head_dim
    q, k, v = ly.qkv_projections(t, c, x, w, fused=arch.fused_qkv)
    strided = arch.fused_qkv  # q, k, v are strided views of the fused projection until something copies them
    if arch.rotary:
        q = ly.rotary(t, q, extras["cos"], extras["sin"])
        k = ly.rotary(t, k, extras["cos"], extras["sin"])
        if arch.rotary_cat:  # torch.cat([rotated, pass-through], dim=-1): a contiguous copy
            q = t.op("cat", [q], [(q.shape, q.dtype)], [], ops._passthrough_rule)[0]
            k = t.op("cat", [k], [(k.shape, k.dtype)], [], ops._passthrough_rule)[0]
    n_rep = a // kv
    mqa = n_rep > 1 and kv == 1
    if c.attn == "eager":
        kr, vr = ly.repeat_kv(t, k, n_rep), ly.repeat_kv(t, v, n_rep)
        copies = dict(copy_q=strided and not arch.rotary, copy_k=(strided and not arch.rotary) or mqa,
                      copy_v=strided or n_rep == 1 or mqa)
        if fam.model.model_type in _FALCON_EAGER:
            out, _weights = _falcon_eager(t, c, q, kr, vr, extras.get("mask"), **copies)
        else:  # transformers' eager_attention_forward (GPT-NeoX and most others), as llama's
            out, _weights = ly.eager_core(t, c, q, kr, vr, extras.get("mask"), softmax_fp32=True, **copies)
        del kr, vr
    elif c.attn == "sdpa" and (fam._sdpa_falls_back() or n_rep > 1):
        # fewer K/V heads than query heads, passed as they are (Falcon's multi-query attention calls SDPA without
        # repeat_kv or enable_gqa): no memory-efficient kernel takes them (sdp_utils: equal heads), the math path
        # broadcasts and keeps the attention matrix
        out, _weights = ly.sdpa_math(t, c, q, k, v, n_rep, strided=strided), None
    else:
        out, _weights = ly.sdpa_core(t, c, q, k, v, q_contiguous=arch.rotary_cat), None
    del q, k, v
    return ly.linear(t, c, t.view(out, (b, s, a * d)), w["o"]), _weights


def _falcon_eager(t, c, q, k, v, mask, *, copy_q: bool, copy_k: bool, copy_v: bool):
    """FalconAttention.forward's eager branch without ALiBi (modeling_falcon.py, transformers 5.23/5.24)."""
    from planner.estimate.step import layers as ly
    from planner.estimate.step import ops

    b, a, s, d = q.shape
    scores = ops.matmul(t, q, k, (b, a, s, s), copy_a=copy_q, copy_b=copy_k, b_t=True)
    scores = t.op("div_", [scores], [(scores.shape, scores.dtype)], [], alias=scores.st)[0]  # in place
    masked = ly.mask_add(t, scores, mask)
    probs = ops.unary_saving_output(t, "softmax", masked)  # dtype=hidden_states.dtype: no fp32 copy
    del masked, scores
    out = ops.matmul(t, probs, v, (b, a, s, d), copy_b=copy_v)
    # view, permute(0, 2, 1, 3), reshape: the reshape copies; the dense projection reads the copy
    return t.op("contiguous", [out], [((b, s, a, d), out.dtype)], [], ops._passthrough_rule)[0], probs
