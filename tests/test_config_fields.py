"""planner/config_fields.py: every config.json field planner reads is checked in one place (issue 14 item 9).

The bad-input corpus (test_bad_inputs.py) runs the CLI on broken configs; these tests keep the table complete
as the estimator learns new fields, and check that every shipped catalog config passes it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from planner import catalog
from planner.config_fields import FIELDS, SHOWN_CHARS, check_config, shown
from planner.errors import MAX_MESSAGE_CHARS, PlannerError, one_sentence
from planner.models import spec_from_config

ROOT = Path(__file__).resolve().parent.parent
# Where config.json fields are read, and the reads that are not field values (structure, not a number).
READERS = ["planner/models.py", "planner/estimate/count/inventories.py", "planner/estimate/step/family_layers.py",
           "planner/estimate/step/moe.py", "planner/estimate/step/simulate.py", "planner/estimate/count/params.py"]
NOT_VALUES = {"text_config", "architectures", "auto_map"}
_READ = re.compile(
    r"""(?:_int|_get|_optional_int|_require_int)\(\s*(?:cfg|c|self\.cfg),\s*["'](\w+)["']"""
    r"""|(?:cfg|c|self\.cfg)\.get\(\s*["'](\w+)["']|(?:cfg|c)\[\s*["'](\w+)["']\s*\]"""
)


def _fields_read() -> set[str]:
    keys = set()
    for rel in READERS:
        path = ROOT / rel
        if path.exists():
            for m in _READ.finditer(path.read_text()):
                keys.add(next(g for g in m.groups() if g))
    return keys - NOT_VALUES


def test_every_field_read_is_checked():
    missing = sorted(_fields_read() - set(FIELDS))
    assert not missing, f"config fields read without a check in planner/config_fields.FIELDS: {missing}"


@pytest.mark.parametrize("name", catalog.model_names())
def test_catalog_configs_pass(name):
    check_config(catalog.model_config(name), name)


def test_values_are_shown_short():
    assert shown("x" * 10_000).endswith("...") and len(shown("x" * 10_000)) == SHOWN_CHARS
    assert shown(4096) == "4096"


def test_error_messages_are_capped():
    text = one_sentence("a\n  b " + "y" * 1_000_000)
    assert text.startswith("a b y") and text.endswith("...") and len(text) == MAX_MESSAGE_CHARS


@pytest.mark.parametrize(("key", "value"), [
    ("q_lora_rank", "x"), ("q_lora_rank", 0), ("decoder_sparse_step", 0), ("attention_dropout", 1.0),
    ("attention_dropout", float("nan")), ("mlp_bias", 1), ("mlp_only_layers", [-1]), ("layer_types", [1]),
    ("intermediate_size", 10**30), ("attn_logit_softcapping", 0), ("hidden_act", ["silu"]),
])  # fmt: skip
def test_bad_value_is_refused_naming_the_field(key, value):
    cfg = {**catalog.model_config("qwen3-30b-a3b"), key: value}
    with pytest.raises(PlannerError, match=repr(key)):
        spec_from_config(cfg, "m")


@pytest.mark.parametrize(("key", "value"), [
    ("q_lora_rank", None), ("attention_dropout", 0.0), ("attention_dropout", None), ("mlp_only_layers", [0, 3]),
    ("attn_logit_softcapping", None), ("num_key_value_heads", None), ("tie_word_embeddings", None),
])  # fmt: skip
def test_null_and_valid_values_pass(key, value):
    spec_from_config({**catalog.model_config("qwen3-30b-a3b"), key: value}, "m")


def test_expert_fields_of_a_dense_family_are_ignored():
    """transformers' dense configs (Gemma2Config, LlamaConfig, ...) ignore expert keys; planner read them and
    crashed (KeyError 'gate', found by the estimate fuzz)."""
    spec = spec_from_config({**catalog.model_config("gemma-2-9b"), "n_routed_experts": 2, "num_experts_per_tok": None},
                            "g")  # fmt: skip
    assert spec.num_experts == 0 and not spec.is_moe
    from planner.estimate.core import estimate
    from planner.specs import Cluster, Parallelism, TrainSpec

    estimate(spec, TrainSpec(parallelism=Parallelism.from_zero(3), seq_len=1024), Cluster(gpu=catalog.gpu("h100-sxm-80gb"), num_gpus=8))
