"""The shared training options (planner/cli/options.py): declared once in TrainingFlags, offered by every command
with the same flags and help, read into a TrainSpec by one function that names the flag of every invalid value,
and a TrainSpec's ZeRO stage and offload written in one place."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from planner.cli import options as o
from planner.cli.app import app
from planner.errors import PlannerError
from planner.specs import Method, Offload

CLI = Path(__file__).resolve().parent.parent / "planner" / "cli"
SHARED = [f.name for f in dataclasses.fields(o.TrainingFlags) if f.metadata.get("option", True)]
# What each command leaves out, and the options it declares its own way (another type, help or default).
OMITTED = {"estimate": set(), "report": {"host_ram"}, "recommend": {"micro_batch", "grad_accum"},
           "profile": {*o.HOST_OPTIONS, *o.PLAN_OPTIONS}}
VARIANTS = {"estimate": set(), "report": {"seq_len"}, "recommend": {"method", "attn", "grad_checkpointing", "seq_len"},
            "profile": {"method", "zero", "offload", "seq_len"}}


def _params(command: str) -> dict:
    return {p.name: p for p in get_command(app).commands[command].params}


@pytest.mark.parametrize("command", sorted(OMITTED))
def test_every_command_offers_the_shared_options_as_declared(command):
    """Every shared option a command offers has the declared flag names; its help and default are the declared
    ones unless the command names the difference."""
    reference, params = _params("estimate"), _params(command)
    assert set(SHARED) <= set(reference)
    for name in SHARED:
        if name in OMITTED[command]:
            assert name not in params, (command, name)
            continue
        want, got = reference[name], params[name]
        assert (got.opts, got.secondary_opts) == (want.opts, want.secondary_opts), (command, name)
        if name not in VARIANTS[command]:
            assert (got.help, got.default) == (want.help, want.default), (command, name)


def test_estimate_offers_the_declared_defaults():
    params = _params("estimate")
    for f in dataclasses.fields(o.TrainingFlags):
        if f.name in SHARED:
            assert params[f.name].default == f.default, f.name


@pytest.mark.parametrize("values, flag", [
    ({"method": "dpo"}, "--method"), ({"zero": 4}, "--zero"), ({"zero": -1}, "--zero"), ({"offload": "disk"}, "--offload"),
    ({"precision": "fp8"}, "--precision"), ({"optimizer": "lion"}, "--optimizer"), ({"quant_type": "int4"}, "--quant-type"),
    ({"attn": "flash3"}, "--attn"), ({"lora_rank": 0}, "--lora-rank"), ({"lora_alpha": 0}, "--lora-alpha"),
    ({"lora_targets": ","}, "--lora-targets"),
])  # fmt: skip
def test_an_invalid_value_names_its_flag(values, flag):
    with pytest.raises(PlannerError, match=flag):
        o.build_train_spec(o.TrainingFlags(**values))


@pytest.mark.parametrize("values, flag", [
    ({"mfu": 1.5}, "--mfu"), ({"price_per_gpu_hour": -1.0}, "--price-per-gpu-hour"), ({"tokens": "x"}, "--tokens"),
    ({"margin": 1.0}, "--margin"), ({"zero": 7}, "--zero"),
])  # fmt: skip
def test_checks_before_any_work_name_their_flag(values, flag):
    with pytest.raises(PlannerError, match=flag):
        o.check_flags(o.TrainingFlags(**values))


def test_host_ram_names_its_flag():
    with pytest.raises(PlannerError, match="--host-ram"):
        o.build_cluster(o.TrainingFlags(host_ram=-1.0))


def test_not_fixed_values_build_the_first_layout():
    train = o.build_train_spec(o.TrainingFlags(), grad_checkpointing=None, attn=None)
    assert (train.method, train.zero_stage, train.offload, train.seq_len) == (Method.FULL, 0, Offload.NONE, 2048)
    assert not train.grad_checkpointing and train.attn_impl.value == "sdpa"
    train = o.build_train_spec(method="lora", zero=3, offload="optimizer+params", precision="fp32", seq_len=64)
    assert (train.method, train.zero_stage, train.offload) == (Method.LORA, 3, Offload.OPTIMIZER_PARAMS)


def test_the_decorator_hands_one_training_flags_with_what_was_typed():
    seen = []
    mini = typer.Typer()

    @mini.command()
    @o.training_options(omit=o.PLAN_OPTIONS, seq_len=512)
    def run(*, name: str = "x", flags: o.TrainingFlags) -> None:
        seen.append((name, flags))

    @mini.command()
    def other() -> None:  # two commands, so that `run` is a subcommand
        pass

    result = CliRunner().invoke(mini, ["run", "--zero", "2", "--gpus", "4", "--name", "y", "--no-double-quant"])
    assert result.exit_code == 0, result.output
    name, flags = seen[0]
    assert name == "y" and flags.zero == 2 and flags.gpus == 4 and flags.double_quant is False
    assert flags.seq_len == 512 and flags.method is None
    assert flags.typed == {"zero", "gpus", "double_quant"}
    help_text = CliRunner().invoke(mini, ["run", "--help"]).output
    assert "--lora-rank" in help_text and "--margin" not in help_text


def test_the_decorator_refuses_names_that_are_not_shared_options():
    with pytest.raises(TypeError):
        o.training_options(bogus=1)
    with pytest.raises(TypeError):
        o.training_options(omit=("bogus",))


def test_one_place_writes_a_stage_and_an_offload_into_a_train_spec():
    """Only options._layout turns a ZeRO stage and an offload (or FSDP2's settings) into a TrainSpec's fields (its parallelism): a new
    parallelism field or engine changes one function."""
    layout_fields = {"zero_stage", "parallelism"}
    offenders = []
    for path in sorted(CLI.glob("*.py")):
        tree = ast.parse(path.read_text())
        inside = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "_layout"
                  for n in ast.walk(f)}  # fmt: skip
        for node in ast.walk(tree):
            if id(node) in inside:
                continue
            if isinstance(node, ast.Call):
                func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                words = {k.arg for k in node.keywords}
                of_flags = func == "replace" and node.args and getattr(node.args[0], "id", "") == "flags"
                if (words & layout_fields or func in ("Parallelism", "from_zero")
                        or (func in ("TrainSpec", "replace") and "offload" in words and not of_flags)):
                    offenders.append(f"{path.name}:{node.lineno}")
            elif isinstance(node, ast.Dict) and any(isinstance(k, ast.Constant) and k.value in layout_fields
                                                    for k in node.keys):
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders
