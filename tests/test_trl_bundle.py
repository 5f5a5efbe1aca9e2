"""The --task dpo and --task grpo bundles (issue 21 item 4): train.py runs TRL's own DPOTrainer / GRPOTrainer.

The fast tests render the bundles (pure). The slow ones write the bundle of a validation cell's plan (the first
DPO cell: llama full fp32 with a reference copy; the first GRPO cell: llama full, 2 generations, beta 0.04), run its
own train.py on CPU with random weights under planner's recorder (``run_command_profile``, as ``planner profile --
python train.py`` does), and compare the measured peaks with the bundle's own estimate within the issue-5 bounds.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

from planner import catalog
from planner.emit import render_bundle, write_bundle
from planner.errors import PlannerError
from planner.estimate.core import estimate
from planner.specs import Cluster, Plan
from planner.validate.dpo_deepspeed_cells import DPO_DEEPSPEED_CELLS
from planner.validate.grpo_cells import GRPO_CELLS
from planner.validate.recipe_cells import POSTTRAIN_CELLS
from tests.test_profile_command import _free_port, check_within_bounds

DPO_CELL, GRPO_CELL = POSTTRAIN_CELLS[0], GRPO_CELLS[0]


def _plan(cell, **changes) -> tuple[Plan, object]:
    from dataclasses import replace

    model, train = cell.model_spec(), replace(cell.train_spec(), **changes)
    cluster = Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=cell.num_ranks)
    plan = Plan(model=model, train=train, cluster=cluster, global_batch_size=train.micro_batch * cell.num_ranks)
    return plan, estimate(model, train, cluster)


def _render(cell, **changes) -> dict[str, str]:
    plan, est = _plan(cell, **changes)
    return render_bundle(plan.model, plan.train, plan.cluster, est, global_batch_size=plan.global_batch_size)


def _plan_literal(script: str) -> dict:
    tree = ast.parse(script)
    (node,) = [n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "PLAN"]
    return ast.literal_eval(node.value)


def test_dpo_bundle_renders_trl_script():
    files = _render(DPO_CELL)
    assert {"train.py", "launch.sh", "PLAN.md", "sample.jsonl", "model_config.json"} <= set(files)
    plan = _plan_literal(files["train.py"])
    assert (plan["task"], plan["reference"], plan["method"], plan["micro_batch"]) == ("dpo", "copy", "full", 2)
    assert "DPOTrainer" in files["train.py"] and "DPOTrainer" in files["PLAN.md"]
    row = json.loads(files["sample.jsonl"].splitlines()[0])
    assert set(row) == {"prompt", "chosen", "rejected"}
    compile(files["train.py"], "train.py", "exec")


def test_grpo_bundle_renders_trl_script_and_generation_advice():
    files = _render(GRPO_CELL)
    plan = _plan_literal(files["train.py"])
    assert (plan["task"], plan["num_generations"], plan["beta"], plan["generation"]) == ("grpo", 2, 0.04, "transformers")
    assert "Generation: device peak with transformers' generate" in files["PLAN.md"]
    assert set(json.loads(files["sample.jsonl"].splitlines()[0])) == {"prompt"}
    compile(files["train.py"], "train.py", "exec")


def test_trl_bundle_refuses_what_it_does_not_run():
    with pytest.raises(PlannerError, match="packing"):
        _render(DPO_CELL, packing=True)


def _tokenizer(directory: Path, vocab_size: int) -> str:
    from planner.profile.trl_setup import build_tokenizer

    build_tokenizer(vocab_size).save_pretrained(str(directory))
    return str(directory)


def _run_recorded(tmp_path: Path, cell, rows: list[dict]) -> None:
    from planner.profile.command import run_command_profile

    plan, est = _plan(cell)
    bundle = tmp_path / "bundle"
    write_bundle(plan, bundle, estimate=est)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ranks = plan.cluster.num_gpus
    launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                                                    str(ranks), "--master_port", str(_free_port())]
    command = [*launcher, str(bundle / "train.py"), "--cpu", "--random-init", str(bundle / "model_config.json"),
               "--tokenizer", _tokenizer(tmp_path / "tok", plan.model.vocab_size), "--dataset", str(data),
               "--max-steps", "50", "--no-save", "--output-dir", str(tmp_path / "run")]
    status, message, _ = run_command_profile(plan.model, plan.train, command, num_gpus=ranks, steps=2, device="cpu",
                                             out=tmp_path / "prof")
    assert status == "ok", message
    check_within_bounds(tmp_path / "prof", ranks, tmp_path)


def _words(n: int, seed: int, vocab: int) -> str:
    from planner.profile.trl_setup import SPECIALS

    return " ".join(f"w{len(SPECIALS) + (seed * 7 + j) % (vocab - len(SPECIALS))}" for j in range(n))


@pytest.mark.slow
@pytest.mark.parametrize("cell", [DPO_CELL, DPO_DEEPSPEED_CELLS[1]], ids=["one-process", "zero3-two-ranks"])
def test_dpo_bundle_trains_within_its_estimate(tmp_path, cell):
    """The DeepSpeed one: the bundle's ds_config.json and train.py under torchrun over gloo, TRL's prepare_deepspeed
    partitioning the reference."""
    from planner.profile.trl_dpo import prompt_completion

    vocab = cell.model_spec().vocab_size
    prompt, completion = prompt_completion(cell.train_spec().seq_len)
    rows = [{"prompt": _words(prompt, i, vocab) + " ", "chosen": _words(completion - 1, i + 1, vocab),
             "rejected": _words(completion - 1, i + 2, vocab)} for i in range(64)]
    _run_recorded(tmp_path, cell, rows)


def test_dpo_deepspeed_bundle_writes_its_ds_config():
    files = _render(DPO_DEEPSPEED_CELLS[1])
    config = json.loads(files["ds_config.json"])
    assert config["zero_optimization"]["stage"] == 3
    assert _plan_literal(files["train.py"])["deepspeed"] == "ds_config.json"


@pytest.mark.slow
def test_grpo_bundle_trains_within_its_estimate(tmp_path):
    train = GRPO_CELL.train_spec()
    vocab = GRPO_CELL.model_spec().vocab_size
    rows = [{"prompt": _words(train.seq_len - train.task.grpo.completion_len, i, vocab)} for i in range(64)]
    _run_recorded(tmp_path, GRPO_CELL, rows)


@pytest.mark.parametrize("cell", [DPO_CELL, POSTTRAIN_CELLS[2], GRPO_CELL], ids=["dpo-full", "dpo-lora", "grpo"])
def test_trl_bundle_reads_back_as_its_plan(tmp_path, cell):
    """--from BUNDLE (the round trip): the task and its settings come back, and with them the same estimate."""
    from planner.from_config import read_training_config

    plan, est = _plan(cell)
    write_bundle(plan, tmp_path / "bundle", estimate=est)
    got = read_training_config(tmp_path / "bundle")
    assert got.format == "bundle" and got.train.task == plan.train.task
    assert estimate(plan.model, got.train, plan.cluster).per_gpu == est.per_gpu


@pytest.mark.parametrize(("utilization", "advice"), [(0.3, "Colocate vLLM with sleep mode"),
                                                     (0.9, "Generate with transformers in the trainer")])
def test_grpo_generation_advice_follows_what_fits(utilization, advice):
    """Llama 3.1 8B LoRA GRPO on one H100 (the README's example shape): vLLM's default 0.3 share fits with sleep mode
    and not held through training; a 0.9 share does not fit beside the trainer even asleep (its weights and the
    trainer's states are both resident while generating)."""
    from planner.models import load_model
    from planner.plan.generation_choice import generation_advice
    from planner.specs import Generation, GrpoSpec, Method, Precision, Task, TaskSpec, TrainSpec

    grpo = GrpoSpec(num_generations=8, completion_len=512, beta=0.04, generation=Generation.VLLM_COLOCATE,
                    vllm_memory_utilization=utilization)
    train = TrainSpec(method=Method.LORA, precision=Precision.BF16_MIXED, micro_batch=8, seq_len=1024,
                      grad_checkpointing=True, task=TaskSpec(Task.GRPO, grpo=grpo))
    cluster = Cluster(gpu=catalog.gpu("h100-sxm-80gb"), num_gpus=1)
    (line,) = generation_advice(load_model("llama-3.1-8b"), train, cluster, 0.1)
    assert line.startswith("Generation: device peak with transformers' generate") and advice in line
