"""The terminal output of `planner estimate` (issue 14 item 14): notes under the table, the table fits the
terminal, headers a reader understands, cost with its currency, and --tokens written as people write it.

Runs the typer app in this process (cli_harness.run_inprocess); rich reads the width from COLUMNS.
"""

from __future__ import annotations

import json

import pytest
from cli_harness import run_inprocess

EST_8B = ["estimate", "-m", "llama-3.1-8b", "--gpus", "8"]


def _run(monkeypatch, args, columns=200):
    monkeypatch.setenv("COLUMNS", str(columns))
    res = run_inprocess(args)
    assert res.code == 0 and not res.internal, (res.stderr, res.internal)
    return res


def test_notes_reach_the_terminal_once_each(monkeypatch):
    res = _run(monkeypatch, EST_8B)
    out = res.stdout
    # The foreach assumption (11 rows) and the rank shown (one row per ZeRO-1/2 layout), each printed once.
    assert out.count("torch AdamW foreach makes a copy of the second moment") == 1
    assert "the figures are rank" in out
    rows = json.loads(run_inprocess([*EST_8B, "--json"]).stdout)["rows"]
    for note in {n for r in rows for n in r["notes"]}:
        assert " ".join(note.split())[:60] in " ".join(out.split()), note
    # The installed-library note stays on stderr, where it was.
    assert "modelled" not in res.stderr or "note:" in res.stderr


def test_unvalidated_family_note_is_shown(monkeypatch, tmp_path):
    cfg = {"model_type": "starcoder2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 256}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    res = _run(monkeypatch, ["estimate", "-m", str(tmp_path), "--method", "full", "--zero", "0", "--offload", "none"])
    # an unknown family's activations follow the nearest validated layer (estimate/nearest.py), said in a note
    assert "has no activation model of its own" in " ".join(res.stdout.split())


@pytest.mark.parametrize("columns", [80, 100, 120])
def test_estimate_fits_the_terminal(monkeypatch, columns):
    res = _run(monkeypatch, [*EST_8B, "--tokens", "2B", "--price-per-gpu-hour", "2.5"], columns)
    widest = max(len(line) for line in res.stdout.splitlines())
    assert widest <= columns, f"{widest} columns in a {columns}-column terminal"


@pytest.mark.parametrize("columns", [80, 120])
def test_compare_gpus_fits_the_terminal(monkeypatch, columns):
    res = _run(monkeypatch, ["estimate", "-m", "qwen2.5-0.5b", "-s", "512", "--compare-gpus", "--tokens", "1B"], columns)
    widest = max(len(line) for line in res.stdout.splitlines())
    assert widest <= columns, f"{widest} columns in a {columns}-column terminal"


def test_headers_say_what_they_are(monkeypatch):
    out = _run(monkeypatch, EST_8B).stdout
    assert "max mb/seq" not in out
    assert "micro-batch" in out and "sequence" in out
    assert "optimizer" in out and "activ-" in out and "ations" in out  # headers may take two lines


def test_cost_names_its_currency(monkeypatch):
    out = _run(monkeypatch, [*EST_8B, "--tokens", "2B", "--price-per-gpu-hour", "2.5"]).stdout
    assert "cost (your" in out and "currency)" in out  # a two-line header
    out = _run(monkeypatch, ["estimate", "-m", "qwen2.5-0.5b", "-s", "512", "--compare-gpus", "--tokens", "1B"]).stdout
    assert "USD" in out


@pytest.mark.parametrize(("text", "tokens"), [
    ("2000000000", 2_000_000_000), ("2e9", 2_000_000_000), ("2B", 2_000_000_000), ("500M", 500_000_000),
    ("1.5T", 1_500_000_000_000), ("20k", 20_000), ("2_000_000", 2_000_000),
])  # fmt: skip
def test_tokens_as_people_write_them(text, tokens):
    res = run_inprocess(["estimate", "-m", "gpt2", "-s", "512", "--method", "full", "--zero", "0", "--offload", "none",
                         "--tokens", text, "--json"])  # fmt: skip
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["rows"][0]["throughput"]["num_tokens"] == tokens
