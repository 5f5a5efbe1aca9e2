"""The run bundle (planner.emit): file sets, real config loading, atomic writes, quoting. Fast tests.

accelerate's and DeepSpeed's own config classes load every emitted config; the same loaders must reject
a broken copy, so these tests can fail. The end-to-end runs are in test_bundle_e2e.py.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from planner.emit import (
    deepspeed_config,
    profile_argv,
    render_bundle,
    weights_reference,
)
from planner.emit.bundle import catalog_hub_ids
from planner.errors import PlannerError
from planner.models import load_model
from planner.units import fmt_gib
from tests.bundle_helpers import TINY_LLAMA, tiny_model, tiny_plan
from tests.conftest import run_cli

WEIRD = """we ird 'sq' "dq" $(touch PWNED1) `touch PWNED2` ; touch PWNED3 & $HOME \\n"""


def bundle(tmp_path: Path, name: str = "bundle", **plan_kwargs) -> Path:
    model, train, cluster, est, gbs = tiny_plan(**plan_kwargs)
    files = render_bundle(model, train, cluster, est, global_batch_size=gbs, dataset="data.jsonl")
    from planner.emit import write_files

    write_files(files, tmp_path / name)
    return tmp_path / name


# ---------------------------------------------------------------- purity, file sets


def test_emit_does_not_import_torch():
    code = (
        "import sys, planner.emit; heavy = [m for m in ('torch', 'transformers', 'deepspeed', 'accelerate', "
        "'peft', 'bitsandbytes') if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("zero", "num_gpus", "kind"),
    [(0, 1, "NO"), (0, 2, "MULTI_GPU"), (1, 2, "DEEPSPEED"), (2, 2, "DEEPSPEED"), (3, 4, "DEEPSPEED")],
)
def test_file_set_and_distributed_type(zero, num_gpus, kind):
    model, train, cluster, est, gbs = tiny_plan(zero=zero, num_gpus=num_gpus)
    files = render_bundle(model, train, cluster, est, global_batch_size=gbs)
    expected = {"PLAN.md", "accelerate_config.yaml", "launch.sh", "model_config.json", "sample.jsonl", "train.py"}
    assert set(files) == (expected | {"ds_config.json"} if zero else expected)
    acc = yaml.safe_load(files["accelerate_config.yaml"])
    assert acc["distributed_type"] == kind
    assert acc["num_processes"] == num_gpus
    if kind == "DEEPSPEED":
        assert acc["deepspeed_config"]["deepspeed_config_file"] == "ds_config.json"
        assert "mixed_precision" not in acc  # accelerate refuses it next to a DeepSpeed config file
    assert json.loads(files["model_config.json"]) == TINY_LLAMA


def test_render_is_deterministic_and_pure():
    a = render_bundle(*tiny_plan(zero=2, num_gpus=2)[:4], global_batch_size=4)
    b = render_bundle(*tiny_plan(zero=2, num_gpus=2)[:4], global_batch_size=4)
    assert a == b
    assert list(a) == sorted(a)


def test_global_batch_must_match_the_plan():
    model, train, cluster, est, gbs = tiny_plan(num_gpus=2, micro_batch=2, grad_accum=3)
    with pytest.raises(PlannerError, match="12"):
        render_bundle(model, train, cluster, est, global_batch_size=gbs + 1)


# ---------------------------------------------------------------- accelerate loads the YAML


def _accelerate_launch_args(config_file: Path):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "train.py", "--max-steps", "2"])
    return _validate_launch_command(args)


@pytest.mark.parametrize(("zero", "num_gpus"), [(0, 1), (0, 2), (2, 2), (3, 8)])
def test_accelerate_reads_the_config(tmp_path, zero, num_gpus):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    out = bundle(tmp_path, zero=zero, num_gpus=num_gpus, precision="bf16-mixed")
    config = load_config_from_file(str(out / "accelerate_config.yaml"))
    assert isinstance(config, ClusterConfig)
    assert config.num_processes == num_gpus and config.num_machines == 1
    args, defaults, _ = _accelerate_launch_args(out / "accelerate_config.yaml")
    assert args.num_processes == num_gpus
    assert args.use_deepspeed == (zero > 0)
    assert args.multi_gpu == (zero == 0 and num_gpus > 1)
    if zero == 0:
        assert args.mixed_precision == "bf16"


@pytest.mark.parametrize(("zero", "num_gpus", "num_nodes"), [(0, 1, 1), (2, 2, 1), (3, 16, 2), (0, 8, 2)])
def test_accelerate_parses_the_launch_command(tmp_path, monkeypatch, zero, num_gpus, num_nodes):
    """The exact flags of launch.sh's `accelerate launch` line, through accelerate's own parser and checks."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    out = bundle(tmp_path, zero=zero, num_gpus=num_gpus, num_nodes=num_nodes)
    monkeypatch.chdir(out)
    values = {"$MACHINE_RANK": "1", "$MAIN_PROCESS_IP": "10.1.2.3", "$PORT": "29501"}
    argv = [values.get(a, a) for a in _exec_argv((out / "launch.sh").read_text())[4:] if a != "$@"]
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    assert (args.num_processes, args.num_machines, args.main_process_port) == (num_gpus, num_nodes, 29501)
    assert args.training_script == "train.py"
    if num_nodes > 1:
        assert (args.machine_rank, args.main_process_ip) == (1, "10.1.2.3")
    assert args.use_deepspeed == (zero > 0)


def test_accelerate_and_deepspeed_plugin_accept_the_pair(tmp_path, monkeypatch):
    """What `accelerate launch` hands to each process (env) must let DeepSpeedPlugin load ds_config.json."""
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    def plugin_for(config_file: Path) -> DeepSpeedPlugin:
        args, defaults, mp_from_config = _accelerate_launch_args(config_file)
        # accelerate/commands/launch.py launch_command(): the fields the DeepSpeed launcher reports.
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
        for key, value in env.items():
            if key.startswith("ACCELERATE_"):
                monkeypatch.setenv(key, value)
        return DeepSpeedPlugin(hf_ds_config=str(out / "ds_config.json"))

    out = bundle(tmp_path, zero=3, num_gpus=2, precision="bf16-mixed")
    monkeypatch.chdir(out)
    plugin = plugin_for(out / "accelerate_config.yaml")
    assert plugin.zero_stage == 3
    assert plugin.deepspeed_config["train_batch_size"] == 4
    # A config that also sets mixed_precision is refused by accelerate (the check above can fail).
    broken = out / "broken.yaml"
    broken.write_text((out / "accelerate_config.yaml").read_text() + "mixed_precision: bf16\n")
    with pytest.raises(ValueError, match="will be ignored"):
        plugin_for(broken)


def test_accelerate_rejects_a_malformed_yaml(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    out = bundle(tmp_path, zero=2, num_gpus=2)
    text = (out / "accelerate_config.yaml").read_text()
    (out / "unknown.yaml").write_text(text + "num_gpus_per_node: 2\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_config_from_file(str(out / "unknown.yaml"))
    (out / "badtype.yaml").write_text(text.replace("distributed_type: DEEPSPEED", "distributed_type: ZERO"))
    with pytest.raises(ValueError):
        load_config_from_file(str(out / "badtype.yaml"))


# ---------------------------------------------------------------- DeepSpeed loads the JSON


@pytest.mark.parametrize(
    ("zero", "offload", "precision"),
    [(1, "none", "bf16-mixed"), (2, "none", "fp16-mixed"), (2, "optimizer", "bf16-mixed"),
     (3, "none", "fp32"), (3, "optimizer+params", "bf16-mixed")],
)  # fmt: skip
def test_deepspeed_reads_the_config(tmp_path, zero, offload, precision):
    from deepspeed.runtime.config import DeepSpeedConfig

    # One GPU: without a process group DeepSpeedConfig checks the batch keys against a world size of 1.
    out = bundle(tmp_path, zero=zero, num_gpus=1, offload=offload, precision=precision, grad_accum=3)
    config = DeepSpeedConfig(str(out / "ds_config.json"))
    assert config.zero_optimization_stage == zero
    assert (config.train_batch_size, config.train_micro_batch_size_per_gpu) == (6, 2)
    assert config.gradient_accumulation_steps == 3
    assert config.gradient_clipping == 1.0
    assert config.bfloat16_config.enabled == (precision == "bf16-mixed")
    assert config.float16_config.enabled == (precision == "fp16-mixed")
    offload_opt = config.zero_config.offload_optimizer
    assert (offload_opt is not None and offload_opt.device == "cpu") == (offload != "none")
    offload_param = config.zero_config.offload_param
    assert (offload_param is not None and offload_param.device == "cpu") == (offload == "optimizer+params")
    h = TINY_LLAMA["hidden_size"]
    assert config.zero_config.reduce_bucket_size == h * h
    if zero == 3:
        assert config.zero_config.param_persistence_threshold == 10 * h
        assert config.zero_config.gather_16bit_weights_on_model_save


def test_deepspeed_zero_section_for_many_gpus():
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    model, train, cluster, _, gbs = tiny_plan(zero=3, num_gpus=8, num_nodes=2, micro_batch=3, grad_accum=5)
    config = deepspeed_config(model, train, cluster)
    assert config["train_batch_size"] == gbs == 3 * 5 * 8
    assert DeepSpeedZeroConfig(**config["zero_optimization"]).stage == 3


@pytest.mark.parametrize(
    "breakage",
    [{"stage": "two"}, {"stage": 7}, {"bogus_key": 1}, {"offload_optimizer": {"device": "gpu"}}],
)
def test_deepspeed_rejects_a_malformed_config(tmp_path, breakage):
    from deepspeed.runtime.config import DeepSpeedConfig

    out = bundle(tmp_path, zero=2, num_gpus=1)
    config = json.loads((out / "ds_config.json").read_text())
    config["zero_optimization"].update(breakage)
    with pytest.raises(Exception):  # noqa: B017 - pydantic ValidationError, whichever DeepSpeed raises
        DeepSpeedConfig(config)


def test_deepspeed_rejects_inconsistent_batch_keys(tmp_path):
    from deepspeed.runtime.config import DeepSpeedConfig

    out = bundle(tmp_path, zero=2, num_gpus=1)
    config = json.loads((out / "ds_config.json").read_text())
    config["train_batch_size"] += 1
    with pytest.raises(AssertionError, match="train_batch_size"):
        DeepSpeedConfig(config)


def test_offload_optimizer_section():
    model, train, cluster, _, _ = tiny_plan(zero=2, offload="optimizer")
    config = deepspeed_config(model, train, cluster)
    assert config["optimizer"]["type"] == "AdamW"
    assert set(config["optimizer"]["params"].values()) == {"auto"}  # resolved by the HF Trainer (e2e test)
    import dataclasses

    from planner.specs import Optimizer, Parallelism

    sgd = dataclasses.replace(train, optimizer=Optimizer.SGD)
    config = deepspeed_config(model, sgd, cluster)
    assert "optimizer" not in config and config["zero_force_ds_cpu_optimizer"] is False
    with pytest.raises(PlannerError, match="stage 0"):
        deepspeed_config(model, dataclasses.replace(train, parallelism=Parallelism()), cluster)


# ---------------------------------------------------------------- train.py


def _plan_literal(train_py: str) -> dict:
    tree = ast.parse(train_py)
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "PLAN":
            return ast.literal_eval(node.value)
    raise AssertionError("train.py has no PLAN literal")


def test_train_script_embeds_the_plan_and_lints(tmp_path):
    out = bundle(tmp_path, method="qlora", zero=2, num_gpus=2, precision="bf16-mixed", micro_batch=3, grad_accum=2)
    plan = _plan_literal((out / "train.py").read_text())
    assert plan["method"] == "qlora" and plan["precision"] == "bf16-mixed"
    assert (plan["micro_batch"], plan["grad_accum"], plan["seq_len"]) == (3, 2, 32)
    assert plan["deepspeed"] == "ds_config.json" and plan["grad_checkpointing"] is True
    assert plan["quant"]["quant_type"] == "nf4" and plan["lora"]["targets"] == ["all-linear"]
    assert plan["model"] == os.path.abspath("tiny-llama")  # the directory of the model's config.json, absolute
    ruff = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated", "--select", "E9,F", str(out / "train.py")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr
    assert os.access(out / "train.py", os.X_OK) and os.access(out / "launch.sh", os.X_OK)


def test_train_script_help_and_clean_errors(tmp_path):
    model, train, cluster, est, gbs = tiny_plan()
    model = tiny_model(source=str(tmp_path / "lone.json"))  # a config file without weights beside it
    files = render_bundle(model, train, cluster, est, global_batch_size=gbs)
    (tmp_path / "train.py").write_text(files["train.py"])
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, str(tmp_path / "train.py"), *a], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    help_ = run("--help")
    assert help_.returncode == 0 and "--random-init" in help_.stdout and "--max-steps" in help_.stdout
    no_weights = run("--max-steps", "1")
    assert no_weights.returncode == 2 and "no weights to load" in no_weights.stderr
    hub = run("--random-init", "model_config.json", "--dataset", "nobody/no-such-dataset")
    assert hub.returncode == 2
    if importlib.util.find_spec("datasets") is None:
        assert "'datasets' package is not installed" in hub.stderr
    else:  # the hub is offline in tests (and the name unknown): one sentence, no traceback
        assert "could not load dataset 'nobody/no-such-dataset'" in hub.stderr and "Traceback" not in hub.stderr
    missing = run("--random-init", "model_config.json", "--dataset", "missing.jsonl")
    assert missing.returncode == 2 and "'missing.jsonl' does not exist" in missing.stderr
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    bad = run("--random-init", "model_config.json", "--dataset", str(tmp_path / "bad.jsonl"))
    assert bad.returncode == 2 and "bad.jsonl:2 has no string field 'text'" in bad.stderr
    fp16 = run("--cpu", "--precision", "fp16-mixed", "--random-init", "x.json")
    assert fp16.returncode == 2 and "fp16 training needs a GPU" in fp16.stderr
    assert "Traceback" not in no_weights.stderr + hub.stderr + bad.stderr + fp16.stderr


# ---------------------------------------------------------------- launch.sh


def _exec_argv(launch_sh: str) -> list[str]:
    """The active `exec "$PYTHON" -m accelerate.commands.launch ...` command as the shell would split it."""
    joined = launch_sh.replace("\\\n", " ")
    line = next(ln for ln in joined.splitlines() if ln.startswith('exec "$PYTHON" -m accelerate.commands.launch '))
    return shlex.split(line)


def test_launch_sh_quotes_user_values(tmp_path):
    model = tiny_model(source=f"/models/{WEIRD}/config.json")
    _, train, cluster, est, gbs = tiny_plan(model=model)
    dataset = f"/data/{WEIRD}.jsonl"
    files = render_bundle(model, train, cluster, est, global_batch_size=gbs, dataset=dataset, tokenizer=WEIRD)
    text = files["launch.sh"]
    assert text.splitlines()[0] == "#!/usr/bin/env bash" and "set -euo pipefail" in text
    assert 'cd "$(dirname "${BASH_SOURCE[0]}")"' in text
    argv = _exec_argv(text)
    assert argv[argv.index("--model") + 1] == f"/models/{WEIRD}"
    assert argv[argv.index("--dataset") + 1] == dataset
    assert argv[argv.index("--tokenizer") + 1] == WEIRD
    assert argv[-1] == "$@"
    (tmp_path / "launch.sh").write_text(text)
    syntax = subprocess.run(["bash", "-n", str(tmp_path / "launch.sh")], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    # Comment lines stay comments: nothing after '#' on the multi-node lines can run.
    for line in text.splitlines():
        if "PWNED" in line and not line.startswith("  train.py"):
            assert line.startswith("#")
    assert _plan_literal(files["train.py"])["model"] == f"/models/{WEIRD}"


def test_multi_node_launch_requires_rank_and_address(tmp_path):
    out = bundle(tmp_path, zero=3, num_gpus=4, num_nodes=2)
    text = (out / "launch.sh").read_text()
    argv = _exec_argv(text)
    assert argv[argv.index("--num_machines") + 1] == "2" and argv[argv.index("--num_processes") + 1] == "4"
    syntax = subprocess.run(["bash", "-n", str(out / "launch.sh")], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("MACHINE_RANK", "MAIN_PROCESS_IP")}
    proc = subprocess.run(["bash", str(out / "launch.sh")], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode != 0 and "set MACHINE_RANK to the rank of this node" in proc.stderr


# ---------------------------------------------------------------- PLAN.md and the profile command


def test_plan_md_shows_the_estimate_by_category(tmp_path):
    model, train, cluster, est, gbs = tiny_plan(method="lora", zero=2, num_gpus=2)
    text = render_bundle(model, train, cluster, est, global_batch_size=gbs)["PLAN.md"]
    for category, value in est.per_gpu.by_category().items():
        assert f"| {category} | {fmt_gib(value)} |" in text
    assert f"**{fmt_gib(est.per_gpu.total_bytes)}**" in text
    assert fmt_gib(est.device_bytes) in text and f"peak during {est.peak_phase}" in text
    assert shlex.join(profile_argv(model, train, cluster)) in text
    assert "planner compare profile" in text


def test_profile_command_uses_real_planner_flags(tmp_path):
    """The profile command's training flags are the ones `planner estimate` shares; estimate accepts them."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY_LLAMA))
    model = tiny_model(source=str(config))
    _, train, cluster, _, _ = tiny_plan(model=model, method="qlora", zero=2, num_gpus=2, precision="bf16-mixed")
    argv = profile_argv(model, train, cluster)
    assert argv[:2] == ["planner", "profile"]
    profile_only = {"--steps", "--device", "--out"}
    flags = []
    skip = False
    for token in argv[2:]:
        if skip:
            skip = False
            continue
        if token in profile_only:
            skip = True
            continue
        flags.append(token)
    proc = run_cli("estimate", *flags, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    rows = rows if isinstance(rows, list) else rows.get("rows", [rows])
    assert any(r.get("method") == "qlora" and r.get("zero_stage") == 2 for r in rows)


# ---------------------------------------------------------------- weights reference


def test_weights_reference():
    assert weights_reference(load_model("llama-3.1-8b")) == "meta-llama/Llama-3.1-8B"
    assert weights_reference(load_model("qwen2.5-7b")) == "Qwen/Qwen2.5-7B"
    assert set(catalog_hub_ids()) >= {"gpt2", "mistral-7b-v0.3", "gemma-2-9b"}
    assert weights_reference(tiny_model(source="hub:org/model")) == "org/model"
    assert weights_reference(tiny_model(source="/m/x/config.json")) == "/m/x"
    assert weights_reference(tiny_model(source="/m/x")) == "/m/x"
    assert weights_reference(tiny_model(source="/m/tiny.json")) is None
