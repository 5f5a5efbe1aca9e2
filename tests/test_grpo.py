"""--task grpo (issue 21): the spec, the estimator's rules against TRL 1.16's and transformers' source, --from a
GRPOConfig, and a real GRPOTrainer profile.

Independent numbers: GRPOConfig's defaults (num_generations 8, max_completion_length 512, beta 0.0,
vllm_gpu_memory_utilization 0.3, disable_dropout False) are read from the installed TRL; the KV cache of
transformers' DynamicCache is 2 x layers x rows x kv_heads x head_dim x positions elements in the compute dtype
(cache_utils.py DynamicLayer.update), worked by hand below for the tiny Llama (2 layers, 2 KV heads of 32).
"""

from __future__ import annotations

import json

import pytest

from planner import catalog
from planner.errors import PlannerError
from planner.estimate import grpo
from planner.estimate.core import estimate
from planner.specs import (
    Cluster,
    Generation,
    GrpoSpec,
    LoraSpec,
    Method,
    Precision,
    Reference,
    Task,
    TaskSpec,
    TrainSpec,
    train_spec_from_dict,
    train_spec_to_dict,
)
from tests.bundle_helpers import TINY_LLAMA, tiny_model
from tests.cli_harness import run_inprocess

CPU = Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=1)


def _task(**kw) -> TaskSpec:
    return TaskSpec(Task.GRPO, grpo=GrpoSpec(**{"num_generations": 2, "completion_len": 16, **kw}))


def _train(**kw) -> TrainSpec:
    base = dict(method=Method.FULL, precision=Precision.FP32, micro_batch=4, seq_len=32,
                lora=LoraSpec(rank=8, alpha=16, dropout=0.0), task=_task())
    base.update(kw)
    return TrainSpec(**base)


def _est(**kw):
    return estimate(tiny_model(), _train(**kw), CPU, device="cpu")


@pytest.mark.parametrize("kw, words", [
    (dict(num_generations=1), "at least 2"),
    (dict(completion_len=0), "--completion-len"),
    (dict(beta=-0.1), "--beta"),
    (dict(vllm_sleep=True), "apply to --generation vllm-colocate"),
    (dict(generation=Generation.VLLM_COLOCATE, vllm_memory_utilization=1.5), "in \\(0, 1\\]"),
])
def test_spec_refusals_are_one_sentence(kw, words):
    with pytest.raises(PlannerError, match=words):
        _task(**kw)


def test_run_refusals():
    with pytest.raises(PlannerError, match="must exceed --completion-len"):
        _train(seq_len=16)
    with pytest.raises(PlannerError, match="applies to --task dpo"):
        TaskSpec(Task.GRPO, Reference.COPY, GrpoSpec())
    with pytest.raises(PlannerError, match="multiple of --num-generations 3"):
        _est(task=_task(num_generations=3))


def _grpo_config_defaults() -> dict:
    """GRPOConfig's field defaults read from the installed TRL's source (importing TRL takes tens of seconds)."""
    import ast
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("trl")
    if spec is None:
        pytest.skip("trl is not installed")
    tree = ast.parse((Path(spec.origin).parent / "trainer" / "grpo_config.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "GRPOConfig"]
    out = {}
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.value, ast.Call):
            for kw in node.value.keywords:
                if kw.arg == "default":
                    out[node.target.id] = ast.literal_eval(kw.value)
    return out


def test_defaults_match_the_installed_trl():
    defaults = _grpo_config_defaults()
    spec = GrpoSpec()
    assert spec.num_generations == defaults["num_generations"]
    assert spec.completion_len == defaults["max_completion_length"]
    assert spec.beta == defaults["beta"]
    assert spec.vllm_memory_utilization == defaults["vllm_gpu_memory_utilization"]
    assert defaults["disable_dropout"] is False  # the step keeps the model's dropout
    assert defaults["loss_type"] == "dapo"  # grpo_step.py's loss


def test_json_round_trip():
    train = _train(task=_task(beta=0.04))
    assert train_spec_from_dict(json.loads(json.dumps(train_spec_to_dict(train)))) == train


def test_reference_follows_beta():
    """beta 0: no reference; otherwise a frozen copy for full fine-tuning, the adapter for LoRA."""
    none, copy = _est(), _est(task=_task(beta=0.04))
    assert [m["role"] for m in none.row()["models"]] == ["policy"]
    assert copy.per_gpu.params_bytes == 2 * none.per_gpu.params_bytes
    lora = _est(method=Method.LORA, task=_task(beta=0.04))
    assert lora.row()["models"][1]["method"] == "policy with its adapter disabled"
    assert lora.row()["models"][1]["params_bytes"] == 0


def test_kv_cache_by_hand():
    # tiny llama: 2 layers, 2 KV heads of head_dim 32; 4 rows, 31 positions (32 - 1), fp32: keys and values of
    # every layer, plus one layer's previous key tensor (30 positions) during torch.cat
    model = tiny_model()
    assert (model.num_layers, model.num_kv_heads, model.head_dim) == (2, 2, 32)
    per_position = 4 * 2 * 32 * 4
    assert grpo.kv_cache_bytes(model, _train()) == 2 * 2 * per_position * 31 + per_position * 30
    gen = _est().phases["generation"]
    assert gen.grads_bytes == 0 and gen.activations_bytes == 0
    assert gen.temporaries_bytes == grpo.kv_cache_bytes(model, _train()) + 4 * model.vocab_size * 12


def test_vllm_share_is_in_the_device_figure_and_sleep_releases_it():
    base = _est()
    held = _est(task=_task(generation=Generation.VLLM_COLOCATE))
    asleep = _est(task=_task(generation=Generation.VLLM_COLOCATE, vllm_sleep=True))
    share = int(CPU.gpu.capacity_bytes * 0.3)
    assert held.device_bytes - asleep.device_bytes > 0
    assert "generation" not in held.phases
    assert share <= held.device_bytes
    assert base.per_gpu == held.per_gpu  # the trainer's own tensors are the same


def test_cli_estimate_with_grpo(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY_LLAMA))
    out = run_inprocess(["estimate", "-m", str(cfg), "--method", "lora", "--zero", "0", "--task", "grpo",
                         "--seq-len", "64", "--completion-len", "32", "--num-generations", "2", "--micro-batch", "2",
                         "--beta", "0.04", "--json"])
    assert out.code == 0, out.stderr
    (row,) = json.loads(out.stdout)["rows"]
    assert row["task"]["grpo"]["beta"] == 0.04
    bad = run_inprocess(["estimate", "-m", str(cfg), "--task", "dpo", "--beta", "0.1"])
    assert bad.code == 1 and "applies to --task grpo" in bad.stderr


def test_no_fit_advice_keeps_the_completion_whole():
    # the "shorter sequences" tip tried --seq-len 256 under a 512-token completion, which TrainSpec refuses, and
    # recommend stopped on that sentence instead of its no-fit answer
    out = run_inprocess(["recommend", "-m", "llama-3.1-8b", "--task", "grpo", "-g", "8", "--gpus", "1",
                         "--generation", "vllm-colocate", "--vllm-memory-utilization", "0.9"])
    assert out.code == 1 and out.stderr.startswith("error: no full fine-tuning/LoRA/QLoRA plan"), out.stderr
    assert "--seq-len 256" not in out.stdout + out.stderr


def test_from_a_grpo_config(tmp_path):
    from planner.from_config import read_training_config

    path = tmp_path / "grpo.yaml"
    path.write_text(json.dumps({"model_name_or_path": "meta-llama/Llama-3.1-8B", "dtype": "bfloat16", "num_generations": 4,
                                "max_completion_length": 128, "beta": 0.04, "use_vllm": True,
                                "vllm_enable_sleep_mode": True}))
    got = read_training_config(path).train.task
    assert got.kind is Task.GRPO
    assert got.grpo == GrpoSpec(num_generations=4, completion_len=128, beta=0.04,
                                generation=Generation.VLLM_COLOCATE, vllm_sleep=True)
    path.write_text(json.dumps({"model_name_or_path": "meta-llama/Llama-3.1-8B", "dtype": "bfloat16", "num_generations": 4,
                                "steps_per_generation": 2}))
    with pytest.raises(PlannerError, match="steps_per_generation"):
        read_training_config(path)


@pytest.mark.slow
def test_profiled_grpo_trainer_is_within_the_bounds(tmp_path):
    pytest.importorskip("trl")
    from planner.profile.launcher import run_profile
    from planner.validate.grpo_cells import GRPO_CELLS
    from planner.validate.run import _measured_from_profile, evaluate

    cell = GRPO_CELLS[2]  # LoRA, beta 0.04: the adapter disabled for the reference's scoring
    status, message, path = run_profile(cell.model_spec(), cell.train_spec(), num_gpus=1, steps=3, device="cpu",
                                        out=tmp_path / "prof", show_progress=False)
    assert status == "ok", message
    status, message, measured = _measured_from_profile(path)
    result = evaluate(cell, status, message, measured, source="test", wall_s=None)
    assert not result.violations(), result.violations()
