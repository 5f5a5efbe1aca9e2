"""Each known family's config as transformers reads it: class defaults for absent keys, and the shapes derived
from them. The one definition that the model loader (planner/models.py, and so ``ModelSpec``), the parameter
counter (estimate/families.py) and the step simulator (estimate/act_families.py) read.

Source: transformers 5.24 ``models/<family>/configuration_<family>.py`` (the dataclass field defaults, and
``__post_init__``: a ``num_key_value_heads`` of None means one KV head per attention head) and
``modeling_<family>.py`` (``head_dim = getattr(config, "head_dim", None) or hidden_size // num_attention_heads``:
Qwen3, Gemma and Gemma-2 declare a ``head_dim`` of their own, every other family here derives it).
tests/test_family_config.py instantiates transformers' own config classes from the same dicts and checks that
they, ``ModelSpec``, the counter and the simulator agree.

The model's size (hidden size, layers, heads, vocabulary) has no default here: planner refuses a config that
leaves one out rather than estimate the class's example model.
"""

from __future__ import annotations

from typing import Any

# Keys planner reads with a default, per family, as the config class declares them (None: the class's own
# None, resolved as transformers resolves it -- see the functions below).
CLASS_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"num_key_value_heads": None, "head_dim": None, "intermediate_size": 11008,
              "max_position_embeddings": 2048, "tie_word_embeddings": False},
    "mistral": {"num_key_value_heads": 8, "head_dim": None, "intermediate_size": 14336,
                "max_position_embeddings": 131072, "tie_word_embeddings": False},
    "mixtral": {"num_key_value_heads": 8, "head_dim": None, "intermediate_size": 14336,
                "max_position_embeddings": 131072, "tie_word_embeddings": False, "num_local_experts": 8,
                "num_experts_per_tok": 2},
    "qwen2": {"num_key_value_heads": 32, "intermediate_size": 22016, "max_position_embeddings": 32768,
              "tie_word_embeddings": False},
    "qwen3": {"num_key_value_heads": 32, "head_dim": 128, "intermediate_size": 22016,
              "max_position_embeddings": 32768, "tie_word_embeddings": False},
    # Qwen3MoeConfig has no head_dim field (unlike Qwen3Config): Qwen3MoeAttention derives hidden // heads
    "qwen3_moe": {"num_key_value_heads": 4, "intermediate_size": 6144, "moe_intermediate_size": 768,
                  "max_position_embeddings": 32768, "tie_word_embeddings": False, "num_experts": 128,
                  "num_experts_per_tok": 8},
    "qwen2_moe": {"num_key_value_heads": 16, "intermediate_size": 5632, "moe_intermediate_size": 1408,
                  "max_position_embeddings": 32768, "tie_word_embeddings": False, "num_experts": 60,
                  "num_experts_per_tok": 4, "qkv_bias": True},
    "gemma": {"num_key_value_heads": 16, "head_dim": 256, "intermediate_size": 24576,
              "max_position_embeddings": 8192, "tie_word_embeddings": True},
    "gemma2": {"num_key_value_heads": 4, "head_dim": 256, "intermediate_size": 9216,
               "max_position_embeddings": 8192, "tie_word_embeddings": True},
    "phi3": {"num_key_value_heads": None, "intermediate_size": 8192, "max_position_embeddings": 4096,
             "tie_word_embeddings": False},
    # DeepseekV2Config sets head_dim to qk_rope_head_dim (the rotary width); planner's ModelSpec.head_dim for
    # it is the grouped-query stand-in's head width instead (step/family_layers.py), hidden // heads
    "deepseek_v2": {"num_key_value_heads": None, "intermediate_size": 11008, "moe_intermediate_size": 1407,
                    "max_position_embeddings": 2048, "tie_word_embeddings": False, "n_routed_experts": 64,
                    "num_experts_per_tok": None},
    "starcoder2": {"num_key_value_heads": 2, "intermediate_size": 12288, "max_position_embeddings": 4096,
                   "tie_word_embeddings": True},
    "gpt2": {"n_inner": None, "n_positions": 1024, "tie_word_embeddings": True},
}

# An unknown family (no class defaults here): planner's assumptions for an absent key.
UNKNOWN_MAX_POSITIONS = 2048
UNKNOWN_MLP_RATIO = 4  # intermediate_size = 4 x hidden_size, as GPT-2's n_inner


def value(model_type: str, cfg: dict[str, Any], key: str, fallback: Any = None) -> Any:
    """``cfg[key]`` when it is given (not None), else the family's class default, else ``fallback``."""
    given = cfg.get(key)
    if given is not None:
        return given
    default = CLASS_DEFAULTS.get(model_type, {}).get(key)
    return fallback if default is None else default


def num_kv_heads(model_type: str, cfg: dict[str, Any], heads: int) -> Any:
    """KV heads: given, else the class default; a None there means one per attention head."""
    return value(model_type, cfg, "num_key_value_heads", heads)


def head_dim(model_type: str, cfg: dict[str, Any], hidden: int, heads: int) -> Any:
    """The attention head width: given, else the class's own (Qwen3 128, Gemma/Gemma-2 256), else hidden //
    heads (None when that does not divide: the caller refuses the config)."""
    return value(model_type, cfg, "head_dim", hidden // heads if hidden % heads == 0 else None)


def intermediate_size(model_type: str, cfg: dict[str, Any], hidden: int) -> Any:
    return value(model_type, cfg, "intermediate_size", UNKNOWN_MLP_RATIO * hidden)


def max_position_embeddings(model_type: str, cfg: dict[str, Any]) -> Any:
    return value(model_type, cfg, "max_position_embeddings", UNKNOWN_MAX_POSITIONS)


def tie_word_embeddings(model_type: str, cfg: dict[str, Any]) -> bool:
    return bool(value(model_type, cfg, "tie_word_embeddings", False))


def moe_intermediate_size(model_type: str, cfg: dict[str, Any], intermediate: int) -> int:
    """One routed expert's width: ``moe_intermediate_size`` (Qwen-MoE, DeepSeek), else the dense width
    (Mixtral's experts are intermediate_size wide)."""
    return int(value(model_type, cfg, "moe_intermediate_size", intermediate))


# The keys that name the number of routed experts, in the order planner looks for them.
EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


def expert_key(model_type: str, cfg: dict[str, Any]) -> str | None:
    """The key that holds the family's number of routed experts: the first given, else the one its config class
    declares (Mixtral's num_local_experts, Qwen-MoE's num_experts, DeepSeek's n_routed_experts), else None."""
    given = next((k for k in EXPERT_KEYS if cfg.get(k)), None) or next(
        (k for k in EXPERT_KEYS if cfg.get(k) is not None), None)  # a given 0: no experts
    if given is not None:
        return given
    declared = CLASS_DEFAULTS.get(model_type, {})
    return next((k for k in EXPERT_KEYS if declared.get(k)), None)


# Projection biases (modeling_<family>.py, transformers 5.24): Qwen2Attention hard-codes q/k/v biases and none on
# o_proj; Qwen2MoeAttention takes config.qkv_bias for q/k/v; Mistral, Mixtral and Phi-3 have none whatever the
# config says; Llama, Qwen3(-MoE), Gemma(-2) and DeepSeek-V2 (whose grouped-query stand-in in step/family_layers.py
# takes it for its q/k/v/o) take config.attention_bias. An unknown family estimated with the llama layer is taken
# at its word. MLP biases: config.mlp_bias in Llama and DeepSeek-V2 only.
_NO_ATTENTION_BIAS = ("mistral", "mixtral", "phi3")
_MLP_BIAS_FAMILIES = ("llama", "deepseek_v2")


def attention_bias(model_type: str, cfg: dict[str, Any]) -> tuple[bool, bool]:
    """Whether the (q/k/v, o) projections have biases."""
    if model_type == "qwen2":
        return True, False
    if model_type == "qwen2_moe":
        return bool(value(model_type, cfg, "qkv_bias")), False
    if model_type in _NO_ATTENTION_BIAS:
        return False, False
    given = bool(cfg.get("attention_bias", False))
    return given, given


def mlp_bias(model_type: str, cfg: dict[str, Any]) -> bool:
    """Whether the dense MLP's gate/up/down projections have biases."""
    if model_type in _MLP_BIAS_FAMILIES or model_type not in CLASS_DEFAULTS:
        return bool(cfg.get("mlp_bias", False))
    return False
