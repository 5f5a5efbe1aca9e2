"""Each family's shapes have one definition (planner/family_config.py): the ModelSpec, the parameter counter, the
step simulator and transformers' own config class, built from the same config dict (offline: config classes only),
agree on head_dim, KV heads, intermediate sizes, experts, position limit and tied embeddings.

Every catalog config is checked as shipped, without each key planner fills from a class default, and without all
of them at once: an absent key is where the copies used to drift (a qwen3_moe config without head_dim gave
ModelSpec 128 and the counter 64; transformers derives hidden // heads = 64, Qwen3MoeConfig having no head_dim).
"""

from __future__ import annotations

import pytest
from presets import tiny

from planner import catalog, family_config
from planner.errors import PlannerError
from planner.estimate.count.inventories import analytical_counts
from planner.estimate.step.family_layers import build_family
from planner.models import spec_from_config
from planner.specs import Method, Precision

transformers = pytest.importorskip("transformers")

# Families planner reads without a catalog entry (the counter instantiates them on the meta device, which needs
# torch: only the ModelSpec is compared for them).
SYNTHETIC = {
    "qwen2_moe": {"model_type": "qwen2_moe", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "intermediate_size": 96, "moe_intermediate_size": 32,
                  "num_experts": 4, "num_experts_per_tok": 2, "vocab_size": 128, "max_position_embeddings": 256},
    "gemma": {"model_type": "gemma", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 1, "head_dim": 16, "intermediate_size": 96, "vocab_size": 128,
              "max_position_embeddings": 256},
    "starcoder2": {"model_type": "starcoder2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "intermediate_size": 96, "vocab_size": 128,
                   "max_position_embeddings": 256, "tie_word_embeddings": True},
}
# The model size, which planner requires rather than defaults.
REQUIRED = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "n_embd",
            "n_layer", "n_head")


def _configs():
    bases = [(name, catalog.model_config(name)) for name in catalog.model_names()]
    bases += list(SYNTHETIC.items())
    seen = set()
    for name, cfg in bases:
        defaulted = [k for k in family_config.CLASS_DEFAULTS.get(cfg["model_type"], {}) if k in cfg]
        if cfg["model_type"] in ("mixtral", "qwen3_moe", "qwen2_moe", "deepseek_v2"):
            defaulted += [k for k in family_config.EXPERT_KEYS + ("num_experts_per_tok", "moe_intermediate_size")
                          if k in cfg and k not in defaulted]
        variants = [("as shipped", ())] + [(f"without {k}", (k,)) for k in defaulted]
        variants.append(("without every defaulted key", tuple(defaulted)))
        for label, drop in variants:
            c = {k: v for k, v in cfg.items() if k not in drop}
            key = (cfg["model_type"], tuple(sorted((k, repr(v)) for k, v in c.items())))
            if key not in seen:
                seen.add(key)
                yield pytest.param(name, c, id=f"{name}-{label.replace(' ', '-')}")


def _hf(cfg: dict):
    return transformers.CONFIG_MAPPING[cfg["model_type"]](**{k: v for k, v in cfg.items() if k != "model_type"})


def _truth(cfg: dict) -> dict:
    """The shapes as transformers builds the model (configuration_<family>.py, modeling_<family>.py)."""
    hf = _hf(cfg)
    mt = cfg["model_type"]
    if mt == "gpt2":
        return dict(hidden=hf.n_embd, heads=hf.n_head, kv_heads=hf.n_head, head_dim=hf.n_embd // hf.n_head,
                    intermediate=hf.n_inner or 4 * hf.n_embd, max_positions=hf.n_positions,
                    tie=hf.tie_word_embeddings, experts=0, top_k=0, moe_intermediate=None)
    experts = next((getattr(hf, k) for k in family_config.EXPERT_KEYS if getattr(hf, k, None) is not None), 0)
    return dict(
        hidden=hf.hidden_size, heads=hf.num_attention_heads, kv_heads=hf.num_key_value_heads,
        # modeling_<family>.py: getattr(config, "head_dim", None) or hidden_size // num_attention_heads
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
        intermediate=hf.intermediate_size, max_positions=hf.max_position_embeddings, tie=hf.tie_word_embeddings,
        experts=experts, top_k=(getattr(hf, "num_experts_per_tok", 0) or 0) if experts else 0,
        moe_intermediate=getattr(hf, "moe_intermediate_size", None) or (hf.intermediate_size if experts else None),
    )


@pytest.mark.parametrize(("name", "cfg"), list(_configs()))
def test_modelspec_counter_simulator_and_transformers_agree(name, cfg):
    want = _truth(cfg)
    if want["heads"] % want["kv_heads"]:
        # the class default does not fit this model (Qwen2Config's 32 KV heads for 14 heads): transformers would
        # fail in the attention reshape; planner refuses the config up front
        with pytest.raises(PlannerError, match="multiple of num_key_value_heads"):
            spec_from_config(cfg, name)
        return
    spec = spec_from_config(cfg, name)
    mt = spec.model_type
    got = dict(hidden=spec.hidden_size, heads=spec.num_heads, kv_heads=spec.num_kv_heads, head_dim=spec.head_dim,
               intermediate=spec.intermediate_size, max_positions=spec.max_position_embeddings,
               tie=spec.tie_word_embeddings, experts=spec.num_experts, top_k=spec.num_experts_per_tok)
    if mt == "deepseek_v2":
        # DeepseekV2Config.head_dim is qk_rope_head_dim; ModelSpec.head_dim is the GQA stand-in's (family_config)
        want["head_dim"] = spec.hidden_size // spec.num_heads
    assert got == {k: want[k] for k in got}, f"ModelSpec disagrees with {type(_hf(cfg)).__name__}"

    counts = analytical_counts(spec)
    if mt in SYNTHETIC:
        assert counts is None  # counted on the meta device, i.e. by transformers itself
    else:
        _check_counter(counts, cfg, want)
    _check_simulator(spec, want)


def _groups(counts) -> dict:
    return {m.path.replace("model.layers.*.", "").replace("transformer.h.*.", ""): m for m in counts.modules}


def _check_counter(counts, cfg: dict, want: dict) -> None:
    assert counts is not None and counts.source == "analytical"
    g = _groups(counts)
    h, a, kv, d, inter = want["hidden"], want["heads"], want["kv_heads"], want["head_dim"], want["intermediate"]
    assert g["lm_head"].shared == want["tie"]
    mt = cfg["model_type"]
    if mt == "gpt2":
        assert (g["mlp.c_fc"].in_features, g["mlp.c_fc"].out_features) == (h, inter)
        assert g["transformer.wpe"].in_features == want["max_positions"]
        return
    if mt == "deepseek_v2":
        hf = _hf(cfg)
        q = g.get("self_attn.q_b_proj") or g["self_attn.q_proj"]
        assert q.out_features == a * hf.qk_head_dim
        assert g["self_attn.kv_a_proj_with_mqa"].out_features == hf.kv_lora_rank + hf.qk_rope_head_dim
        assert g["self_attn.kv_b_proj"].out_features == a * (hf.qk_nope_head_dim + hf.v_head_dim)
        assert g["self_attn.o_proj"].in_features == a * hf.v_head_dim
    elif mt == "phi3":
        assert g["self_attn.qkv_proj"].out_features == (a + 2 * kv) * d
        assert g["mlp.gate_up_proj"].out_features == 2 * inter
    else:
        assert g["self_attn.q_proj"].out_features == a * d
        assert g["self_attn.k_proj"].out_features == kv * d
        assert g["self_attn.o_proj"].in_features == a * d
    if "self_attn.q_norm" in g:
        assert g["self_attn.q_norm"].num_params == d
    if "mlp.gate_proj" in g:
        assert g["mlp.gate_proj"].out_features == inter
    if want["experts"]:
        shapes = dict(g["mlp.experts"].param_shapes)
        assert shapes["gate_up_proj"] == (want["experts"], 2 * want["moe_intermediate"], h)
        assert (counts.num_experts, counts.num_experts_per_tok) == (want["experts"], want["top_k"])
    else:
        assert "mlp.experts" not in g


def _check_simulator(spec, want: dict) -> None:
    fam = build_family(spec, method=Method.FULL, precision=Precision.BF16_MIXED, b=1, s=8, attn="sdpa",
                       dropout=None, adapters=(), lora_dropout=0.0, modules_to_save=(), device="cuda")
    if fam.arch is not None:  # an unknown family: nearest.py's own description
        return
    layer = fam.layer_weights[-1]
    if spec.model_type == "gpt2":
        assert layer["c_fc"].d_out == want["intermediate"]
        return
    assert (fam.ctx.heads, fam.ctx.kv_heads, fam.ctx.head_dim) == (want["heads"], want["kv_heads"], spec.head_dim)
    if "q" in layer:
        assert (layer["q"].d_out, layer["k"].d_out) == (want["heads"] * spec.head_dim, want["kv_heads"] * spec.head_dim)
    if "experts" in layer:
        assert (layer["experts"].num_experts, layer["experts"].inter) == (want["experts"], want["moe_intermediate"])
        assert layer["experts"].top_k == max(want["top_k"], 1)
    elif "gate" in layer:
        assert layer["gate"].d_out == want["intermediate"]


def test_qwen3_moe_without_head_dim_is_hidden_over_heads():
    """The issue-15 case: Qwen3MoeConfig declares no head_dim, so Qwen3MoeAttention uses 2048 // 32 = 64."""
    cfg = {k: v for k, v in catalog.model_config("qwen3-30b-a3b").items() if k != "head_dim"}
    spec = spec_from_config(cfg, "qwen3-30b-a3b-no-head-dim")
    assert spec.head_dim == 64 == _truth(cfg)["head_dim"]
    assert _groups(analytical_counts(spec))["self_attn.q_proj"].out_features == 32 * 64


# Every switch of a projection bias (modeling_<family>.py): the counter's module groups -- analytical, or built by
# transformers on the meta device for qwen2_moe, where test_params checks the analytical ones too -- and the
# simulator's layer weights must have the same biases.
_MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)
BIAS_VARIANTS = [
    tiny("llama", model_type=family, attention_bias=True, mlp_bias=True, **extra)
    for family, extra in (("llama", {}), ("mistral", {}), ("mixtral", dict(num_local_experts=4, num_experts_per_tok=2)),
                          ("qwen2", {}), ("qwen3", {}), ("qwen3_moe", dict(num_experts=4, **_MOE)),
                          ("gemma2", dict(head_dim=16)), ("phi3", {}))
] + [
    tiny("llama", model_type="qwen2_moe", num_experts=4, shared_expert_intermediate_size=64, **_MOE, **switch)
    for switch in ({}, dict(qkv_bias=False, attention_bias=True))
]
_PROJECTIONS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
                "qkv": "self_attn.qkv_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
                "gate_up": "mlp.gate_up_proj"}


@pytest.mark.parametrize("cfg", BIAS_VARIANTS, ids=lambda c: "-".join(
    f"{k}={v}" for k, v in c.items() if k in ("model_type", "qkv_bias")))
def test_simulator_and_counter_agree_on_projection_biases(cfg):
    spec = spec_from_config(cfg, "tiny")
    counts = analytical_counts(spec)
    if counts is None:
        pytest.importorskip("torch")
        from planner.meta import meta_param_counts

        counts = meta_param_counts(spec)
    groups = _groups(counts)
    fam = build_family(spec, method=Method.FULL, precision=Precision.BF16_MIXED, b=1, s=8, attn="sdpa",
                       dropout=None, adapters=(), lora_dropout=0.0, modules_to_save=(), device="cuda")
    layer = fam.layer_weights[-1]
    checked = [name for name in _PROJECTIONS if name in layer]
    assert {"o"} <= set(checked)
    for name in checked:
        assert (layer[name].bias is not None) == groups[_PROJECTIONS[name]].bias, name
