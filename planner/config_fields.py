"""Every config.json field planner reads, checked in one place before any of them is used.

``FIELDS`` names each field the estimator, the activation model or the CLI reads from a model's config
(``planner/estimate/count/inventories.py``, ``step/family_layers.py``, ``planner/models.py``) with what it must be: a whole
number in a range, a probability, a true/false flag, a positive number, a list of layer indices or of names,
or a name. ``check_config`` refuses the first field that is not, in one sentence that names it and shows its
value (shortened: a config can hold megabytes). A field planner does not read is left to transformers.

The upper bounds are "beyond any real model", not tight limits: they keep a typo such as
``intermediate_size: 1e30`` from turning into 10^35-byte estimates, and bound an estimate's work (issue 14
item 5: the ZeRO 1/2 partitions are computed per trainable tensor, a few dozen per layer). A field may be
absent; ``null`` is allowed where transformers' config classes take it (a default, or "none" as for DeepSeek's
``q_lora_rank``). ``planner.specs`` checks the normalised sizes (``ModelSpec``) and the GPU count (``Cluster``)
against the same limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from planner.errors import PlannerError

# The longest value a message shows; the rest is cut with "...".
SHOWN_CHARS = 60

# Decoder layers: published LLMs have at most ~100-200 (Llama-3.1-405B 126, PaLM 118, GPT-3 96); the deepest
# transformer trained is DeepNet's 1,000 layers (Wang et al. 2022, arXiv 2203.00555). 4,096 is four times that,
# and keeps the per-tensor ZeRO partition work of the worst estimate (4,096 layers on MAX_GPUS) under a second.
MAX_LAYERS = 4096
# Hidden size: the widest published models are ~16-25k (PaLM 18,432; GPT-3 12,288); 40x that.
MAX_HIDDEN = 1_000_000
MAX_HEADS = 100_000
MAX_HEAD_DIM = 65_536
MAX_INTERMEDIATE = 10_000_000
MAX_VOCAB = 100_000_000  # vocabularies reach ~256k (Gemma 256,000; Llama-3 128,256); 400x that
MAX_POSITIONS = 1_000_000_000
MAX_EXPERTS = 100_000
MAX_RANK = 1_000_000
MAX_LIST = 100_000
MAX_NAME_CHARS = 200
# Data-parallel GPUs (--gpus): the largest GPU clusters of 2025 hold ~100-200k GPUs and the largest published
# training runs used ~16-100k (Llama 3: 16,384 H100s); 2^20 is five times the largest cluster. The ZeRO
# partitions are computed per tensor boundary, never per rank (zero_partition.py), so this bounds no loop.
MAX_GPUS = 2**20


def shown(value: Any) -> str:
    """``repr(value)``, cut to SHOWN_CHARS with "..." (a config value can be megabytes long)."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


@dataclass(frozen=True)
class Field:
    kind: str  # "int", "prob", "flag", "positive", "int_list", "name_list", "name"
    minimum: int = 1
    maximum: int = 0
    nullable: bool = True


def _count(minimum: int, maximum: int, nullable: bool = True) -> Field:
    return Field("int", minimum, maximum, nullable)


PROB = Field("prob")
FLAG = Field("flag")
POSITIVE = Field("positive")
NAME = Field("name")

FIELDS: dict[str, Field] = {
    # shape (planner/models.py; the families' analytical inventories)
    "hidden_size": _count(1, MAX_HIDDEN, nullable=False),
    "n_embd": _count(1, MAX_HIDDEN, nullable=False),
    "num_hidden_layers": _count(1, MAX_LAYERS, nullable=False),
    "n_layer": _count(1, MAX_LAYERS, nullable=False),
    "num_attention_heads": _count(1, MAX_HEADS, nullable=False),
    "n_head": _count(1, MAX_HEADS, nullable=False),
    "num_key_value_heads": _count(1, MAX_HEADS),
    "head_dim": _count(1, MAX_HEAD_DIM),
    "intermediate_size": _count(1, MAX_INTERMEDIATE),
    "n_inner": _count(1, MAX_INTERMEDIATE),
    "vocab_size": _count(1, MAX_VOCAB, nullable=False),
    "max_position_embeddings": _count(1, MAX_POSITIONS, nullable=False),
    "n_positions": _count(1, MAX_POSITIONS, nullable=False),
    # mixture of experts (Mixtral, Qwen2/3-MoE, DeepSeek-V2)
    "num_local_experts": _count(0, MAX_EXPERTS),
    "num_experts": _count(0, MAX_EXPERTS),
    "n_routed_experts": _count(0, MAX_EXPERTS),
    "num_experts_per_tok": _count(0, MAX_EXPERTS),
    "n_shared_experts": _count(0, MAX_EXPERTS),
    "moe_intermediate_size": _count(1, MAX_INTERMEDIATE),
    "shared_expert_intermediate_size": _count(0, MAX_INTERMEDIATE),
    "decoder_sparse_step": _count(1, MAX_LAYERS),
    "mlp_only_layers": Field("int_list", 0, MAX_LAYERS),
    "first_k_dense_replace": _count(0, MAX_LAYERS),
    "moe_layer_freq": _count(1, MAX_LAYERS),
    # DeepSeek-V2 multi-head latent attention (null q_lora_rank: a plain q_proj, as in V2-Lite)
    "q_lora_rank": _count(1, MAX_RANK),
    "kv_lora_rank": _count(1, MAX_RANK),
    "qk_rope_head_dim": _count(0, MAX_HEAD_DIM),
    "qk_nope_head_dim": _count(0, MAX_HEAD_DIM),
    "v_head_dim": _count(1, MAX_HEAD_DIM),
    # dropout probabilities (the activation model keeps dropout masks)
    "attention_dropout": PROB,
    "attn_pdrop": PROB,
    "resid_pdrop": PROB,
    "embd_pdrop": PROB,
    "hidden_dropout": PROB,
    "summary_first_dropout": PROB,
    # flags
    "tie_word_embeddings": FLAG,
    "attention_bias": FLAG,
    "mlp_bias": FLAG,
    "add_cross_attention": FLAG,
    # Gemma-2
    "attn_logit_softcapping": POSITIVE,
    "final_logit_softcapping": POSITIVE,
    "layer_types": Field("name_list", 0, MAX_LAYERS),
    # names
    "activation_function": NAME,
    "hidden_act": NAME,
    "model_type": Field("name", nullable=False),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _problem(field: Field, value: Any) -> str | None:
    """Why ``value`` is not valid for ``field``, or None."""
    null = " or null" if field.nullable else ""
    if value is None:
        return None if field.nullable else "must not be null"
    if field.kind == "int":
        if not _is_int(value):
            return f"must be an integer from {field.minimum} to {field.maximum:,}{null}, got {shown(value)}"
        if value < field.minimum:
            floor = "a positive integer" if field.minimum == 1 else f"an integer of at least {field.minimum}"
            return f"must be {floor}, got {value}"
        if value > field.maximum:
            return f"must be at most {field.maximum:,} (beyond any real model), got {shown(value)}"
        return None
    if field.kind == "prob":
        if not _is_number(value) or math.isnan(value) or not 0.0 <= value < 1.0:
            return f"must be a dropout probability in [0, 1){null}, got {shown(value)}"
        return None
    if field.kind == "flag":
        if not isinstance(value, bool):
            return f"must be true or false{null}, got {shown(value)}"
        return None
    if field.kind == "positive":
        if not _is_number(value) or math.isnan(value) or math.isinf(value) or value <= 0:
            return f"must be a positive number{null}, got {shown(value)}"
        return None
    if field.kind == "int_list":
        if not isinstance(value, list) or len(value) > MAX_LIST:
            return f"must be a list of layer indices{null}, got {shown(value)}"
        for v in value:
            if not _is_int(v) or not field.minimum <= v <= field.maximum:
                return f"must list layer indices (integers from 0 to {field.maximum:,}), got {shown(v)} in it"
        return None
    if field.kind == "name_list":
        if not isinstance(value, list) or len(value) > MAX_LIST or not all(isinstance(v, str) for v in value):
            return f"must be a list of names{null}, got {shown(value)}"
        return None
    if field.kind == "name":
        if not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS:
            return f"must be a name of at most {MAX_NAME_CHARS} characters{null}, got {shown(value)}"
        return None
    raise AssertionError(field.kind)


def check_config(cfg: dict[str, Any], name: str) -> None:
    """Raise PlannerError for the first field of ``cfg`` that planner reads and that is not valid."""
    for key, field in FIELDS.items():
        if key not in cfg:
            continue
        why = _problem(field, cfg[key])
        if why is not None:
            raise PlannerError(f"model {shown(name)}: {key!r} {why}.")
