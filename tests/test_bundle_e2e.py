"""The emitted bundle runs: launch.sh -> accelerate launch -> train.py -> Trainer, on CPU, for real.

Each case renders a bundle for a tiny Llama-style model (random weights from model_config.json, a word
tokenizer trained offline on tests/data/tiny.jsonl), runs `bash launch.sh --cpu --random-init ...
--max-steps 2` from another directory, and reads the run_summary.rank*.json that every rank writes.
`--cpu` is the bundle's own CPU switch: DeepSpeed and DDP over gloo (accelerate gives DeepSpeed no
process group without a GPU); the configs, launcher and Trainer are the ones a GPU run uses.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from planner.emit import render_bundle, write_files
from tests.bundle_helpers import DATA, TINY_LLAMA, build_tokenizer, tiny_model, tiny_plan

pytestmark = pytest.mark.slow

LAUNCH_TIMEOUT_S = 300
VENV_BIN = str(Path(sys.executable).parent)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(bundle: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "MAIN_PROCESS_PORT": str(_free_port()),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    return subprocess.run(
        ["bash", str(bundle / "launch.sh"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
    )


def make_bundle(tmp_path: Path, *, tokenizer: str | None, dataset: str = str(DATA), **plan) -> Path:
    model, train, cluster, est, gbs = tiny_plan(**plan)
    files = render_bundle(model, train, cluster, est, global_batch_size=gbs, dataset=dataset, tokenizer=tokenizer)
    write_files(files, tmp_path / "bundle")
    return tmp_path / "bundle"


def summaries(bundle: Path, num_ranks: int) -> list[dict]:
    out = bundle / "output"
    return [json.loads((out / f"run_summary.rank{r}.json").read_text()) for r in range(num_ranks)]


def lora_trainable(rank: int = 16) -> int:
    """r * (d_in + d_out) over every linear layer of the blocks (peft's all-linear skips lm_head)."""
    h, i = TINY_LLAMA["hidden_size"], TINY_LLAMA["intermediate_size"]
    kv = TINY_LLAMA["num_key_value_heads"] * h // TINY_LLAMA["num_attention_heads"]
    per_layer = (h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h)  # q, k, v, o, gate, up, down
    return rank * per_layer * TINY_LLAMA["num_hidden_layers"]


def _tail(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stderr ---\n{proc.stderr[-6000:]}\n--- stdout ---\n{proc.stdout[-2000:]}"


CASES = {
    # name: plan; every DeepSpeed case runs 2 processes
    "zero2-full-bf16": dict(method="full", zero=2, num_gpus=2, precision="bf16-mixed", grad_accum=2),
    # DeepSpeed's own engine at stage 0 (estimate/ds_stage0.py): the Trainer's AdamW in FP16_UnfusedOptimizer
    "zero0-deepspeed-full-bf16": dict(method="full", zero=0, num_gpus=2, precision="bf16-mixed",
                                      deepspeed_stage0=True),
    "zero2-lora": dict(method="lora", zero=2, num_gpus=2),
    "zero3-full": dict(method="full", zero=3, num_gpus=2),
    "zero3-lora-bf16": dict(method="lora", zero=3, num_gpus=2, precision="bf16-mixed"),
    # --activation-offload: the Trainer's compute_loss under save_on_cpu, with DeepSpeed ZeRO-3's linear
    "zero3-full-activation-offload": dict(method="full", zero=3, num_gpus=2, activation_offload=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_deepspeed_bundle_runs_on_two_cpu_processes(tmp_path, tokenizer_dir, case):
    plan = CASES[case]
    bundle = make_bundle(tmp_path, tokenizer=str(tokenizer_dir), **plan)
    (tmp_path / "elsewhere").mkdir()
    proc = launch(bundle, "--cpu", "--random-init", "model_config.json", "--max-steps", "2", cwd=tmp_path / "elsewhere")
    assert proc.returncode == 0, _tail(proc)
    assert "for this run" not in proc.stderr  # ds_config.json's batch keys matched the real 2-rank run
    ranks = summaries(bundle, 2)
    for rank, s in enumerate(ranks):
        assert s["process_index"] == rank
        assert s["global_step"] == 2 and s["loss_is_finite"]
        assert s["activation_offload"] is plan.get("activation_offload", False)
        assert (s["world_size"], s["distributed_type"], s["zero_stage"]) == (2, "DEEPSPEED", plan["zero"])
        assert (s["micro_batch"], s["grad_accum"], s["method"]) == (2, plan.get("grad_accum", 1), plan["method"])
        if plan["method"] == "lora":
            assert s["num_trainable_params"] == lora_trainable()
        else:
            assert s["num_trainable_params"] == s["num_params"]
        if plan["zero"] == 3:  # each rank holds a partition of the weight matrices
            assert s["num_local_param_elements"] < s["num_params"] // 2
        else:
            assert s["num_local_param_elements"] == s["num_params"]
        if plan.get("precision") == "bf16-mixed":
            assert "bfloat16" in s["param_dtypes"]  # DeepSpeed's bf16 mode, from ds_config.json
        else:
            assert s["param_dtypes"] == ["float32"]
    saved = {p.name for p in (bundle / "output").iterdir()}
    assert ("adapter_model.safetensors" if plan["method"] == "lora" else "model.safetensors") in saved


def test_qlora_bundle_runs_on_one_cpu_process(tmp_path, tokenizer_dir):
    bundle = make_bundle(tmp_path, tokenizer=str(tokenizer_dir), method="qlora", precision="bf16-mixed")
    proc = launch(bundle, "--cpu", "--random-init", "model_config.json", "--max-steps", "2", cwd=tmp_path)
    assert proc.returncode == 0, _tail(proc)
    (s,) = summaries(bundle, 1)
    assert (s["global_step"], s["world_size"], s["distributed_type"], s["zero_stage"]) == (2, 1, "NO", 0)
    assert s["loss_is_finite"] and s["method"] == "qlora"
    assert s["num_4bit_modules"] == 7 * TINY_LLAMA["num_hidden_layers"]  # q, k, v, o, gate, up, down
    assert s["num_trainable_params"] == lora_trainable()
    assert s["param_dtypes"] == ["float32", "uint8"]  # packed 4-bit; the rest cast to fp32 by peft
    assert (bundle / "output" / "adapter_model.safetensors").exists()
    assert not list((bundle / "output").glob("random-init-*"))  # the scratch checkpoint is removed


def test_ddp_bundle_with_hostile_paths_runs_harmlessly(tmp_path, tokenizer_dir):
    """ZeRO 0 on 2 GPUs is plain DDP (MULTI_GPU config, no ds_config.json; gloo on CPU), here with real
    weights read from a model path, a dataset path and a bundle directory full of spaces, quotes, $(),
    backticks, ; & and $VARS: every one must reach train.py literally and run nothing."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    weird = """we ird 'sq' "dq" $(touch PWNED1) `touch PWNED2` ; touch PWNED3 & $HOME"""
    model_dir = tmp_path / f"models {weird}"
    raw = dict(TINY_LLAMA)
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(model_dir))
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(model_dir))
    data_dir = tmp_path / f"data {weird}"
    data_dir.mkdir()
    dataset = data_dir / "tiny $(touch PWNED4).jsonl"
    shutil.copy(DATA, dataset)

    model = tiny_model(source=str(model_dir / "config.json"))
    _, train, cluster, est, gbs = tiny_plan(model=model, method="lora", num_gpus=2, precision="bf16-mixed")
    files = render_bundle(model, train, cluster, est, global_batch_size=gbs, dataset=str(dataset))
    assert "ds_config.json" not in files
    bundle = tmp_path / f"out {weird}"
    write_files(files, bundle)
    (tmp_path / "cwd").mkdir()
    proc = launch(bundle, "--cpu", "--max-steps", "2", cwd=tmp_path / "cwd")
    assert proc.returncode == 0, _tail(proc)
    for s in summaries(bundle, 2):
        assert s["model"] == str(model_dir)  # the real weights, by their literal path
        assert (s["global_step"], s["world_size"], s["zero_stage"]) == (2, 2, 0)
        assert s["distributed_type"] == "MULTI_CPU"  # accelerate's name for DDP between CPU processes
        assert s["num_trainable_params"] == lora_trainable() and s["loss_is_finite"]
        assert s["param_dtypes"] == ["bfloat16", "float32"]  # 16-bit frozen base, fp32 adapters (autocast)
    assert list(tmp_path.rglob("PWNED*")) == [] and not list(Path.cwd().glob("PWNED*"))


def test_trainer_resolves_every_auto_value(tmp_path):
    """ds_config.json with an offloaded optimizer has "auto" values: the HF Trainer integration fills all."""
    bundle = make_bundle(tmp_path, tokenizer=None, zero=2, offload="optimizer", grad_accum=3)
    script = """
import json, sys
from deepspeed.runtime.config import DeepSpeedConfig
from transformers import AutoConfig, AutoModelForCausalLM, TrainingArguments
ds_path, cfg_path, out = sys.argv[1:]
raw = json.load(open(cfg_path))
model = AutoModelForCausalLM.from_config(AutoConfig.for_model(raw.pop("model_type"), **raw))
args = TrainingArguments(output_dir=out, deepspeed=ds_path, per_device_train_batch_size=2,
                         gradient_accumulation_steps=3, learning_rate=3e-4, report_to="none")
hf = args.hf_deepspeed_config
hf.trainer_config_finalize(args, model, num_training_steps=10)
DeepSpeedConfig(hf.config)  # still a valid DeepSpeed config once resolved
print(json.dumps(hf.config))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script, str(bundle / "ds_config.json"), str(bundle / "model_config.json"), str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, _tail(proc)
    resolved = json.loads(proc.stdout.strip().splitlines()[-1])
    assert '"auto"' not in json.dumps(resolved)
    assert resolved["optimizer"]["params"]["lr"] == 3e-4
    assert resolved["train_batch_size"] == 6
    assert resolved["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


# Tiny mixtures of experts (transformers' grouped_mm experts want sizes that are multiples of 8). peft puts LoRA
# on their fused expert tensors and routers with lora.ParamWrapper, which refuses any lora_dropout: planner's
# default 0.05 made `recommend` emit a bundle whose train.py died in get_peft_model (issue 14 item 8).
TINY_MOE = {
    "mixtral": {"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 320, "max_position_embeddings": 128,
                "num_local_experts": 4, "num_experts_per_tok": 2, "tie_word_embeddings": False},
    "qwen3_moe": {"model_type": "qwen3_moe", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 320,
                  "max_position_embeddings": 128, "num_experts": 4, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 32, "tie_word_embeddings": False},
}


@pytest.mark.parametrize("family", sorted(TINY_MOE))
def test_recommended_lora_bundle_for_a_tiny_moe_runs(tmp_path, family):
    from planner import catalog
    from planner.emit import write_bundle
    from planner.estimate.count.params import count_params, split_params
    from planner.models import spec_from_config
    from planner.plan.recommend import recommend
    from planner.specs import AttnImpl, Cluster, Method, Precision, TrainSpec

    model = spec_from_config(dict(TINY_MOE[family]), f"tiny-{family}", f"tiny-{family}/config.json")
    base = TrainSpec(method=Method.LORA, precision=Precision.FP32, seq_len=32)  # LoRA dropout: planner's 0.05
    rec = recommend(model, base, Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=1), global_batch_size=2,
                    method="lora", zero_stages=(0,), attn_impls=(AttnImpl.SDPA,))
    train = rec.plan.train
    assert train.lora.dropout == 0.0 and any("lora.ParamWrapper" in line for line in rec.why)
    assert any("lora.ParamWrapper" in note for note in rec.estimate.notes)  # PLAN.md lists the estimate's notes
    bundle = tmp_path / "bundle"
    write_bundle(rec, bundle, tokenizer="bytes", dataset=str(DATA))
    assert "lora.ParamWrapper" in (bundle / "PLAN.md").read_text()
    proc = launch(bundle, "--cpu", "--random-init", "model_config.json", "--max-steps", "2", cwd=tmp_path)
    assert proc.returncode == 0, _tail(proc)
    (s,) = summaries(bundle, 1)
    assert (s["global_step"], s["method"], s["world_size"]) == (2, "lora", 1) and s["loss_is_finite"]
    assert s["num_trainable_params"] == split_params(count_params(model), train).num_trainable
