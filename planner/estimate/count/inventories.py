"""Analytical module inventories of the known model families, as transformers 5.x builds them.

Each function reads the raw config.json dict (``ModelSpec.config``) with the family's config-class
defaults for absent keys (``transformers/models/<family>/configuration_<family>.py``) and lists every
module that owns parameters (``transformers/models/<family>/modeling_<family>.py``). In transformers 5,
MoE experts are one module per layer holding fused 3-D parameters (``gate_up_proj`` [E, 2I, H] and
``down_proj`` [E, H, I]) and the routers own a bare [E, H] weight: neither is an nn.Linear, so neither
appears among the linears peft's 'all-linear' or bitsandbytes' Linear4bit replacement see.
A config using a feature not written here returns None and planner.meta instantiates it instead.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from planner import family_config
from planner.estimate.count.inventory import ModuleGroup, ParamCounts, counts_from_groups, uneven_layer_ids
from planner.specs import ModelSpec


class _Unsupported(Exception):
    """The config uses something this module does not model: use the meta-device fallback."""


class _Inventory:
    def __init__(self, num_layers: int) -> None:
        self.groups: list[ModuleGroup] = []
        self.num_layers = num_layers

    def _add(self, group: ModuleGroup) -> None:
        if group.num_modules > 0:
            ids = uneven_layer_ids(group, group.layer_ids, self.num_layers) if group.layer_ids else ()
            self.groups.append(replace(group, layer_ids=ids))

    def linear(self, path: str, d_in: int, d_out: int, n: int, component: str, bias: bool = False,
               conv1d: bool = False, shared: bool = False, layer_ids: tuple[int, ...] = ()) -> None:
        own = d_in * d_out + (d_out if bias else 0)
        self._add(ModuleGroup(path.rsplit(".", 1)[-1], path, "linear", component, own, n, d_in, d_out, bias,
                              conv1d, True, shared, layer_ids=layer_ids))

    def embedding(self, path: str, num: int, dim: int, component: str = "embedding") -> None:
        self._add(ModuleGroup(path.rsplit(".", 1)[-1], path, "embedding", component, num * dim, 1, num, dim))

    def norm(self, path: str, dim: int, n: int, bias: bool = False) -> None:
        own = dim * (2 if bias else 1)
        self._add(ModuleGroup(path.rsplit(".", 1)[-1], path, "norm", "norms", own, n, bias=bias))

    def param(self, path: str, kind: str, own: int, n: int, component: str,
              shapes: tuple[tuple[str, tuple[int, ...]], ...] = (), layer_ids: tuple[int, ...] = ()) -> None:
        self._add(ModuleGroup(path.rsplit(".", 1)[-1], path, kind, component, own, n, param_shapes=shapes,
                              layer_ids=layer_ids))


def _get(cfg: dict[str, Any], key: str, default: Any) -> Any:
    value = cfg.get(key, default)
    return default if value is None and default is not None else value


def _int(cfg: dict[str, Any], key: str, default: Any = None) -> int:
    value = _get(cfg, key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Unsupported(key)
    return value


def _dense_mlp(inv: _Inventory, prefix: str, hidden: int, inter: int, n: int, bias: bool = False,
               layer_ids: tuple[int, ...] = ()) -> None:
    for name, d_in, d_out in (("gate_proj", hidden, inter), ("up_proj", hidden, inter), ("down_proj", inter, hidden)):
        inv.linear(f"{prefix}.{name}", d_in, d_out, n, "mlp", bias, layer_ids=layer_ids)


def _experts(inv: _Inventory, prefix: str, hidden: int, inter: int, num_experts: int, n: int,
             layer_ids: tuple[int, ...] = (), router_first: bool = False) -> int:
    # <Family>Experts: gate_up_proj [E, 2I, H] + down_proj [E, H, I]; <Family>TopKRouter: weight [E, H].
    # Registration order (model.parameters(), DeepSpeed's flat order): MixtralSparseMoeBlock makes the gate
    # first, Qwen3Moe and DeepseekV2 the experts first.
    expert_params = num_experts * 3 * hidden * inter
    shapes = (("gate_up_proj", (num_experts, 2 * inter, hidden)), ("down_proj", (num_experts, hidden, inter)))
    adds = [
        lambda: inv.param(f"{prefix}.experts", "experts", expert_params, n, "mlp", shapes, layer_ids),
        lambda: inv.param(f"{prefix}.gate", "router", num_experts * hidden, n, "mlp",
                          (("weight", (num_experts, hidden)),), layer_ids),
    ]
    for add in reversed(adds) if router_first else adds:
        add()
    return expert_params * n


def _llama_like(model: ModelSpec, family: str) -> ParamCounts:
    cfg = model.config
    # the shapes as the model loader derived them, with the family's class defaults (planner/family_config.py)
    hidden, layers, heads, kv_heads = model.hidden_size, model.num_layers, model.num_heads, model.num_kv_heads
    vocab, inter, head_dim = model.vocab_size, model.intermediate_size, model.head_dim
    qkv_bias, o_bias = family_config.attention_bias(family, cfg)
    inv = _Inventory(layers)
    inv.embedding("model.embed_tokens", vocab, hidden)
    p = "model.layers.*"
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    if family == "phi3":
        # Phi3Attention: one fused qkv_proj and o_proj, no biases; Phi3MLP: fused gate_up_proj.
        inv.linear(f"{p}.self_attn.o_proj", q_out, hidden, layers, "attention")
        inv.linear(f"{p}.self_attn.qkv_proj", hidden, q_out + 2 * kv_out, layers, "attention")
        inv.linear(f"{p}.mlp.gate_up_proj", hidden, 2 * inter, layers, "mlp")
        inv.linear(f"{p}.mlp.down_proj", inter, hidden, layers, "mlp")
    else:
        inv.linear(f"{p}.self_attn.q_proj", hidden, q_out, layers, "attention", qkv_bias)
        inv.linear(f"{p}.self_attn.k_proj", hidden, kv_out, layers, "attention", qkv_bias)
        inv.linear(f"{p}.self_attn.v_proj", hidden, kv_out, layers, "attention", qkv_bias)
        inv.linear(f"{p}.self_attn.o_proj", q_out, hidden, layers, "attention", o_bias)
    if family in ("qwen3", "qwen3_moe"):
        # Qwen3Attention: RMSNorm over head_dim on queries and keys.
        inv.norm(f"{p}.self_attn.q_norm", head_dim, layers)
        inv.norm(f"{p}.self_attn.k_norm", head_dim, layers)
    routed, num_experts, top_k = 0, 0, 0
    if family == "mixtral":
        num_experts, top_k = model.num_experts, model.num_experts_per_tok
        routed = _experts(inv, f"{p}.mlp", hidden, inter, num_experts, layers, router_first=True)
    elif family == "qwen3_moe":
        # Qwen3MoeDecoderLayer: sparse when idx not in mlp_only_layers and (idx + 1) % decoder_sparse_step == 0.
        num_experts, top_k = model.num_experts, model.num_experts_per_tok
        step = _int(cfg, "decoder_sparse_step", 1)
        dense_only = set(_get(cfg, "mlp_only_layers", []) or [])
        sparse = tuple(
            i for i in range(layers) if i not in dense_only and num_experts > 0 and (i + 1) % step == 0
        )
        num_sparse = len(sparse)
        dense = tuple(i for i in range(layers) if i not in sparse)
        moe_inter = family_config.moe_intermediate_size(family, cfg, inter)
        routed = _experts(inv, f"{p}.mlp", hidden, moe_inter, num_experts, num_sparse, layer_ids=sparse)
        _dense_mlp(inv, f"{p}.mlp", hidden, inter, layers - num_sparse, layer_ids=dense)
        if num_sparse == 0:
            num_experts = 0
    elif family != "phi3":
        _dense_mlp(inv, f"{p}.mlp", hidden, inter, layers, family_config.mlp_bias(family, cfg))
    norm_names = ["input_layernorm", "post_attention_layernorm"]
    if family == "gemma2":
        norm_names += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    for name in norm_names:
        inv.norm(f"{p}.{name}", hidden, layers)
    inv.norm("model.norm", hidden, 1)
    inv.linear("lm_head", hidden, vocab, 1, "lm_head", shared=model.tie_word_embeddings)
    return counts_from_groups(inv.groups, tied=model.tie_word_embeddings, hidden_size=hidden,
                              source="analytical", model_type=model.model_type, num_routed_expert_params=routed,
                              num_experts=num_experts, num_experts_per_tok=top_k)


def _deepseek_v2(model: ModelSpec) -> ParamCounts:
    """DeepSeek-V2 (arXiv 2405.04434): multi-head latent attention, dense first layers, shared + routed experts."""
    cfg = model.config
    # the shapes as the model loader derived them, with the family's class defaults (planner/family_config.py)
    hidden, layers, heads, vocab, inter = (model.hidden_size, model.num_layers, model.num_heads, model.vocab_size,
                                           model.intermediate_size)
    # q_lora_rank: null in V2-Lite (a plain q_proj); absent means the class default 1536.
    q_lora = cfg["q_lora_rank"] if "q_lora_rank" in cfg else 1536
    kv_lora = _int(cfg, "kv_lora_rank", 512)
    rope = _int(cfg, "qk_rope_head_dim", 64)
    nope = _int(cfg, "qk_nope_head_dim", 128)
    v_dim = _int(cfg, "v_head_dim", 128)
    attn_bias = bool(_get(cfg, "attention_bias", False))
    mlp_bias = bool(_get(cfg, "mlp_bias", False))
    first_dense = min(_int(cfg, "first_k_dense_replace", 0), layers)
    num_experts, top_k = model.num_experts, model.num_experts_per_tok
    num_shared = _int(cfg, "n_shared_experts", 2)
    moe_inter = family_config.moe_intermediate_size("deepseek_v2", cfg, inter)
    inv = _Inventory(layers)
    inv.embedding("model.embed_tokens", vocab, hidden)
    p = "model.layers.*"
    a = f"{p}.self_attn"
    qk_head = nope + rope
    if q_lora is None:
        inv.linear(f"{a}.q_proj", hidden, heads * qk_head, layers, "attention")
    else:
        inv.linear(f"{a}.q_a_proj", hidden, q_lora, layers, "attention", attn_bias)
        inv.norm(f"{a}.q_a_layernorm", q_lora, layers)
        inv.linear(f"{a}.q_b_proj", q_lora, heads * qk_head, layers, "attention")
    inv.linear(f"{a}.kv_a_proj_with_mqa", hidden, kv_lora + rope, layers, "attention", attn_bias)
    inv.norm(f"{a}.kv_a_layernorm", kv_lora, layers)
    inv.linear(f"{a}.kv_b_proj", kv_lora, heads * (nope + v_dim), layers, "attention")
    inv.linear(f"{a}.o_proj", heads * v_dim, hidden, layers, "attention", attn_bias)
    num_moe = layers - first_dense
    moe_ids = tuple(range(first_dense, layers))
    _dense_mlp(inv, f"{p}.mlp", hidden, inter, first_dense, mlp_bias, layer_ids=tuple(range(first_dense)))
    routed = _experts(inv, f"{p}.mlp", hidden, moe_inter, num_experts, num_moe, layer_ids=moe_ids)
    # DeepseekV2Moe.shared_experts: one DeepseekV2MLP of width moe_intermediate_size * n_shared_experts.
    _dense_mlp(inv, f"{p}.mlp.shared_experts", hidden, moe_inter * num_shared, num_moe, mlp_bias,
               layer_ids=moe_ids)
    for name in ("input_layernorm", "post_attention_layernorm"):
        inv.norm(f"{p}.{name}", hidden, layers)
    inv.norm("model.norm", hidden, 1)
    inv.linear("lm_head", hidden, vocab, 1, "lm_head", shared=model.tie_word_embeddings)
    return counts_from_groups(inv.groups, tied=model.tie_word_embeddings, hidden_size=hidden,
                              source="analytical", model_type=model.model_type, num_routed_expert_params=routed,
                              num_experts=num_experts if num_moe else 0, num_experts_per_tok=int(top_k))


def _gpt2(model: ModelSpec) -> ParamCounts:
    """GPT-2 (modeling_gpt2.py): learned position embeddings, LayerNorms with bias, Conv1D projections."""
    cfg = model.config
    if _get(cfg, "add_cross_attention", False):
        raise _Unsupported("add_cross_attention")
    hidden, layers, vocab = model.hidden_size, model.num_layers, model.vocab_size
    positions, inner = model.max_position_embeddings, model.intermediate_size
    inv = _Inventory(layers)
    inv.embedding("transformer.wte", vocab, hidden)
    inv.embedding("transformer.wpe", positions, hidden, component="other")
    p = "transformer.h.*"
    inv.norm(f"{p}.ln_1", hidden, layers, bias=True)
    inv.linear(f"{p}.attn.c_attn", hidden, 3 * hidden, layers, "attention", True, conv1d=True)
    inv.linear(f"{p}.attn.c_proj", hidden, hidden, layers, "attention", True, conv1d=True)
    inv.norm(f"{p}.ln_2", hidden, layers, bias=True)
    inv.linear(f"{p}.mlp.c_fc", hidden, inner, layers, "mlp", True, conv1d=True)
    inv.linear(f"{p}.mlp.c_proj", inner, hidden, layers, "mlp", True, conv1d=True)
    inv.norm("transformer.ln_f", hidden, 1, bias=True)
    inv.linear("lm_head", hidden, vocab, 1, "lm_head", shared=model.tie_word_embeddings)
    return counts_from_groups(inv.groups, tied=model.tie_word_embeddings, hidden_size=hidden, source="analytical",
                              model_type=model.model_type)


# The families written by _llama_like (their config-class defaults: planner/family_config.py).
_LLAMA_LIKE = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma2", "phi3")


def analytical_counts(model: ModelSpec) -> ParamCounts | None:
    """Counts for a known family, or None when planner.meta must instantiate the model."""
    family = model.model_type
    try:
        if family in _LLAMA_LIKE:
            return _llama_like(model, family)
        if family == "deepseek_v2":
            return _deepseek_v2(model)
        if family == "gpt2":
            return _gpt2(model)
    except _Unsupported:
        return None
    return None
