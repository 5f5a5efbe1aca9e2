"""--compile (torch.compile, inductor; issue 16 item 7): the spec, the CLI, the note, --from, the bundle, the profiler.

No rule is modelled (planner/estimate/compile_note.py): the estimate of a compiled run must be eager's, byte for
byte, with a note that it is an upper bound. The measured figures behind that note (planner's profiler running the
real torch.compile of tiny Llama and Qwen2 models on CPU) are in the README's torch.compile section; compiling
takes minutes per cell on CPU, so these tests do not compile.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from planner import catalog
from planner.errors import PlannerError
from planner.estimate.compile_note import COMPILE_CHECKPOINT_NOTE, COMPILE_NOTE
from planner.estimate.core import estimate
from planner.from_config import read_training_config
from planner.models import load_model
from planner.specs import Cluster, Method, TrainSpec, train_spec_from_dict, train_spec_to_dict
from planner.validate.matrix import COMPILE_CELLS, Cell


def test_the_estimate_is_eagers_with_a_note():
    model, cluster = load_model("llama-3.2-1b"), Cluster(gpu=catalog.gpu("h100-sxm-80gb"), num_gpus=1)
    for method, ckpt in ((Method.FULL, False), (Method.LORA, True)):
        eager = estimate(model, TrainSpec(method=method, grad_checkpointing=ckpt, seq_len=1024), cluster)
        compiled = estimate(model, dataclasses.replace(eager.train, compile=True), cluster)
        assert compiled.per_gpu == eager.per_gpu and compiled.peak_phase == eager.peak_phase
        note = COMPILE_CHECKPOINT_NOTE if ckpt else COMPILE_NOTE
        assert note in compiled.notes and note not in eager.notes


def test_the_train_block_round_trips_and_defaults_off():
    train = TrainSpec(compile=True)
    d = train_spec_to_dict(train)
    assert d["compile"] is True
    assert train_spec_from_dict(json.loads(json.dumps(d))) == train
    del d["compile"]  # a block from before the field: off
    assert train_spec_from_dict(d).compile is False
    assert TrainSpec().compile is False


def test_the_cli_takes_the_flag_into_the_train_block(cli):
    args = ("estimate", "-m", "llama-3.2-1b", "--method", "lora", "--zero", "0", "--offload", "none", "--json")
    on, off = cli(*args, "--compile"), cli(*args)
    assert on.returncode == 0, on.stderr
    on, off = json.loads(on.stdout), json.loads(off.stdout)
    assert on["train"]["compile"] is True and off["train"]["compile"] is False
    assert on["rows"][0]["per_gpu"] == off["rows"][0]["per_gpu"]
    assert any("torch.compile" in n for n in on["rows"][0]["notes"])
    assert not any("torch.compile" in n for n in off["rows"][0]["notes"])
    for command in ("estimate", "recommend", "profile", "report"):
        help_text = cli(command, "--help").stdout
        assert "--compile" in help_text, command


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_from_reads_torch_compile_and_torchtunes_compile(tmp_path):
    hf = "model_name_or_path: Qwen/Qwen2.5-0.5B\nper_device_train_batch_size: 2\n"
    assert read_training_config(_config(tmp_path, hf + "torch_compile: true\n")).train.compile is True
    assert read_training_config(_config(tmp_path, hf)).train.compile is False
    # TrainingArguments.__post_init__: a backend or a mode alone switches torch_compile on
    assert read_training_config(_config(tmp_path, hf + "torch_compile_mode: default\n")).train.compile is True
    with pytest.raises(PlannerError, match="CUDA graphs"):
        read_training_config(_config(tmp_path, hf + "torch_compile: true\ntorch_compile_mode: reduce-overhead\n"))
    with pytest.raises(PlannerError, match="inductor"):
        read_training_config(_config(tmp_path, hf + "torch_compile_backend: aot_eager\n"))
    tt = ("model:\n  _component_: torchtune.models.llama3_2.lora_llama3_2_1b\n  lora_attn_modules: ['q_proj']\n"
          "  lora_rank: 8\n  lora_alpha: 16\nbatch_size: 2\ncompile: true\n"
          "optimizer:\n  _component_: torch.optim.AdamW\n  lr: 3e-4\n")
    got = read_training_config(_config(tmp_path, tt))
    assert got.train.compile is True and any("compile_model" in n for n in got.notes)


def test_hf_compile_fields_are_transformers_own():
    from dataclasses import fields

    pytest.importorskip("transformers")
    from transformers.training_args import TrainingArguments

    names = {f.name for f in fields(TrainingArguments)}
    assert {"torch_compile", "torch_compile_backend", "torch_compile_mode"} <= names


def test_the_bundle_passes_torch_compile():
    from planner.emit import render_bundle
    from tests.bundle_helpers import tiny_plan

    model, train, cluster, est, gbs = tiny_plan()
    for on in (False, True):
        t = dataclasses.replace(train, compile=on)
        files = render_bundle(model, t, cluster, estimate(model, t, cluster), global_batch_size=gbs,
                              dataset="data.jsonl")
        assert "torch_compile=args.torch_compile" in files["train.py"]
        assert f"'compile': {on}," in files["train.py"]
        assert ("--compile" in files["PLAN.md"]) is on


def test_the_profiler_compiles_as_accelerate_does():
    """make_engine wraps the model in torch.compile(backend="inductor") (compilation itself waits for the first
    forward, so nothing is compiled here)."""
    torch = pytest.importorskip("torch")
    from planner.profile.engine import make_engine
    from planner.profile.workload import build_model

    cell = COMPILE_CELLS[0]
    train = dataclasses.replace(cell.train_spec(), micro_batch=1, seq_len=16)
    built = build_model(cell.model_config(), train, "cpu", seed=0)
    engine = make_engine(built, train, "cpu", 1, 0)
    assert isinstance(engine.module, torch._dynamo.eval_frame.OptimizedModule)
    assert engine.module._orig_mod is built.model
    eager = make_engine(build_model(cell.model_config(), dataclasses.replace(train, compile=False), "cpu", seed=0),
                        dataclasses.replace(train, compile=False), "cpu", 1, 0)
    assert not isinstance(eager.module, torch._dynamo.eval_frame.OptimizedModule)


def test_compile_cells_stay_out_of_the_bounded_matrix():
    from planner.validate.matrix import ci_matrix, full_matrix

    assert COMPILE_CELLS and all(c.compile for c in COMPILE_CELLS)
    assert not set(COMPILE_CELLS) & (set(full_matrix()) | set(ci_matrix()))
    eager = dataclasses.replace(COMPILE_CELLS[0], compile=False)
    assert "compile" not in eager.id and COMPILE_CELLS[0].id.endswith(COMPILE_CELLS[0].id[-6:])
    assert "-compile-" in COMPILE_CELLS[0].id
    assert Cell.from_dict({**eager.to_dict(), "compile": ""}) == eager
