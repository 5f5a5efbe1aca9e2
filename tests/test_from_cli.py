"""`planner estimate --from FILE` (issue 19): the estimate of a training config equals the estimate of the same
run given as flags, and flags typed beside --from override the config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_harness import run_inprocess
from test_from_config import EXAMPLES as SPEC_EXAMPLES
from test_from_config import SAME_SHAPES

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "configs"
EXAMPLES_DIR = EXAMPLES

# (config, the same run as planner flags, written by hand from the file and its project's defaults)
CASES = [
    ("llamafactory/llama3_lora_sft.yaml",
     ["--method", "lora", "--lora-rank", "8", "--lora-alpha", "16", "--lora-dropout", "0", "--lora-targets",
      "all-linear", "--micro-batch", "1", "--grad-accum", "8", "--seq-len", "2048", "--grad-checkpointing",
      "--precision", "bf16-mixed", "--zero", "0", "--offload", "none"]),
]


def _json(args: list[str]) -> dict:
    out = run_inprocess(["estimate", *args, "--json"])
    assert out.code == 0, out.stderr
    return json.loads(out.stdout)


def test_from_equals_the_same_run_as_flags():
    cfg, flags = CASES[0]
    got = _json(["--from", str(EXAMPLES / cfg), "-m", "llama-3.1-8b"])
    want = _json(["-m", "llama-3.1-8b", *flags])
    assert got["rows"] == want["rows"] and len(got["rows"]) == 1
    assert got["train"] == want["train"]
    assert got["from_config"]["format"] and "cutoff_len" in got["from_config"]["used"]
    assert "from_config" not in want


def test_a_flag_beside_from_overrides_the_config():
    cfg, flags = CASES[0]
    got = _json(["--from", str(EXAMPLES / cfg), "-m", "llama-3.1-8b", "--micro-batch", "4", "--gpus", "8",
                 "--zero", "2"])
    want = _json(["-m", "llama-3.1-8b", *flags, "--micro-batch", "4", "--gpus", "8", "--zero", "2"])
    assert got["rows"] == want["rows"]
    assert got["rows"][0]["zero_stage"] == 2 and got["train"]["micro_batch"] == 4


@pytest.mark.parametrize("args, code, message", [
    (["--accelerate-config", "x.yaml", "-m", "gpt2"], 1, "--accelerate-config goes with --from"),
    ([], 2, "--from a training config"),  # no model at all: a usage error, as when --model was required
])
def test_from_refusals_are_one_sentence(args, code, message):
    out = run_inprocess(["estimate", *args])
    assert out.code == code and message in out.stderr and "Traceback" not in out.stderr


def test_recommend_from_plans_the_configs_recipe_and_global_batch():
    """recommend --from: the config's recipe (LoRA r8/alpha 16/dropout 0, bf16, sequence 2048) and its global
    batch (micro-batch 1 x accumulation 8 x 8 GPUs = 64) with the layout searched, as the same flags would."""
    got = run_inprocess(["recommend", "--from", str(EXAMPLES / CASES[0][0]), "-m", "llama-3.1-8b", "--gpus", "8",
                         "--json"])
    want = run_inprocess(["recommend", "-m", "llama-3.1-8b", "--gpus", "8", "-g", "64", "--method", "lora",
                          "--lora-rank", "8", "--lora-alpha", "16", "--lora-dropout", "0", "--seq-len", "2048",
                          "--json"])
    assert got.code == 0 and want.code == 0, got.stderr + want.stderr
    g, w = json.loads(got.stdout), json.loads(want.stdout)
    assert g["plan"] == w["plan"] and g["plan"]["global_batch_size"] == 64
    assert g["plan"]["train"]["lora"]["rank"] == 8


def test_report_from_estimates_the_same_row_as_estimate_from(tmp_path):
    """report --from writes the estimate of the config's run: the same single row `estimate --from` gives."""
    out = run_inprocess(["report", "--from", str(EXAMPLES / CASES[0][0]), "-m", "llama-3.1-8b",
                         "-o", str(tmp_path / "r.html")])
    assert out.code == 0, out.stderr
    html = (tmp_path / "r.html").read_text()
    row = _json(["--from", str(EXAMPLES / CASES[0][0]), "-m", "llama-3.1-8b"])["rows"][0]
    assert f"{row['device_bytes'] / 2**30:.2f}" in html and "lora" in html


def _flags(train) -> list[str]:
    """The planner flags of a TrainSpec, one flag per field (test_from_config.EXAMPLES' specs are hand-written)."""
    par = train.parallelism
    flags = ["--method", train.method.value, "--precision", train.precision.value, "--optimizer",
             train.optimizer.value, "--lora-rank", str(train.lora.rank), "--lora-alpha", str(train.lora.alpha),
             "--lora-dropout", str(train.lora.dropout), "--lora-targets", ",".join(train.lora.targets),
             "--lora-dtype", train.lora_dtype.value, "--qlora-prep", train.qlora_prep.value,
             "--quant-type", train.quant.quant_type.value,
             "--double-quant" if train.quant.double_quant else "--no-double-quant",
             "--zero", str(par.zero_stage), "--offload", par.offload.value,
             "--micro-batch", str(train.micro_batch), "--grad-accum", str(train.grad_accum),
             "--seq-len", str(train.seq_len), "--attn", train.attn_impl.value,
             "--grad-checkpointing" if train.grad_checkpointing else "--no-grad-checkpointing",
             "--activation-offload" if train.activation_offload else "--no-activation-offload",
             "--loss", train.loss.kind.value, "--loss-chunks", str(train.loss.chunks)]
    if train.lora.modules_to_save:
        flags += ["--modules-to-save", ",".join(train.lora.modules_to_save)]
    if train.dropout is not None:
        flags += ["--dropout", str(train.dropout)]
    if train.packing:
        flags += ["--packing"]
    if train.selective_ac:
        flags += ["--selective-ac", train.selective_ac]
    return flags


@pytest.mark.slow
@pytest.mark.parametrize("rel", [e[0] for e in SPEC_EXAMPLES])
def test_every_example_estimates_as_its_flags(rel):
    """Issue 19's acceptance: each example config's --from estimate equals the estimate of the same run typed as
    flags (from the TrainSpec written by hand in test_from_config.EXAMPLES)."""
    _, _, model, expected = next(e for e in SPEC_EXAMPLES if e[0] == rel)
    model = SAME_SHAPES.get(model, model)
    gpus = ["--gpus", "8"] if expected.zero_stage else []
    got = _json(["--from", str(EXAMPLES_DIR / rel), "-m", model, *gpus])
    want = _json(["-m", model, *gpus, *_flags(expected)])
    assert got["train"] == want["train"]
    assert got["rows"] == want["rows"] and len(got["rows"]) == 1
