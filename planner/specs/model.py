"""What is trained: ModelSpec, the architecture planner reads from a config (bounded by config_fields)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from planner.config_fields import MAX_HIDDEN, MAX_LAYERS, MAX_VOCAB
from planner.errors import PlannerError


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only causal LM, described by its Hugging Face config.

    The common shape fields are normalised here; family-specific details stay in ``config`` (the raw
    config.json as a dict) and are read by the estimator module that needs them.
    """

    name: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    num_experts: int = 0
    num_experts_per_tok: int = 0
    source: str = "catalog"
    config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        for attr in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "vocab_size"):
            value = getattr(self, attr)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PlannerError(f"model {self.name!r}: {attr} must be a positive integer, got {value!r}.")
        if self.num_heads % self.num_kv_heads:
            raise PlannerError(
                f"model {self.name!r}: num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})."
            )
        if self.num_layers > MAX_LAYERS or self.hidden_size > MAX_HIDDEN or self.vocab_size > MAX_VOCAB:
            # the limits and why: planner/config_fields.py
            raise PlannerError(
                f"model {self.name!r}: sizes are beyond any real model (layers {self.num_layers:,}, "
                f"hidden {self.hidden_size:,}, vocabulary {self.vocab_size:,}; planner takes at most "
                f"{MAX_LAYERS:,} layers, hidden size {MAX_HIDDEN:,} and a vocabulary of {MAX_VOCAB:,})."
            )

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def config_json(self) -> str:
        return json.dumps(self.config, sort_keys=True)
