"""Exact parameter counts: the analytical counter against transformers' own modules on the meta device."""

from __future__ import annotations

import subprocess
import sys

import pytest

from planner import catalog
from planner.errors import PlannerError
from planner.estimate.count.params import ModuleGroup, count_params, lora_params, split_params
from planner.models import load_model, spec_from_config
from planner.specs import LoraSpec, Method, Precision, TrainSpec

# Expected totals: /work/shared/model-configs/SOURCES.md ("computed total params", transformers 5.23.0 on
# the meta device, unique parameters; the HF safetensors figures where it names them). Active counts for
# MoE models: same file (total minus the unused share of routed-expert weights).
SOURCES_TOTALS = {
    "llama-2-7b": 6_738_415_616,
    "llama-2-13b": 13_015_864_320,
    "llama-2-70b": 68_976_648_192,
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.1-70b": 70_553_706_496,
    "llama-3.1-405b": 405_853_388_800,
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.2-3b": 3_212_749_824,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-7b": 7_615_616_512,
    "qwen2.5-14b": 14_770_033_664,
    "qwen2.5-32b": 32_763_876_352,
    "qwen2.5-72b": 72_706_203_648,
    "qwen3-8b": 8_190_735_360,
    "qwen3-30b-a3b": 30_532_122_624,
    "mistral-7b-v0.3": 7_248_023_552,
    "mixtral-8x7b-v0.1": 46_702_792_704,
    "gemma-2-9b": 9_241_705_984,
    "gemma-2-27b": 27_227_128_320,
    "phi-3-mini-4k": 3_821_079_552,
    "gpt2": 124_439_808,
    "deepseek-v2-lite": 15_706_484_224,
}
SOURCES_ACTIVE = {
    "qwen3-30b-a3b": 3_353_032_704,
    "mixtral-8x7b-v0.1": 12_879_925_248,
    "deepseek-v2-lite": 2_661_150_208,
}


def _group_key(g: ModuleGroup) -> tuple:
    return (g.path, g.kind, g.component, g.num_params, g.num_modules, g.in_features, g.out_features, g.bias,
            g.shared, g.conv1d, g.quantizable, g.param_shapes, g.layer_ids)


def _assert_same_counts(analytical, meta) -> None:
    assert analytical.source == "analytical" and meta.source == "meta"
    assert analytical.num_params == meta.num_params
    for component in ("embedding", "attention", "mlp", "norms", "lm_head", "other"):
        assert getattr(analytical, component) == getattr(meta, component), component
    assert analytical.tied == meta.tied and analytical.model_type == meta.model_type
    assert analytical.largest_module == meta.largest_module
    assert sorted(map(_group_key, analytical.modules)) == sorted(map(_group_key, meta.modules))
    assert sorted(analytical.linears, key=repr) == sorted(meta.linears, key=repr)
    assert analytical.num_routed_expert_params == meta.num_routed_expert_params
    assert analytical.num_active_params == meta.num_active_params


def test_catalog_matches_sources_table():
    assert set(catalog.model_names()) == set(SOURCES_TOTALS)


@pytest.mark.parametrize("name", catalog.model_names())
def test_analytical_count_equals_meta_device_instantiation(name):
    from planner.meta import meta_param_counts

    spec = load_model(name)
    analytical = count_params(spec)
    meta = meta_param_counts(spec)
    _assert_same_counts(analytical, meta)
    assert analytical.num_params == SOURCES_TOTALS[name]


@pytest.mark.parametrize("name", sorted(SOURCES_ACTIVE))
def test_moe_active_params(name):
    assert count_params(load_model(name)).num_active_params == SOURCES_ACTIVE[name]


def test_llama_3_1_8b_components_by_hand():
    c = count_params(load_model("llama-3.1-8b"))
    h, inter, vocab, layers, kv = 4096, 14336, 128256, 32, 1024
    assert c.embedding == vocab * h == 525_336_576
    assert c.attention == layers * (2 * h * h + 2 * h * kv) == 1_342_177_280
    assert c.mlp == layers * 3 * h * inter == 5_637_144_576
    assert c.norms == (2 * layers + 1) * h
    assert c.lm_head == vocab * h and not c.tied
    assert c.largest_module == vocab * h  # the embedding and the head tie for largest
    assert {g.name for g in c.linears} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert all(g.num_modules == layers for g in c.linears)


def test_gpt2_components_by_hand():
    c = count_params(load_model("gpt2"))
    h, layers = 768, 12
    assert c.embedding == 50257 * h and c.other == 1024 * h  # wte; wpe is "other"
    assert c.lm_head == 0 and c.tied
    assert c.attention == layers * (h * 3 * h + 3 * h + h * h + h)
    assert c.mlp == layers * (h * 4 * h + 4 * h + 4 * h * h + h)
    assert c.norms == (2 * layers + 1) * 2 * h
    assert all(g.conv1d and g.bias for g in c.linears)


def test_moe_experts_are_not_linears():
    # transformers 5 stores experts as fused 3-D parameters: LoRA 'all-linear' and bnb never see them.
    c = count_params(load_model("mixtral-8x7b-v0.1"))
    assert {g.name for g in c.linears} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    experts = [g for g in c.modules if g.kind == "experts"]
    assert experts[0].num_params == 8 * 3 * 4096 * 14336
    assert c.largest_module == experts[0].num_params  # one layer's experts outweigh the embedding
    d = count_params(load_model("deepseek-v2-lite"))
    names = {g.path for g in d.linears}
    assert "model.layers.*.mlp.shared_experts.gate_proj" in names and "model.layers.*.self_attn.q_proj" in names
    dense = next(g for g in d.linears if g.path == "model.layers.*.mlp.gate_proj")
    assert dense.num_modules == 1 and dense.out_features == 10944  # first_k_dense_replace = 1


# Tiny variants of every analytical family exercising the config switches the catalog does not.
_VARIANTS = [
    dict(model_type="llama", attention_bias=True, mlp_bias=True, head_dim=24, tie_word_embeddings=True),
    dict(model_type="llama", num_key_value_heads=None),
    dict(model_type="mistral", head_dim=None, num_key_value_heads=2),
    dict(model_type="mixtral", num_local_experts=4, num_experts_per_tok=1),
    dict(model_type="qwen2", tie_word_embeddings=True),
    dict(model_type="qwen3", attention_bias=True),  # head_dim absent: Qwen3Config's default 128
    dict(model_type="qwen3_moe", num_experts=4, moe_intermediate_size=48, decoder_sparse_step=2,
         mlp_only_layers=[3], num_hidden_layers=4),
    dict(model_type="gemma2", attention_bias=True, tie_word_embeddings=False),  # head_dim absent: 256
    dict(model_type="phi3", num_key_value_heads=2),
    dict(model_type="deepseek_v2", q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=16,
         v_head_dim=12, n_routed_experts=4, n_shared_experts=1, moe_intermediate_size=40,
         first_k_dense_replace=2, num_hidden_layers=3, num_experts_per_tok=2, attention_bias=True, mlp_bias=True),
    dict(model_type="deepseek_v2", q_lora_rank=None, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=16,
         v_head_dim=16, n_routed_experts=4, n_shared_experts=2, moe_intermediate_size=40,
         first_k_dense_replace=0, num_experts_per_tok=2),
]


def _tiny(overrides: dict) -> dict:
    if overrides["model_type"] == "gpt2":
        return {"vocab_size": 300, "n_embd": 64, "n_layer": 2, "n_head": 4, "bos_token_id": 0, "eos_token_id": 0,
                **overrides}
    base = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "bos_token_id": 0, "eos_token_id": 0,
            "pad_token_id": 0}
    return {**base, **overrides}


@pytest.mark.parametrize("overrides", _VARIANTS + [dict(model_type="gpt2", n_inner=80, tie_word_embeddings=False)],
                         ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items())[:60])
def test_family_switches_match_meta(overrides):
    from planner.meta import meta_param_counts

    spec = spec_from_config(_tiny(overrides), "tiny")
    _assert_same_counts(count_params(spec), meta_param_counts(spec))


@pytest.mark.parametrize("cfg", [
    dict(model_type="starcoder2", vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
         num_attention_heads=4, num_key_value_heads=2, bos_token_id=0, eos_token_id=0),
    dict(model_type="olmo", vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
         num_attention_heads=4, eos_token_id=0, pad_token_id=0),
    # A known family with a switch the analytical code does not model falls back too.
    dict(model_type="gpt2", vocab_size=320, n_embd=64, n_layer=2, n_head=4, add_cross_attention=True,
         bos_token_id=0, eos_token_id=0),
], ids=["starcoder2", "olmo", "gpt2-cross-attention"])
def test_unknown_architecture_falls_back_to_meta(cfg):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    counts = count_params(spec_from_config(cfg, "tiny"))
    assert counts.source == "meta"
    rest = {k: v for k, v in cfg.items() if k != "model_type"}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg["model_type"], **rest))
    assert counts.num_params == sum(p.numel() for p in model.parameters())  # unique: tied counted once
    assert counts.num_params == sum(getattr(counts, c) for c in ("embedding", "attention", "mlp", "norms",
                                                                   "lm_head", "other"))
    linear_names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings()}
    assert {g.name for g in counts.linears} >= linear_names


_DEEP = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
             bos_token_id=0, eos_token_id=0)


@pytest.mark.parametrize("cfg", [
    dict(model_type="starcoder2", **_DEEP),
    dict(model_type="gpt_neox", **_DEEP),
    dict(model_type="falcon", vocab_size=320, hidden_size=64, num_attention_heads=4, bos_token_id=0, eos_token_id=0),
    # layers that differ by index: the first three dense, the rest MoE (built whole)
    dict(model_type="deepseek_v3", n_routed_experts=4, first_k_dense_replace=3, moe_intermediate_size=32,
         num_experts_per_tok=2, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
         v_head_dim=8, **_DEEP),
], ids=["starcoder2", "gpt_neox", "falcon", "deepseek_v3-mixed"])
def test_meta_counts_of_a_deep_model_equal_the_whole_build(cfg, monkeypatch):
    """Issue 14 item 5: the meta-device fallback built every layer (a 4,096-layer starcoder2 took 36 s in a warm
    process). A model whose layers are alike is built at three shallow depths and multiplied; the counts are
    those of the whole model, and a model whose layers differ by index is still built whole."""
    import planner.meta as meta

    spec = spec_from_config({**cfg, "num_hidden_layers": 40}, "deep")
    whole = meta.param_counts_of(meta.build_meta_model(spec))
    depths = []
    build = meta.build_meta_model
    monkeypatch.setattr(meta, "build_meta_model", lambda m: depths.append(m.num_layers) or build(m))
    meta._meta_counts.cache_clear()
    assert meta.meta_param_counts(spec) == whole
    if cfg["model_type"] == "deepseek_v3":
        assert depths[-1] == 40
    else:
        assert max(depths) <= 4


def test_meta_counts_of_thousands_of_layers_are_fast():
    import time

    import planner.meta as meta

    meta.meta_param_counts(spec_from_config(dict(model_type="starcoder2", num_hidden_layers=2, **_DEEP), "warm"))
    spec = spec_from_config(dict(model_type="starcoder2", num_hidden_layers=4096, **_DEEP), "deep")
    started = time.perf_counter()
    counts = meta.meta_param_counts(spec)
    assert time.perf_counter() - started < 1.0
    layer = meta.meta_param_counts(spec_from_config(dict(model_type="starcoder2", num_hidden_layers=1, **_DEEP), "one"))
    two = meta.meta_param_counts(spec_from_config(dict(model_type="starcoder2", num_hidden_layers=2, **_DEEP), "two"))
    assert counts.num_params == layer.num_params + 4095 * (two.num_params - layer.num_params)


def test_model_type_unknown_to_transformers_is_a_planner_error():
    cfg = dict(model_type="no-such-architecture", vocab_size=10, hidden_size=8, num_hidden_layers=1,
               num_attention_heads=2)
    with pytest.raises(PlannerError, match="no-such-architecture"):
        count_params(spec_from_config(cfg, "x"))


def test_known_families_never_import_torch():
    code = (
        "import sys\n"
        "from planner import catalog\n"
        "from planner.models import load_model\n"
        "from planner.estimate.count.params import count_params, split_params\n"
        "from planner.estimate.quant import quantized_weight_bytes\n"
        "from planner.specs import LoraSpec, TrainSpec, Method\n"
        "for n in catalog.model_names():\n"
        "    c = count_params(load_model(n))\n"
        "    qlora = TrainSpec(method=Method.QLORA, lora=LoraSpec(dropout=0.0))  # MoE: peft's ParamWrapper\n"
        "    split_params(c, qlora); quantized_weight_bytes(c, TrainSpec().quant)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------------------------------------------ split


def test_lora_rank_arithmetic_from_design_md():
    # DESIGN.md §3 (Hu et al. 2021): 4096 x 11008 at r = 8 gives 120,832 trainable parameters.
    g = ModuleGroup("up_proj", "model.layers.*.mlp.up_proj", "linear", "mlp", 4096 * 11008, 1, 4096, 11008)
    assert lora_params(g, 8) == 120_832


def test_full_training_trains_everything():
    c = count_params(load_model("llama-3.2-1b"))
    s = split_params(c, TrainSpec(method=Method.FULL, precision=Precision.FP32))
    assert s.num_trainable == s.num_16bit == c.num_params and s.num_adapter == s.num_quantized == 0
    assert s.num_frozen == 0


def test_lora_split_llama_3_1_8b_all_linear():
    c = count_params(load_model("llama-3.1-8b"))
    s = split_params(c, TrainSpec(method=Method.LORA, lora=LoraSpec(rank=16)))
    h, inter, kv, layers = 4096, 14336, 1024, 32
    per_layer = 16 * ((h + h) * 2 + (h + kv) * 2 + (h + inter) * 3)
    assert s.num_adapter == s.num_trainable == layers * per_layer == 41_943_040
    assert s.num_16bit == s.num_frozen == c.num_params and s.num_quantized == 0


def test_qlora_quantizes_every_base_linear_but_not_head_or_embeddings():
    c = count_params(load_model("llama-3.1-8b"))
    s = split_params(c, TrainSpec(method=Method.QLORA, lora=LoraSpec(rank=8, targets=("q_proj", "v_proj"))))
    assert s.num_quantized == c.attention + c.mlp
    assert s.num_16bit == c.embedding + c.lm_head + c.norms
    assert s.num_adapter == 32 * 8 * ((4096 + 4096) + (4096 + 1024))


def test_modules_to_save_adds_full_trainable_copies():
    c = count_params(load_model("llama-3.2-1b"))  # tied: the copy of lm_head is still a full tensor
    s = split_params(c, TrainSpec(method=Method.LORA, lora=LoraSpec(rank=4, modules_to_save=("lm_head",))))
    assert s.num_saved == 128256 * 2048
    assert s.num_trainable == s.num_adapter + s.num_saved and s.num_frozen == c.num_params


@pytest.mark.parametrize(("model", "targets", "message"), [
    ("llama-3.1-8b", ("q_proj", "qkv_proj"), "'qkv_proj' matches no module.*q_proj"),
    ("mixtral-8x7b-v0.1", ("experts",), "'experts' matches only modules LoRA cannot adapt"),
    ("llama-3.1-8b", ("all-linear", "lm_head"), "mix 'all-linear'"),
])
def test_bad_lora_targets_are_planner_errors(model, targets, message):
    c = count_params(load_model(model))
    with pytest.raises(PlannerError, match=message):
        split_params(c, TrainSpec(method=Method.LORA, lora=LoraSpec(targets=targets)))


def test_unknown_module_to_save_is_a_planner_error():
    c = count_params(load_model("gpt2"))
    with pytest.raises(PlannerError, match="'embed_tokens' matches no module.*wte"):
        split_params(c, TrainSpec(method=Method.LORA, lora=LoraSpec(modules_to_save=("embed_tokens",))))
