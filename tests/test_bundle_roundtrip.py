"""Round trip (issue 19 item 3): the bundle `planner recommend --out` writes, read back by `--from`, is the same run.

For each plan (full fine-tuning, LoRA, QLoRA, DeepSpeed ZeRO-2 with its ds_config.json), `estimate --from
BUNDLE` must give exactly the estimate recommend made for the plan, and the same row as `estimate` with the
plan's values typed as flags.
"""

from __future__ import annotations

import json

import pytest
from cli_harness import run_inprocess

from planner.errors import PlannerError
from planner.from_config import read_training_config

# name: recommend arguments (the model, GPUs and global batch fixed; method and layout forced where it matters)
CASES = {
    "full": ["-m", "qwen2.5-0.5b", "--gpus", "1", "-g", "8", "--method", "full", "--zero", "0"],
    "lora": ["-m", "llama-3.1-8b", "--gpus", "8", "-g", "64", "--method", "lora", "--zero", "0"],
    "qlora": ["-m", "llama-3.1-8b", "--gpus", "1", "-g", "16", "--method", "qlora", "--lora-rank", "8",
              "--precision", "bf16-mixed"],
    # DeepSpeed's own engine at stage 0: its ds_config.json says stage 0, and is DeepSpeed's all the same
    "zero0-deepspeed": ["-m", "qwen2.5-0.5b", "--gpus", "2", "-g", "8", "--method", "full", "--zero", "0",
                        "--engine", "deepspeed"],
    "zero2": ["-m", "llama-3.1-8b", "--gpus", "8", "-g", "64", "--method", "full", "--zero", "2",
              "--offload", "optimizer"],
}


def _run(args: list[str]) -> dict:
    out = run_inprocess(args)
    assert out.code == 0, out.stderr
    return json.loads(out.stdout)


def _flags(plan: dict) -> list[str]:
    """The plan as `planner estimate` flags."""
    t = plan["train"]
    flags = ["-m", plan["model"], "--gpu", plan["gpu"], "--gpus", str(plan["num_gpus"]), "--nodes",
             str(plan["num_nodes"]), "--method", t["method"], "--precision", t["precision"], "--optimizer",
             t["optimizer"], "--micro-batch", str(t["micro_batch"]), "--grad-accum", str(t["grad_accum"]),
             "--seq-len", str(t["seq_len"]), "--zero", str(t["zero_stage"]), "--offload", t["offload"],
             "--attn", t["attn_impl"],
             "--grad-checkpointing" if t["grad_checkpointing"] else "--no-grad-checkpointing",
             "--loss", t["loss"]["kind"], "--loss-chunks", str(t["loss"]["chunks"])]  # recommend may choose the loss
    if t.get("engine") == "deepspeed":
        flags += ["--engine", "deepspeed"]
    if t["method"] != "full":
        lora = t["lora"]
        flags += ["--lora-rank", str(lora["rank"]), "--lora-alpha", str(lora["alpha"]), "--lora-dropout",
                  str(lora["dropout"]), "--lora-targets", ",".join(lora["targets"])]
    if t["method"] == "qlora":
        flags += ["--quant-type", t["quant"]["quant_type"],
                  "--double-quant" if t["quant"]["double_quant"] else "--no-double-quant"]
    return flags


@pytest.mark.parametrize("case", sorted(CASES))
def test_bundle_read_back_gives_the_same_estimate(tmp_path, case):
    bundle = tmp_path / "bundle"
    rec = _run(["recommend", *CASES[case], "--out", str(bundle), "--json"])
    plan = rec["plan"]
    assert (bundle / "ds_config.json").exists() == (plan["train"]["zero_stage"] > 0
                                                    or plan["train"].get("engine") == "deepspeed")
    got = _run(["estimate", "--from", str(bundle), "--gpu", plan["gpu"], "--json"])
    assert got["from_config"]["format"] == "bundle"
    assert len(got["rows"]) == 1
    row = got["rows"][0]
    # the run the bundle describes is the plan: its recipe, layout and GPUs ...
    assert {k: got["train"][k] for k in got["train"]} == {k: plan["train"][k] for k in got["train"]}
    assert (row["method"], row["zero_stage"], row["offload"]) == (
        plan["train"]["method"], plan["train"]["zero_stage"], plan["train"]["offload"])
    # ... and its estimate is the one recommend made, byte for byte
    for key in ("per_gpu", "device_bytes", "reserved_bytes", "cpu_bytes_per_node", "peak_phase", "num_params",
                "num_trainable_params"):
        assert row[key] == rec["estimate"][key], key
    # the same row as the plan typed as flags
    want = _run(["estimate", *_flags(plan), "--json"])
    assert got["rows"] == want["rows"]
    # the bundle's train.py alone (the accelerate config beside it is found) reads the same
    again = _run(["estimate", "--from", str(bundle / "train.py"), "--gpu", plan["gpu"], "--json"])
    assert again["rows"] == got["rows"]


def test_bundle_reader_reads_the_deepspeed_json_the_run_uses(tmp_path):
    """train.py hands ds_config.json to the Trainer: an edited stage there is the run's stage (PLAN's zero_stage
    is PLAN.md's record and is listed as ignored)."""
    bundle = tmp_path / "bundle"
    _run(["recommend", *CASES["zero2"], "--out", str(bundle), "--json"])
    ds = json.loads((bundle / "ds_config.json").read_text())
    ds["zero_optimization"]["stage"] = 3
    (bundle / "ds_config.json").write_text(json.dumps(ds))
    fc = read_training_config(bundle)
    assert fc.train.zero_stage == 3 and fc.num_gpus == 8
    assert "zero_stage" in dict(fc.ignored)


def test_a_train_py_without_plan_is_refused_in_one_sentence(tmp_path):
    (tmp_path / "train.py").write_text("import os\nprint('hello')\n")
    with pytest.raises(PlannerError, match="has no PLAN literal"):
        read_training_config(tmp_path)
    (tmp_path / "train.py").write_text("PLAN = {'method': __import__('os').system('true')}\n")
    with pytest.raises(PlannerError, match="has no PLAN literal"):  # parsed, never executed
        read_training_config(tmp_path / "train.py")
