"""Setups that share one simulated step give the step the full simulation gives each (issue 15's speed work).

core.estimate drops ZeRO-2's hold-a-large-gradient rule (``hold_grads_over``, tape.py ``_accumulate_grad``) when
no trainable tensor is larger than the reduce bucket (``largest_trainable_tensor``), so ZeRO-2's row shares its
simulation with the offload row's. Here every random shape and recipe is simulated both ways, unshared and at
the tightest bucket the rule allows (the largest trainable tensor itself), and the two steps agree field by
field; and the shared estimate equals the unshared one."""

from __future__ import annotations

import dataclasses
import random

import pytest

from planner import catalog
from planner.errors import PlannerError
from planner.estimate import core
from planner.estimate.count.params import count_params, largest_trainable_tensor
from planner.estimate.step import simulate
from planner.estimate.step.inputs import lora_adapter_paths
from planner.models import load_model, spec_from_config
from planner.specs import Cluster, LoraSpec, Method, Offload, Parallelism, TrainSpec
from tests.presets import tiny

TARGETS = [("all-linear",), ("q_proj", "v_proj"), ("down_proj",), ("gate_proj", "up_proj", "o_proj")]


def _random_case(rng: random.Random):
    family = rng.choice(["llama", "llama", "gpt2", "qwen2", "mistral"])
    if family == "gpt2":
        cfg = tiny("gpt2", n_embd=rng.choice([32, 64, 96]), n_layer=rng.randint(2, 4),
                   vocab_size=rng.choice([256, 512, 1000]))
        targets = rng.choice([("all-linear",), ("c_attn",), ("c_fc", "c_proj")])
        saves = rng.choice([(), (), ("lm_head",)])
    else:
        heads = rng.choice([2, 4])
        cfg = tiny("llama", model_type=family, hidden_size=16 * heads * rng.randint(1, 3), num_attention_heads=heads,
                   num_key_value_heads=rng.choice([1, heads]), intermediate_size=rng.choice([64, 128, 200]),
                   num_hidden_layers=rng.randint(2, 5), vocab_size=rng.choice([256, 512, 1000]),
                   tie_word_embeddings=rng.random() < 0.3)
        targets = rng.choice(TARGETS)
        saves = rng.choice([(), (), ("lm_head",), ("embed_tokens",)])
    model = spec_from_config(cfg, f"tiny-{family}")
    method = rng.choice([Method.FULL, Method.LORA, Method.LORA, Method.QLORA])
    lora = LoraSpec(rank=rng.choice([1, 4, 8, 16]), dropout=rng.choice([0.0, 0.05]), targets=targets,
                    modules_to_save=saves)
    train = TrainSpec(method=method, lora=lora, parallelism=Parallelism.from_zero(2), micro_batch=rng.randint(1, 4),
                      seq_len=rng.choice([16, 32, 64, 100]), grad_checkpointing=rng.random() < 0.4)
    return model, train


def test_the_bucket_rule_changes_nothing_without_a_larger_tensor():
    rng = random.Random(15)
    checked = 0
    for _ in range(30):
        model, train = _random_case(rng)
        try:
            largest = largest_trainable_tensor(count_params(model), train)
            adapters = lora_adapter_paths(model, train)
            unshared = simulate.simulate_step(model, train, keep_grads=False, adapters=adapters, hold_grads_over=0)
        except PlannerError:
            continue  # a recipe the estimator refuses (nothing trainable, ...)
        shared = simulate.simulate_step(model, train, keep_grads=False, adapters=adapters, hold_grads_over=largest)
        assert dataclasses.asdict(shared) == dataclasses.asdict(unshared), (model.name, train)
        checked += 1
    assert checked >= 20


@pytest.mark.parametrize("method", [Method.LORA, Method.QLORA])
def test_a_shared_zero2_row_is_estimated_as_before(method, monkeypatch):
    model = load_model("llama-3.2-1b")
    cluster = Cluster(gpu=catalog.gpu("a10-24gb"), num_gpus=2)
    train = TrainSpec(method=method, parallelism=Parallelism.from_zero(2, Offload.NONE), seq_len=1024)
    shared = core.estimate(model, train, cluster)
    calls = []
    real = core.simulate_step

    def unshared_step(*args, **kwargs):  # the bucket rule as before: always on under ZeRO-2 without offload
        calls.append(kwargs["hold_grads_over"])
        kwargs["hold_grads_over"] = core.reduce_bucket_elements(train, model.hidden_size)
        return real(*args, **kwargs)

    monkeypatch.setattr(core, "simulate_step", unshared_step)
    unshared = core.estimate(model, train, cluster)
    assert calls == [0]  # the rule was dropped for this row
    assert unshared == shared
