"""`planner estimate`, `models`, `gpus` through the real CLI: output shape, schema, and user errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

ROW_BYTE_FIELDS = (
    "params_bytes",
    "grads_bytes",
    "optimizer_states_bytes",
    "activations_bytes",
    "temporaries_bytes",
    "overhead_bytes",
    "total_bytes",
)


def test_estimate_json_schema(cli):
    r = cli("estimate", "--model", "llama-3.1-8b", "--gpus", "8", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert set(data) >= {"model", "gpu", "rows"}
    assert data["model"]["num_params"] == 8_030_261_248
    combos = {(row["method"], row["engine"], row["zero_stage"], row["offload"],
               row.get("fsdp", {}).get("reshard_after_forward")) for row in data["rows"]}
    # full and LoRA: 4 stages x valid offloads (0: none; 1-2: none, optimizer; 3: none, optimizer, +params) and
    # FSDP2 with and without resharding (8 ranks: they differ); QLoRA: the same but no parameter offload (its 4-bit
    # weights' quant_state is not partitioned, estimate/qlora_shard.py)
    assert ("full", "deepspeed", 3, "optimizer+params", None) in combos
    assert ("qlora", "deepspeed", 2, "optimizer", None) in combos
    assert ("qlora", "deepspeed", 3, "none", None) in combos
    assert ("qlora", "deepspeed", 3, "optimizer+params", None) not in combos  # refused combination is not listed
    assert {("lora", "fsdp2", 0, "none", True), ("lora", "fsdp2", 0, "none", False)} <= combos
    assert {("qlora", "fsdp2", 0, "none", True), ("qlora", "fsdp2", 0, "none", False)} <= combos
    assert len(combos) == len(data["rows"]) == 10 + 10 + 9
    for row in data["rows"]:
        assert isinstance(row["fits"], bool)
        assert isinstance(row["num_trainable_params"], int)
        for field in ROW_BYTE_FIELDS:
            assert isinstance(row["per_gpu"][field], int) and row["per_gpu"][field] >= 0
        assert row["per_gpu"]["total_bytes"] == sum(row["per_gpu"][f] for f in ROW_BYTE_FIELDS[:-1])
        for field in ("reserved_bytes", "device_bytes", "cpu_bytes_per_node"):
            assert isinstance(row[field], int)
        assert row["peak_phase"] in ("forward", "backward", "optimizer_step")


def test_estimate_table_mentions_deepspeed_difference(cli):
    r = cli("estimate", "--model", "llama-3.1-8b", "--gpus", "8", "--method", "full")
    assert r.returncode == 0, r.stderr
    assert "DeepSpeed adds" in r.stdout
    assert "ZeRO" in r.stdout


def test_estimate_narrowed_and_csv(cli, tmp_path):
    out = tmp_path / "rows.csv"
    r = cli("estimate", "-m", "gpt2", "--method", "lora", "--zero", "2", "--json", "--csv", str(out))
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert [(x["method"], x["zero_stage"]) for x in rows] == [("lora", 2), ("lora", 2)]
    text = out.read_text()
    assert "per_gpu.params_bytes" in text.splitlines()[0]


def test_models_and_gpus_list(cli):
    r = cli("models", "--json")
    assert r.returncode == 0, r.stderr
    names = {m["name"] for m in json.loads(r.stdout)}
    assert {"llama-3.1-8b", "mixtral-8x7b-v0.1", "gpt2", "deepseek-v2-lite"} <= names
    r = cli("gpus")
    assert r.returncode == 0 and "h100-sxm-80gb" in r.stdout


def test_estimate_does_not_import_torch():
    code = (
        "import sys\n"
        "from planner.cli.app import app\n"
        "try:\n"
        "    app(['estimate', '--model', 'llama-3.1-8b', '--gpus', '8', '--json'], standalone_mode=False)\n"
        "finally:\n"
        "    heavy = [m for m in ('torch', 'transformers', 'deepspeed', 'peft', 'bitsandbytes') if m in sys.modules]\n"
        "    print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "HEAVY=\n" in r.stderr or r.stderr.strip().endswith("HEAVY=")


def _assert_clean_error(r, *needles):
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--model", "llama-3.1-8bb"], ["unknown model", "llama-3.1-8b"]),
        (["--model", "llama-3.1-8b", "--gpu", "h100-sxm-80"], ["unknown gpu", "h100-sxm-80gb"]),
        (["--model", "llama-3.1-8b", "--gpus", "0"], ["--gpus", "0"]),
        (["--model", "llama-3.1-8b", "--gpus", "6", "--nodes", "4"], ["divisible"]),
        (["--model", "llama-3.1-8b", "--method", "lora", "--lora-rank", "0"], ["rank"]),
        (["--model", "llama-3.1-8b", "--method", "qlora", "--zero", "3", "--offload", "optimizer+params"], ["qlora", "parameter offload"]),
        (["--model", "llama-3.1-8b", "--zero", "0", "--offload", "optimizer"], ["offload"]),
        (["--model", "llama-3.1-8b", "--method", "dora"], ["--method", "dora"]),
        (["--model", "llama-3.1-8b", "--seq-len", "0"], ["sequence length"]),
        (["--model", "llama-3.1-8b", "--micro-batch", "0"], ["micro-batch"]),
        (["--model", "llama-3.1-8b", "--mfu", "1.5"], ["--mfu"]),
        (["--model", "llama-3.1-8b", "--price-per-gpu-hour", "-1"], ["price"]),
    ],
)
def test_user_errors_are_one_sentence(cli, args, needles):
    _assert_clean_error(cli("estimate", *args), *needles)


def test_malformed_config_file(cli, tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    _assert_clean_error(cli("estimate", "--model", str(bad)), "not valid json")
    bad.write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    _assert_clean_error(cli("estimate", "--model", str(bad)), "missing")
    bad.write_text(json.dumps({"model_type": "llama", "hidden_size": "big", "num_hidden_layers": 2}))
    _assert_clean_error(cli("estimate", "--model", str(bad)), "hidden_size")


def test_remote_code_refused_without_flag(cli, tmp_path):
    cfg = json.loads((ROOT / "planner/catalog/models/llama-3.2-1b.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.X"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    _assert_clean_error(cli("estimate", "--model", str(tmp_path)), "--trust-remote-code")
    r = cli("estimate", "--model", str(tmp_path), "--trust-remote-code", "--method", "full", "--zero", "0", "--json")
    assert r.returncode == 0, r.stderr


def test_model_directory_and_hub_id_offline(cli, tmp_path):
    cfg = (ROOT / "planner/catalog/models/qwen2.5-0.5b.json").read_text()
    (tmp_path / "config.json").write_text(cfg)
    r = cli("estimate", "--model", str(tmp_path), "--json", "--method", "full", "--zero", "0")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"]["num_params"] == 494_032_768
    r = cli("estimate", "--model", "nobody/not-cached-model", env={"HF_HOME": str(tmp_path / "hf")})
    _assert_clean_error(r, "not in the local hugging face cache")


def test_gpu_auto_without_gpus(cli):
    _assert_clean_error(cli("estimate", "--model", "gpt2", "--gpu", "auto"), "--gpu auto")


@pytest.mark.parametrize("target", ["lm_head", "embed_tokens", "lm_head,embed_tokens"])
def test_lora_on_the_output_layer_or_the_embedding_is_estimated(cli, target):
    """Issue 14 item 7: both are valid --lora-targets (peft lora.Linear / lora.Embedding); they crashed."""
    r = cli("estimate", "--model", "llama-3.2-1b", "--gpus", "1", "--method", "lora", "--lora-targets", target,
            "--zero", "0", "--offload", "none", "--json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)["rows"][0]
    # peft: lm_head gets r(h + V), embed_tokens r(V + h): 16 x (2048 + 128256) each
    assert row["num_trainable_params"] == 16 * (2048 + 128256) * len(target.split(","))
    assert row["per_gpu"]["activations_bytes"] > 0


def test_lora_targets_all_inside_modules_to_save_are_refused_like_peft(cli):
    r = cli("estimate", "--model", "llama-3.2-1b", "--method", "lora", "--lora-targets", "lm_head",
            "--modules-to-save", "lm_head", "--zero", "0", "--offload", "none")
    assert r.returncode == 1
    assert "No modules were targeted for adaptation" in r.stderr and "Traceback" not in r.stderr


def test_moe_catalog_model_estimates_with_default_flags(cli):
    """The default LoRA dropout (0.05) is 0 where peft's lora.ParamWrapper adapts MoE expert and router
    parameters, so a catalog MoE model's default all-method table works (it exited with peft's refusal)."""
    out = cli("estimate", "--model", "mixtral-8x7b-v0.1", "--gpus", "8", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["train"]["lora"]["dropout"] == 0
    dense = cli("estimate", "--model", "llama-3.2-1b", "--gpus", "1", "--json", "--method", "lora", "--zero", "0",
                "--offload", "none")
    assert json.loads(dense.stdout)["train"]["lora"]["dropout"] == 0.05
    explicit = cli("estimate", "--model", "mixtral-8x7b-v0.1", "--gpus", "8", "--method", "lora",
                   "--lora-dropout", "0.05")
    assert explicit.returncode == 1 and "ParamWrapper" in explicit.stderr
