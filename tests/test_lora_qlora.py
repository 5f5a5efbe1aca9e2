"""LoRA and QLoRA against the real libraries: peft's trainable count and bitsandbytes' stored bytes.

Tiny random-weight transformers models on CPU, built from config dicts (nothing is downloaded).
"""

from __future__ import annotations

import re
from dataclasses import replace

import bitsandbytes as bnb
import peft
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

from planner.errors import PlannerError
from planner.estimate.count.params import count_params, lora_adapters, split_params
from planner.estimate.quant import quantized_tensor_bytes, quantized_weight_bytes
from planner.models import spec_from_config
from planner.specs import LoraSpec, Method, QuantSpec, QuantType, TrainSpec
from planner.units import nbytes

_IDS = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
TINY = {
    # hidden 99 and intermediate 327 make odd-sized weights (99 x 327) and blocks that do not divide 64.
    "llama": dict(model_type="llama", vocab_size=320, hidden_size=99, intermediate_size=327, num_hidden_layers=2,
                  num_attention_heads=3, num_key_value_heads=1, head_dim=34, **_IDS),
    "llama-tied": dict(model_type="llama", vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, **_IDS),
    "qwen2": dict(model_type="qwen2", vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, **_IDS),
    "gpt2": dict(model_type="gpt2", vocab_size=320, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                 bos_token_id=0, eos_token_id=0),
    "mixtral": dict(model_type="mixtral", vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, **_IDS),
    "qwen3_moe": dict(model_type="qwen3_moe", vocab_size=320, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, num_experts=4,
                      moe_intermediate_size=48, mlp_only_layers=[0], num_experts_per_tok=2, **_IDS),
    "deepseek_v2": dict(model_type="deepseek_v2", vocab_size=320, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, q_lora_rank=None, kv_lora_rank=32,
                        qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, n_routed_experts=4,
                        n_shared_experts=1, moe_intermediate_size=48, first_k_dense_replace=1,
                        num_experts_per_tok=2, **_IDS),
}


def _real_model(cfg: dict, dtype=torch.float32):
    rest = {k: v for k, v in cfg.items() if k != "model_type"}
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg["model_type"], **rest), dtype=dtype)


def _peft_trainable(cfg: dict, rank: int, targets, modules_to_save) -> int:
    model = _real_model(cfg)
    lora = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                           modules_to_save=list(modules_to_save) or None, task_type="CAUSAL_LM")
    trainable, _ = peft.get_peft_model(model, lora).get_nb_trainable_parameters()
    return trainable


CASES = [
    ("llama", 8, ("all-linear",), ()),
    ("llama", 1, ("q_proj", "v_proj"), ()),
    ("llama", 16, ("self_attn.o_proj", "down_proj"), ("lm_head",)),
    ("llama", 4, ("lm_head", "embed_tokens", "k_proj"), ()),
    ("llama", 8, ("all-linear",), ("mlp",)),  # no adapters inside a saved module
    ("llama-tied", 8, ("all-linear",), ("lm_head",)),
    ("llama-tied", 2, ("up_proj",), ("embed_tokens", "input_layernorm")),
    ("qwen2", 4, ("all-linear",), ()),
    ("qwen2", 32, ("k_proj", "gate_proj"), ("norm",)),  # peft: 'norm' also saves every *_layernorm
    ("gpt2", 8, ("all-linear",), ()),
    ("gpt2", 4, ("c_proj",), ("wte",)),  # c_proj is both attn.c_proj and mlp.c_proj
    # MoE: peft rewrites targets onto the fused expert tensors and the router (transformers 5 layout).
    ("mixtral", 8, ("all-linear",), ()),
    ("mixtral", 2, ("q_proj", "o_proj"), ("gate",)),  # 'gate' is the router, a full copy
    ("mixtral", 4, ("w1", "w3", "w2"), ()),
    ("mixtral", 4, ("gate", "v_proj"), ()),
    ("qwen3_moe", 8, ("all-linear",), ()),
    ("qwen3_moe", 4, ("q_proj", "down_proj"), ()),
    ("qwen3_moe", 2, ("gate_proj", "up_proj"), ("lm_head",)),
    ("deepseek_v2", 4, ("all-linear",), ()),
    ("deepseek_v2", 8, ("kv_b_proj", "mlp.gate"), ("mlp.experts",)),
]


@pytest.mark.parametrize(("model", "rank", "targets", "saved"), CASES,
                         ids=[f"{m}-r{r}-{'+'.join(t)}-{'+'.join(s)}" for m, r, t, s in CASES])
def test_lora_trainable_count_equals_peft(model, rank, targets, saved):
    cfg = TINY[model]
    counts = count_params(spec_from_config(cfg, model))
    split = split_params(counts, TrainSpec(method=Method.LORA,
                                           lora=LoraSpec(rank=rank, dropout=0.0, targets=targets,
                                                         modules_to_save=saved)))
    peft_targets = "all-linear" if targets == ("all-linear",) else list(targets)
    assert split.num_trainable == _peft_trainable(cfg, rank, peft_targets, saved)
    assert split.num_trainable == split.num_adapter + split.num_saved
    assert (split.num_saved > 0) == bool(saved)


def _peft_adapted_paths(model) -> set[str]:
    """Layer-index-free paths peft put adapters on: modules, or module.parameter for ParamWrapper."""
    paths = set()
    for name, module in model.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            path = re.sub(r"\.\d+(?=\.|$)", ".*", name.removeprefix("base_model.model.")).replace(".base_layer", "")
            param = getattr(module, "parameter_name", None)
            paths.add(f"{path}.{param}" if param else path)
    return paths


@pytest.mark.parametrize("name", ["llama", "gpt2", "mixtral", "qwen3_moe", "deepseek_v2"])
def test_all_linear_adapts_what_peft_adapts(name):
    # peft resolves 'all-linear' to every nn.Linear / Conv1D except the output layer; for the MoE families
    # it also adds the fused experts and the router, and drops dense gate/up/down_proj (see params.py).
    cfg = TINY[name]
    model = peft.get_peft_model(_real_model(cfg), peft.LoraConfig(r=2, target_modules="all-linear"))
    ours = {a.path for a in lora_adapters(count_params(spec_from_config(cfg, name)), LoraSpec(rank=2, dropout=0.0))}
    assert ours == _peft_adapted_paths(model)


@pytest.mark.parametrize(("model", "targets"), [("deepseek_v2", ("gate_proj",)), ("mixtral", ("w3",))])
def test_half_of_a_fused_expert_projection_is_refused_like_peft(model, targets):
    cfg = TINY[model]
    with pytest.raises(ValueError, match="fused"):
        peft.get_peft_model(_real_model(cfg), peft.LoraConfig(r=2, target_modules=list(targets)))
    with pytest.raises(PlannerError, match="fuses them"):
        split_params(count_params(spec_from_config(cfg, model)),
                     TrainSpec(method=Method.LORA, lora=LoraSpec(dropout=0.0, targets=targets)))


def test_peft_dtypes_that_states_py_relies_on():
    """peft upcasts LoRA A/B to fp32 on a bf16 base (autocast_adapter_dtype=True); modules_to_save copies
    keep the base dtype; prepare_model_for_kbit_training casts every non-4-bit parameter to fp32."""
    base = _real_model(TINY["llama"], dtype=torch.bfloat16)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert {d for n, d in trainable.items() if "lora_" in n} == {torch.float32}
    assert {d for n, d in trainable.items() if "lora_" not in n} == {torch.bfloat16}
    prepared = peft.prepare_model_for_kbit_training(_real_model(TINY["llama"], dtype=torch.bfloat16),
                                                    use_gradient_checkpointing=False)
    assert {p.dtype for p in prepared.parameters()} == {torch.float32}


# ------------------------------------------------------------------------------------------ QLoRA bytes


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    paths = {}
    for name in ("llama", "gpt2", "mixtral"):
        path = tmp_path_factory.mktemp(name)
        _real_model(TINY[name]).save_pretrained(path)
        paths[name] = path
    return paths


def _load_4bit(path, quant: QuantSpec):
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant.quant_type.value,
                                bnb_4bit_use_double_quant=quant.double_quant, bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=config, device_map="cpu",
                                                dtype=torch.bfloat16)


def _measure(model) -> tuple[int, int, int, int]:
    """(4-bit bytes incl. quantization state, quantized weight count, 16-bit parameter count, 16-bit bytes)."""
    storages: dict[int, int] = {}

    def add(t):
        if t is not None:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    num_quantized = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            w, qs = module.weight, module.weight.quant_state
            num_quantized += module.in_features * module.out_features
            for t in (w, qs.absmax, qs.code, qs.offset):
                add(t)
            if qs.state2 is not None:
                add(qs.state2.absmax)
                add(qs.state2.code)
    plain = [p for p in model.parameters() if not isinstance(p, bnb.nn.Params4bit)]
    return sum(storages.values()), num_quantized, sum(p.numel() for p in plain), sum(
        p.untyped_storage().nbytes() for p in plain)


QUANTS = [QuantSpec(QuantType(t), dq) for t in ("nf4", "fp4") for dq in (False, True)]


@pytest.mark.parametrize("name", ["llama", "gpt2", "mixtral"])
@pytest.mark.parametrize("quant", QUANTS, ids=lambda q: f"{q.quant_type.value}-dq{int(q.double_quant)}")
def test_quantized_bytes_equal_bitsandbytes_storage(saved_models, name, quant):
    counts = count_params(spec_from_config(TINY[name], name))
    split = split_params(counts, TrainSpec(method=Method.QLORA, quant=quant, lora=LoraSpec(dropout=0.0)))
    four_bit_bytes, num_quantized, num_plain, plain_bytes = _measure(_load_4bit(saved_models[name], quant))
    assert four_bit_bytes == quantized_weight_bytes(counts, quant)
    assert num_quantized == split.num_quantized
    # Embeddings, norms, biases, the head and (transformers 5) fused MoE experts stay in bf16.
    assert num_plain == split.num_16bit
    assert plain_bytes == nbytes(split.num_16bit, "bf16")


def test_double_quantization_constants_per_tensor():
    # QLoRA paper arithmetic (DESIGN.md §3): +0.5 bit/param for fp32 absmax per 64, ~+0.127 with double quant.
    n = 4096 * 4096
    single = quantized_tensor_bytes(n, QuantSpec(QuantType.NF4, double_quant=False))
    double = quantized_tensor_bytes(n, QuantSpec(QuantType.NF4, double_quant=True))
    assert single.weight_bytes == double.weight_bytes == n // 2
    assert single.absmax_bytes * 8 / n == 0.5
    assert round((double.absmax_bytes + double.nested_absmax_bytes) * 8 / n, 3) == 0.127
    assert double.code_bytes == 64 and double.nested_code_bytes == 1024 and double.offset_bytes == 4


def test_qlora_trainable_count_equals_peft_on_the_4bit_model(saved_models):
    quant = QuantSpec(QuantType.NF4, double_quant=True)
    model = _load_4bit(saved_models["llama"], quant)
    lora = peft.LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM")
    trainable, _ = peft.get_peft_model(model, lora).get_nb_trainable_parameters()
    counts = count_params(spec_from_config(TINY["llama"], "llama"))
    assert trainable == split_params(counts, TrainSpec(method=Method.QLORA, lora=LoraSpec(rank=8, dropout=0.0))).num_trainable


@pytest.mark.parametrize(("model", "targets"), [
    ("mixtral", "all-linear"), ("mixtral", ("gate", "v_proj")), ("mixtral", ("w2",)), ("mixtral", ("q_proj", "v_proj")),
    ("qwen3_moe", "all-linear"), ("qwen3_moe", ("q_proj", "down_proj")), ("qwen3_moe", ("q_proj", "o_proj")),
    ("llama", "all-linear"), ("gpt2", ("c_attn", "lm_head", "wte")),
])
def test_lora_dropout_is_refused_exactly_where_peft_refuses_it(model, targets):
    """peft 0.21 lora.ParamWrapper (MoE expert tensors, router weights) raises ValueError for lora_dropout != 0;
    lora_dropout is one value per LoraConfig. planner refuses the same configurations, in one sentence."""
    cfg = TINY[model]
    try:
        peft.get_peft_model(_real_model(cfg), peft.LoraConfig(r=2, lora_dropout=0.05, target_modules=targets))
        peft_refuses = False
    except ValueError as exc:
        assert "lora_dropout" in str(exc)
        peft_refuses = True
    spec = spec_from_config(dict(cfg), model)
    ours = tuple(targets) if isinstance(targets, tuple) else (targets,)
    train = TrainSpec(method=Method.LORA, lora=LoraSpec(rank=2, dropout=0.05, targets=ours))
    if peft_refuses:
        with pytest.raises(PlannerError, match=r"lora\.ParamWrapper.*--lora-dropout 0"):
            split_params(count_params(spec), train)
    else:
        split_params(count_params(spec), train)
    # without dropout, peft and planner accept every one of them
    peft.get_peft_model(_real_model(cfg), peft.LoraConfig(r=2, lora_dropout=0.0, target_modules=targets))
    split_params(count_params(spec), replace(train, lora=replace(train.lora, dropout=0.0)))
