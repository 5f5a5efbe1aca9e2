"""The shared tiny debug models of the tests: real transformers configs small enough to build, train and
profile on CPU in seconds. A test that needs another shape says so with an override
(``tiny("llama", vocab_size=1000)``) instead of writing out a config of its own."""

from __future__ import annotations

from typing import Any

_PRESETS: dict[str, dict[str, Any]] = {
    # Llama with grouped-query attention (4 heads, 2 KV heads): about 100k parameters
    "llama": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 128},
    # GPT-2 (Conv1D, tied embeddings, dropout)
    "gpt2": {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 512, "n_positions": 128},
}


def tiny(family: str = "llama", **overrides: Any) -> dict[str, Any]:
    """A fresh config dict of the family's debug model, with ``overrides`` applied."""
    return {**_PRESETS[family], **overrides}
