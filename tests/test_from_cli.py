"""`planner estimate --from FILE` (issue 19): the estimate of a training config equals the estimate of the same
run given as flags, and flags typed beside --from override the config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_harness import run_inprocess

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "configs"

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
