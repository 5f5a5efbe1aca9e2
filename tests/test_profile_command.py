"""`planner profile -- COMMAND` (issue 19 item 2): the user's own training command, recorded without editing it.

Real scripts on CPU, each declared to planner as the run it makes (flags or `--from`): a plain torch loop
(examples/profile_command/plain_loop.py; one process and DDP under torchrun), the bundle `planner recommend`
writes (its train.py: the HF Trainer, DeepSpeed ZeRO-2, one process and two under torchrun, declared with
`--from BUNDLE`), and a TRL SFTTrainer script where TRL is installed. Every profile is read by `planner compare`
and must be within the issue-5 bounds of the estimate of the same run (planner/validate/results.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from planner.profile.inject import program, should_record
from planner.validate import CATEGORY_BOUND, PEAK_BOUND, UNDER_BOUND
from tests.bundle_helpers import TINY_LLAMA

ROOT = Path(__file__).resolve().parent.parent
PLAIN_LOOP = ROOT / "examples" / "profile_command" / "plain_loop.py"
SFT_SCRIPT = ROOT / "examples" / "profile_command" / "sft_trl.py"
VENV_BIN = Path(sys.executable).parent
TIMEOUT_S = 900
CATEGORIES = ("params", "grads", "optimizer_states", "activations", "temporaries", "other")


# ---------------------------------------------------------------- which processes record


@pytest.mark.parametrize("argv, name", [
    (["python", "train.py", "--x"], "train"),
    (["/v/bin/python", "-u", "-m", "torch.distributed.run", "--nproc_per_node", "2", "t.py"], "torch.distributed.run"),
    (["/v/bin/python3", "/v/bin/torchrun", "--nproc_per_node", "2", "t.py"], "torchrun"),
    (["python", "/v/bin/deepspeed", "t.py"], "deepspeed"),
    (["python", "-X", "utf8", "-mdeepspeed.launcher.launch", "--world_info", "x"], "deepspeed.launcher.launch"),
    (["python", "-c", "print(1)"], "-c"),
])  # fmt: skip
def test_program_names_the_script_or_module(argv, name):
    assert program(argv) == name


def test_launchers_and_children_of_a_recording_process_do_not_record():
    env = {"PLANNER_PROFILE_JOB": "/tmp/job.json"}
    assert should_record(env, ["python", "train.py"])
    assert not should_record(env, ["python", "/v/bin/torchrun", "train.py"])
    assert not should_record(env, ["python", "-m", "accelerate.commands.launch", "train.py"])
    assert not should_record({**env, "PLANNER_PROFILE_ACTIVE": "123"}, ["python", "train.py"])  # a worker of a rank
    assert not should_record({}, ["python", "train.py"])  # no job: the hook is inert


def test_profile_without_a_command_refuses_from_in_one_sentence(tmp_path):
    from cli_harness import run_inprocess

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY_LLAMA))
    out = run_inprocess(["profile", "--from", str(ROOT / "examples/configs/llamafactory/llama3_lora_sft.yaml"),
                         "-m", str(cfg), "--device", "cpu"])
    assert out.code == 1 and "--from goes with a command to record" in out.stderr


# ---------------------------------------------------------------- real runs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(extra_path: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), extra_path, os.environ.get("PYTHONPATH")) if p)}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "planner-test-torch-extensions"))
    return env


def planner(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner", *args], cwd=cwd, env=env or _env(), capture_output=True,
                          text=True, timeout=TIMEOUT_S)


def _tail(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stderr ---\n{proc.stderr[-6000:]}\n--- stdout ---\n{proc.stdout[-3000:]}"


def check_within_bounds(profile: Path, num_ranks: int, cwd: Path) -> list[dict]:
    """`planner compare` reads the profile; every rank within the issue-5 bounds. Returns the rank figures."""
    proc = planner("compare", str(profile), "--json", cwd=cwd)
    assert proc.returncode == 0, _tail(proc)
    result = json.loads(proc.stdout)
    assert result["status"] == "ok" and len(result["ranks"]) == num_ranks
    figures = []
    for r in result["ranks"]:
        rows = {row["name"]: row for row in r["rows"]}
        peak = rows["allocated"]["error_of_peak"]
        worst = max(CATEGORIES, key=lambda c: abs(rows[c]["error_of_peak"]))
        figures.append({"rank": r["rank"], "peak_error": peak, "worst": worst,
                        "worst_error": rows[worst]["error_of_peak"]})
        assert -UNDER_BOUND <= peak <= PEAK_BOUND, (r["rank"], rows)
        assert abs(rows[worst]["error_of_peak"]) <= CATEGORY_BOUND, (r["rank"], worst, rows)
    print(json.dumps(figures))
    return figures


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(TINY_LLAMA))
    return path


# DDP on two CPU ranks (gloo), as the validation matrix's DDP_CELLS: DDP's construction broadcasts rank 0's
# parameters through a flat copy that lives only while DDP is built (planner/estimate/temporaries.py); the
# params-sized tensor it keeps is its Reducer's gradient bucket.
@pytest.mark.slow
@pytest.mark.parametrize("num_ranks", [1, 2])
def test_plain_torch_loop(tmp_path, tiny_config, num_ranks):
    script = [str(PLAIN_LOOP), "--config", str(tiny_config), "--micro-batch", "2", "--seq-len", "64", "--steps", "20"]
    launcher = ["python"] if num_ranks == 1 else ["torchrun", "--nproc_per_node", "2", "--master_port",
                                                  str(_free_port())]
    proc = planner("profile", "-m", str(tiny_config), "--method", "full", "--precision", "fp32", "--optimizer",
                   "adamw", "--micro-batch", "2", "--seq-len", "64", "--gpus", str(num_ranks), "--steps", "3",
                   "--device", "cpu", "--out", str(tmp_path / "prof"), "--", *launcher, *script, cwd=tmp_path)
    assert proc.returncode == 0, _tail(proc)
    meta = json.loads((tmp_path / "prof" / "meta.json").read_text())
    assert meta["workload"]["command"][-1] == "20" and meta["train"]["optimizer"] == "adamw"
    summary = json.loads((tmp_path / "prof" / "summary.json").read_text())
    assert [r["steps_completed"] for r in summary["ranks"]] == [3] * num_ranks  # stopped after --steps
    assert [r["engine"] for r in summary["ranks"]] == ["user command" if num_ranks == 1 else "ddp"] * num_ranks
    for r in summary["ranks"]:  # the model's states are identified exactly on every rank
        assert r["peak"]["by_category"]["params"] == r["identity"]["param_storage_bytes"]
    check_within_bounds(tmp_path / "prof", num_ranks, tmp_path)


def _small_dataset(path: Path) -> Path:
    """A few lines: on CPU the script's in-memory dataset is host memory the profile sees (as ``other``)."""
    path.write_text("".join(json.dumps({"text": f"line {i} of a small dataset for the profile test."}) + "\n"
                            for i in range(4)))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("num_ranks", [1, 2])
def test_bundle_train_py_deepspeed_zero2_through_the_trainer(tmp_path, tiny_config, num_ranks):
    """recommend writes the bundle; `profile --from BUNDLE -- [torchrun] BUNDLE/train.py` records its Trainer."""
    bundle = tmp_path / "bundle"
    rec = planner("recommend", "-m", str(tiny_config), "--gpus", str(num_ranks), "-g", str(2 * num_ranks),
                  "--method", "full", "--zero", "2", "--optimizer", "adamw-fused", "--precision", "bf16-mixed",
                  "--seq-len", "32", "--out", str(bundle), "--json", cwd=tmp_path)
    assert rec.returncode == 0, _tail(rec)
    data = _small_dataset(tmp_path / "small.jsonl")
    launcher = ["python"] if num_ranks == 1 else ["torchrun", "--nproc_per_node", "2", "--master_port",
                                                  str(_free_port())]
    proc = planner("profile", "--from", str(bundle), "--steps", "3", "--device", "cpu", "--out", str(tmp_path / "prof"),
                   "--", *launcher, str(bundle / "train.py"), "--cpu", "--random-init", str(bundle / "model_config.json"),
                   "--tokenizer", "bytes", "--dataset", str(data), "--max-steps", "20", "--no-save",
                   "--output-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 0, _tail(proc)
    summary = json.loads((tmp_path / "prof" / "summary.json").read_text())
    assert [r["engine"] for r in summary["ranks"]] == ["deepspeed"] * num_ranks
    assert [r["steps_completed"] for r in summary["ranks"]] == [3] * num_ranks
    ran = json.loads((tmp_path / "run" / "run_summary.rank0.json").read_text())
    assert ran["global_step"] == 3 and ran["zero_stage"] == 2  # the Trainer was stopped after --steps
    check_within_bounds(tmp_path / "prof", num_ranks, tmp_path)


@pytest.mark.slow
def test_bundle_train_py_qlora_zero3_through_the_trainer(tmp_path, tiny_config):
    """QLoRA with ZeRO-3 (issue 17 item 3): the bundle stores the 4-bit base in bf16 (bnb_4bit_quant_storage) and
    loads it without a device_map; the Trainer's DeepSpeed partitions it on 2 ranks, within its own estimate."""
    bundle = tmp_path / "bundle"
    rec = planner("recommend", "-m", str(tiny_config), "--gpus", "2", "-g", "4", "--method", "qlora", "--zero", "3",
                  "--precision", "bf16-mixed", "--seq-len", "32", "--out", str(bundle), "--json", cwd=tmp_path)
    assert rec.returncode == 0, _tail(rec)
    assert "bnb_4bit_quant_storage" in (bundle / "train.py").read_text()
    data = _small_dataset(tmp_path / "small.jsonl")
    proc = planner("profile", "--from", str(bundle), "--steps", "3", "--device", "cpu", "--out", str(tmp_path / "prof"),
                   "--", "torchrun", "--nproc_per_node", "2", "--master_port", str(_free_port()), str(bundle / "train.py"),
                   "--cpu", "--random-init", str(bundle / "model_config.json"), "--tokenizer", "bytes", "--dataset",
                   str(data), "--max-steps", "20", "--no-save", "--output-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 0, _tail(proc)
    ran = json.loads((tmp_path / "run" / "run_summary.rank0.json").read_text())
    assert ran["global_step"] == 3 and ran["zero_stage"] == 3
    check_within_bounds(tmp_path / "prof", 2, tmp_path)


def _profile_bundle_through_the_trainer(bundle: Path, tmp_path: Path) -> None:
    """``planner profile --from BUNDLE -- python train.py``: the bundle's own script, 3 steps on CPU, a tiny random
    model and byte tokens, profiled into tmp_path/prof (its run summary in tmp_path/run)."""
    data = _small_dataset(tmp_path / "small.jsonl")
    proc = planner("profile", "--from", str(bundle), "--steps", "3", "--device", "cpu", "--out", str(tmp_path / "prof"),
                   "--", "python", str(bundle / "train.py"), "--cpu", "--random-init", str(bundle / "model_config.json"),
                   "--tokenizer", "bytes", "--dataset", str(data), "--max-steps", "20", "--no-save",
                   "--output-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 0, _tail(proc)


@pytest.mark.slow
@pytest.mark.parametrize("seq_len", [32, 256])  # peaks at the optimizer step; in backward (the autocast casts)
def test_bundle_train_py_autocast_through_the_trainer(tmp_path, tiny_config, seq_len):
    """The bundle's full fine-tuning without DeepSpeed (issue 16, "close the loop"): fp32 weights and the Trainer's
    bf16=True, i.e. accelerate's autocast; recorded through the real Trainer, it matches its own estimate."""
    bundle = tmp_path / "bundle"
    rec = planner("recommend", "-m", str(tiny_config), "--gpus", "1", "-g", "2", "--method", "full", "--zero", "0",
                  "--precision", "bf16-autocast", "--optimizer", "adamw-fused", "--seq-len", str(seq_len), "--out", str(bundle),
                  "--json", cwd=tmp_path)
    assert rec.returncode == 0, _tail(rec)
    assert json.loads((bundle / "plan.json").read_text())["plan"]["train"]["precision"] == "bf16-autocast"
    _profile_bundle_through_the_trainer(bundle, tmp_path)
    meta = json.loads((tmp_path / "prof" / "meta.json").read_text())
    assert meta["train"]["precision"] == "bf16-autocast"
    check_within_bounds(tmp_path / "prof", 1, tmp_path)


@pytest.mark.slow
def test_bundle_train_py_optimizer_in_backward_through_the_trainer(tmp_path, tiny_config):
    """--optimizer-in-backward in the bundle: per-parameter torch optimizers stepped in the gradients' hooks
    beside the real Trainer (a stand-in optimizer hands it the schedule); recorded, it matches its own estimate."""
    bundle = tmp_path / "bundle"
    rec = planner("recommend", "-m", str(tiny_config), "--gpus", "1", "-g", "2", "--method", "full", "--zero", "0",
                  "--precision", "bf16", "--optimizer", "adamw-fused", "--optimizer-in-backward", "--seq-len", "256",
                  "--out", str(bundle), "--json", cwd=tmp_path)
    assert rec.returncode == 0, _tail(rec)
    _profile_bundle_through_the_trainer(bundle, tmp_path)
    assert json.loads((tmp_path / "prof" / "meta.json").read_text())["train"]["optimizer_in_backward"]
    ran = json.loads((tmp_path / "run" / "run_summary.rank0.json").read_text())
    assert ran["optimizer_in_backward"] and ran["global_step"] == 3
    check_within_bounds(tmp_path / "prof", 1, tmp_path)


# TRL 1.16's SFTTrainer computes loss_type "nll" (its default) through its fused LM head (trl/trainer/utils.py
# add_fused_lm_head, trl/kernels/chunked_logprob.py): the hf reader maps it to --loss trl-fused-lm-head, whose
# [min(tokens, 4096), 32768] tile buffer (7.75 MiB here, against 5.9 MiB for the whole tiny model) and the CPU
# tile ops' temporaries the estimator writes from TRL's source (planner/estimate/step/trl_head.py, trl_loss.py).
@pytest.mark.slow
def test_trl_sft_trainer_script(tmp_path, tiny_config):
    pytest.importorskip("trl")
    from tests.bundle_helpers import build_tokenizer

    tok = build_tokenizer(tmp_path / "tokenizer")
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(json.dumps({
        "model_name_or_path": str(tiny_config.parent), "max_length": 32, "packing": False,
        "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "gradient_checkpointing": False,
        "bf16": False, "optim": "adamw_torch_fused", "loss_type": "nll", "attn_implementation": "sdpa",
        "dataset_text_field": "text", "output_dir": str(tmp_path / "run"), "report_to": "none", "max_steps": 20,
        "save_strategy": "no", "use_cpu": True, "logging_steps": 1,
    }))
    proc = planner("profile", "--from", str(cfg), "--steps", "3", "--device", "cpu", "--out", str(tmp_path / "prof"),
                   "--", "python", str(SFT_SCRIPT), "--config", str(cfg), "--tokenizer", str(tok), cwd=tmp_path)
    assert proc.returncode == 0, _tail(proc)
    summary = json.loads((tmp_path / "prof" / "summary.json").read_text())
    (rank,) = summary["ranks"]
    assert rank["steps_completed"] == 3 and rank["peak"]["by_category"]["params"] == rank["identity"]["param_storage_bytes"]
    proc = planner("compare", str(tmp_path / "prof"), "--json", cwd=tmp_path)
    assert proc.returncode == 0, _tail(proc)
    rows = {row["name"]: row for row in json.loads(proc.stdout)["ranks"][0]["rows"]}
    assert rows["params"]["error_bytes"] == 0 and rows["optimizer_states"]["error_bytes"] == 0
    meta = json.loads((tmp_path / "prof" / "meta.json").read_text())
    assert meta["train"]["loss"]["kind"] == "trl-fused-lm-head"
    check_within_bounds(tmp_path / "prof", 1, tmp_path)
