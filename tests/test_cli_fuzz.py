"""CLI fuzzing: random argument lists built from the real options of every command and realistic values.

The grammar is read from the typer app itself (every option, its flags and type), so a new option is fuzzed
the day it lands; values come from pools of valid and invalid values per option name, with a fallback per
type. Each example runs in this process with main()'s exception handling (cli_harness.run_inprocess) and
must end with exit 0, 1 or 2, no traceback, no internal error, and with exit 1 an ``error: ...`` line on
stderr, within EXAMPLE_TIMEOUT_S.

1,000 examples by default (CI); ``PLANNER_FUZZ_EXAMPLES=10000`` for the on-demand run; the examples are
the same every run unless ``PLANNER_FUZZ_SEED`` picks another seed. ``planner profile``
is fuzzed with ``--out`` fixed to an existing, non-empty directory and without ``--force``, so every
option is parsed and validated but no training starts; ``validate`` (a real profiling matrix) is left out.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_harness import run_inprocess
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from typer.main import get_command

from planner import catalog
from planner.cli.app import app
from planner.config_fields import FIELDS
from planner.errors import MAX_MESSAGE_CHARS

pytestmark = pytest.mark.slow

NUM_EXAMPLES = int(os.environ.get("PLANNER_FUZZ_EXAMPLES", "1000"))
# Derandomized (the same examples every run) unless PLANNER_FUZZ_SEED picks another seed.
FUZZ_SEED = int(os.environ["PLANNER_FUZZ_SEED"]) if os.environ.get("PLANNER_FUZZ_SEED") else None
EXAMPLE_TIMEOUT_S = 30  # a hang, not a slow answer: the bad-input corpus holds the 5 s bound
SKIP_COMMANDS = {"validate"}  # runs a matrix of real training profiles
PROFILE_FORBIDDEN = {"--out", "--force"}  # profile always gets --out <existing dir> and no --force

NAN, INF = "nan", "inf"
MODELS = ["gpt2", "llama-3.1-8b", "qwen2.5-0.5b", "mixtral-8x7b-v0.1", "llama-3.1-405b", "deepseek-v2-lite",
          "gemma-2-9b", "qwen3-30b-a3b", "phi-3-mini-4k", "no-such-model", "", " ", "org/not-cached",
          "{ws}/tiny", "{ws}/tiny/config.json", "{ws}/bad-config", "{ws}/auto-map", "{ws}/empty-dir",
          "{ws}/file.txt", "{ws}/missing/config.json", "../../etc/passwd", "-m"]  # fmt: skip
POOLS: dict[str, list[str]] = {
    "model": MODELS,
    "gpu": [*(g.name for g in catalog.gpus()[::4]), "t4-16gb", "auto", "no-such-gpu", "", "H100-SXM-80GB"],
    "gpus": ["1", "2", "3", "4", "8", "64", "0", "-1", "1024", "1000000000"],
    "nodes": ["1", "2", "3", "0", "-2", "8"],
    "method": ["full", "lora", "qlora", "auto", "FULL", "dpo", ""],
    "zero": ["0", "1", "2", "3", "4", "-1"],
    "offload": ["none", "optimizer", "optimizer+params", "params", "disk", ""],
    "precision": ["bf16-mixed", "fp16-mixed", "bf16", "fp32", "fp8", "BF16-MIXED", ""],
    "optimizer": ["adamw", "adamw-8bit", "paged-adamw", "paged-adamw-8bit", "sgd", "adafactor", "lion"],
    "lora_rank": ["1", "4", "16", "64", "0", "-1", "1000000"],
    "lora_alpha": ["1", "16", "32", "0", "-8"],
    "lora_dropout": ["0", "0.05", "0.5", "1.0", "-0.1", NAN],
    "lora_targets": ["all-linear", "q_proj,v_proj", "c_attn", "", ",", "bogus", "q_proj,,k_proj"],
    "modules_to_save": ["", "lm_head", "embed_tokens,lm_head", "bogus", ","],
    "quant_type": ["nf4", "fp4", "int4", "NF4"],
    "micro_batch": ["1", "2", "4", "0", "-1", "1000000"],
    "seq_len": ["1", "16", "128", "512", "1024", "2048", "4096", "131072", "0", "-5", "1000000000"],
    "grad_accum": ["1", "2", "8", "0", "-3"],
    "attn": ["eager", "sdpa", "flash_attention_2", "flash3", "SDPA", ""],
    "dropout": ["0", "0.1", "0.99", "1.0", "-1", NAN],
    "margin": ["0", "0.1", "0.5", "0.99", "1.0", "-0.1", NAN, INF],
    "mfu": ["0.1", "0.4", "1.0", "0", "1.5", NAN],
    "tokens": ["0", "1000000000", "1000000000000", "-1", "1" + "0" * 30],
    "price_per_gpu_hour": ["0", "2.5", "-1", INF, NAN],
    "global_batch_size": ["1", "2", "7", "8", "64", "512", "0", "-1", "10000000", "100000000"],
    "max_gpus": ["1", "2", "8", "64", "4096", "3", "0", "-1", "1000000", "1000000000"],
    "host_ram_gib": ["0", "64", "2048", "-1", NAN, INF, "1e10"],
    "runners_up": ["0", "4", "20", "21", "-1"],
    "steps": ["1", "3", "0", "-1"],
    "device": ["auto", "cpu", "cuda", "tpu", "CPU"],
    "seed": ["0", "1", "-1", "99999999999"],
    "fail_at": ["0:1:backward", "1:0:forward", "0:-1:build", "x", "0:1", "0:1:nowhere", ""],
    "weights": ["{ws}/tiny", "{ws}/empty-dir", "{ws}/missing", "{ws}/file.txt"],
    "data": ["{ws}/data.jsonl", "{ws}/missing.jsonl", "{ws}/empty-dir", "{ws}/file.txt"],
    "tokenizer": ["{ws}/empty-dir", "{ws}/missing"],
    "csv": ["rows.csv", "sub/missing/rows.csv", "{ws}/nonempty", "{ws}/empty-dir/rows.csv"],
    "output": ["r.html", "reports/r.html", "r.txt", "{ws}/nonempty", "R.HTM"],
    "profile": ["{ws}/profile", "{ws}/profile", "{ws}/profile-truncated", "{ws}/empty-dir", "{ws}/missing",
                "{ws}/file.txt", ""],  # fmt: skip
    "plan": ["{ws}/bundle", "{ws}/empty-dir", "{ws}/missing", "{ws}/file.txt", "{ws}/nonempty"],
    "accuracy": ["{ws}/accuracy.csv", "{ws}/file.txt", "{ws}/missing.csv", "{ws}/empty-dir"],
    "title": ["", "A report", "<script>alert(1)</script>", "ünïcødé ✓", "$(touch pwned)", "x" * 500],
    "max_points": ["100", "1200", "10", "0", "-1", "1000000"],
    "out": ["bundle-a", "bundle-b", "{ws}/nonempty", "{ws}/file.txt", "{ws}/empty-dir", "dir with space/b"],
}
BY_TYPE = {
    "int": ["0", "1", "-1", "7", "1000000000000", "x"],
    "float": ["0", "0.5", "1", "-1", NAN, INF, "x"],
    "str": ["", "x", "bogus", "-", "--"],
    "Path": ["x", "{ws}/missing", "{ws}/empty-dir", "{ws}/file.txt"],
}
NOISE = ["--bogus", "extra", "-z", "--", "--json", "--help", "-m", "=", "--gpus=2", "--zero=1", "ü"]


def _grammar() -> dict[str, list[dict]]:
    group = get_command(app)
    grammar = {}
    for name, cmd in sorted(group.commands.items()):
        if name in SKIP_COMMANDS:
            continue
        params = []
        for p in cmd.params:
            kind = p.bare_type() if callable(getattr(p, "bare_type", None)) else "str"
            is_option = getattr(p, "param_type_name", "option") == "option"
            params.append({
                "name": p.name, "opts": list(p.opts) if is_option else [], "secondary": list(getattr(p, "secondary_opts", [])),
                "flag": bool(getattr(p, "is_flag", False)), "required": bool(p.required), "kind": str(kind),
                "multiple": bool(getattr(p, "multiple", False)),
            })  # fmt: skip
        grammar[name] = params
    return grammar


GRAMMAR = _grammar()


def _values(param: dict) -> list[str]:
    if param["name"] in POOLS:
        return POOLS[param["name"]]
    kind = param["kind"].replace("list[", "").rstrip("]").replace(" | None", "")
    return BY_TYPE.get(kind, BY_TYPE["str"])


@st.composite
def invocations(draw) -> list[str]:
    command = draw(st.sampled_from(sorted(GRAMMAR)))
    args: list[str] = [command]
    params = draw(st.permutations(GRAMMAR[command]))
    for p in params:
        if command == "profile" and set(p["opts"]) & PROFILE_FORBIDDEN:
            continue
        # Hypothesis shrinks integers towards 0: 0 means "leave the option out", so failures shrink short.
        keep = draw(st.integers(0, 99))
        if not (keep >= 5 if p["required"] else keep >= 75):
            continue
        repeats = 1 + (draw(st.integers(0, 9)) >= 8)  # sometimes the same option twice
        for _ in range(repeats):
            if p["flag"]:
                args.append(draw(st.sampled_from(p["opts"] + p["secondary"])))
                continue
            value = draw(st.sampled_from(_values(p)))
            if not p["opts"]:  # an argument
                args.append(value)
                continue
            flag = draw(st.sampled_from(p["opts"]))
            if draw(st.integers(0, 9)) >= 9 and flag.startswith("--"):
                args.append(f"{flag}={value}")
            else:
                args.extend([flag, value])
    if command == "profile":
        args.extend(["--out", "{ws}/nonempty"])
    if draw(st.integers(0, 9)) >= 9:
        args.insert(draw(st.integers(1, len(args))), draw(st.sampled_from(NOISE)))
    return args


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Inputs the pools refer to as {ws}: a tiny model, bad configs, a synthetic profile, a bundle."""
    from report_synth import synthetic_timeline, write_profile_dir

    ws = tmp_path_factory.mktemp("fuzz")
    tiny = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 256}  # fmt: skip
    for name, cfg in (("tiny", tiny), ("auto-map", {**tiny, "auto_map": {"AutoModel": "x.Y"}})):
        (ws / name).mkdir()
        (ws / name / "config.json").write_text(json.dumps(cfg))
    (ws / "bad-config").mkdir()
    (ws / "bad-config" / "config.json").write_text('{"model_type": "llama", "hidden_size": "big"')
    (ws / "empty-dir").mkdir()
    (ws / "nonempty").mkdir()
    (ws / "nonempty" / "keep.txt").write_text("the user's file\n")
    (ws / "file.txt").write_text("plain text\n")
    (ws / "data.jsonl").write_text('{"text": "hello world"}\n' * 4)
    (ws / "accuracy.csv").write_text("cell,method,signed_error\na,full,0.01\nb,lora,-0.02\n")
    write_profile_dir(ws / "profile", synthetic_timeline(1, 3, seed=1))
    write_profile_dir(ws / "profile-truncated", synthetic_timeline(2, 3, seed=2))
    tl = ws / "profile-truncated" / "timeline.parquet"
    tl.write_bytes(tl.read_bytes()[: tl.stat().st_size // 2])
    res = run_inprocess(["recommend", "-m", str(ws / "tiny"), "-g", "4", "-s", "64",
                         "--out", str(ws / "bundle")])  # fmt: skip
    assert res.code == 0, res.stderr + res.internal
    return ws


class ExampleTimeout(BaseException):
    """Raised by SIGALRM inside a hanging example (a BaseException, so no `except Exception` swallows it)."""


def _alarm(signum, frame):
    raise ExampleTimeout()


STATS: Counter = Counter()
SECONDS: Counter = Counter()  # wall seconds per command
SLOWEST: list[tuple[float, str]] = []


def _record(args: list[str], code: int | None, wall: float) -> None:
    STATS[f"{args[0]} exit {code}"] += 1
    STATS["examples"] += 1
    SECONDS[args[0]] += wall
    SLOWEST.append((wall, " ".join(args)))
    SLOWEST.sort(reverse=True)
    del SLOWEST[5:]


# Known defects, each reported in reports/reliability.md with its owner: (a regular expression matched against
# the failure text, the defect). Examples that hit them are counted, not failed; delete an entry when fixed.
KNOWN_BUGS: list[tuple[str, str]] = []  # none open (a path-like --model reaching huggingface_hub: fixed)
FAILURES: dict[str, list[str]] = {}  # signature -> example invocations
KNOWN_HITS: Counter = Counter()


def _signature(text: str) -> str:
    """The last line of a traceback (exception type and message, numbers dropped) identifies a defect."""
    last = [line for line in text.strip().splitlines() if line.strip()][-1:] or ["?"]
    return re.sub(r"\d+", "N", last[0])[:200]


def _fail(shown: str, text: str) -> None:
    for pattern, bug in KNOWN_BUGS:
        if re.search(pattern, text):
            KNOWN_HITS[bug] += 1
            return
    FAILURES.setdefault(_signature(text), []).append(f"{shown}\n{text[-3000:]}")


@settings(max_examples=NUM_EXAMPLES, deadline=None, database=None, derandomize=FUZZ_SEED is None,
          phases=[Phase.explicit, Phase.generate],  # every failure is collected below; nothing to shrink
          suppress_health_check=list(HealthCheck))  # fmt: skip
@seed(FUZZ_SEED or 0)
@given(invocations())
def _fuzz(ws: Path, args: list[str]) -> None:
    args = [a.replace("{ws}", str(ws)) for a in args]
    shown = "planner " + " ".join(shlex.quote(a) for a in args)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, EXAMPLE_TIMEOUT_S)
    started = time.monotonic()
    try:
        res = run_inprocess(args)
    except ExampleTimeout:
        _record(args, None, time.monotonic() - started)
        _fail(shown, f"ran longer than {EXAMPLE_TIMEOUT_S} s")
        return
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    _record(args, res.code, time.monotonic() - started)
    if res.internal:
        _fail(shown, res.internal)
    elif res.code not in (0, 1, 2):
        _fail(shown, f"exit code {res.code}: {res.stderr}")
    elif res.has_traceback:
        _fail(shown, f"traceback in the output: {res.stderr}")
    elif res.code == 1 and not any(line.startswith("error: ") for line in res.stderr.splitlines()):
        _fail(shown, f"exit 1 without an 'error: ' line: {res.stderr!r}")


def test_cli_fuzz(workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative outputs (r.html, bundle-a, profiles/...) land here
    monkeypatch.setenv("COLUMNS", "120")
    STATS.clear()
    SECONDS.clear()
    FAILURES.clear()
    KNOWN_HITS.clear()
    started = time.monotonic()
    try:
        _fuzz(workspace)
    finally:
        _write_results(time.monotonic() - started)
    for bug, hits in KNOWN_HITS.items():
        warnings.warn(f"known defect hit {hits} times: {bug}", stacklevel=1)
    report = "\n\n".join(f"{sig} ({len(ex)} examples), e.g.\n{ex[0]}" for sig, ex in FAILURES.items())
    assert not FAILURES, f"{len(FAILURES)} distinct failures:\n{report}"
    assert STATS["examples"] >= NUM_EXAMPLES
    if NUM_EXAMPLES < 300:
        return  # a quick local run; the checks below need a few hundred examples
    # The generator must reach every command and all three outcomes, or it is not testing much.
    commands = {k.split()[0] for k in STATS if " exit " in k}
    assert commands == set(GRAMMAR)
    for code in (0, 1, 2):
        assert sum(v for k, v in STATS.items() if k.endswith(f"exit {code}")) > 0, f"no example exited {code}"


def _write_results(wall_s: float) -> None:
    out = os.environ.get("PLANNER_RELIABILITY_DIR")
    if not out:
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    data = {"examples": STATS["examples"], "requested": NUM_EXAMPLES, "wall_s": round(wall_s, 1),
            "by_outcome": {k: v for k, v in sorted(STATS.items()) if k != "examples"},
            "seconds_by_command": {k: round(v, 1) for k, v in sorted(SECONDS.items())},
            "slowest": [{"s": round(s, 2), "args": a} for s, a in SLOWEST],
            "failures": {sig: {"count": len(ex), "example": ex[0][:1500]} for sig, ex in FAILURES.items()},
            "known_bugs_hit": dict(KNOWN_HITS)}  # fmt: skip
    (Path(out) / "fuzz.json").write_text(json.dumps(data, indent=1, sort_keys=True))


def test_grammar_covers_every_command_and_option():
    """Every registered command (but validate) is fuzzed, and every one of its options has values."""
    group = get_command(app)
    assert set(GRAMMAR) == set(group.commands) - SKIP_COMMANDS
    for command, params in GRAMMAR.items():
        for p in params:
            assert p["flag"] or _values(p), (command, p["name"])


# ====================================================================================== issue 14: estimate fuzz
#
# A seeded fuzz of `planner estimate` alone, at the depth of its numbers: random flags (typed as the CLI types
# them, with edgy and invalid values) and random mutations of real configs (every field planner reads, from
# planner/config_fields.FIELDS, set to edge or invalid values, deleted, or the family switched). Every case must
# exit 0 or 1 without a traceback; exit 1 prints one capped "error: ..." line; exit 0 prints JSON whose bytes
# are non-negative ints, whose totals are the sum of the categories and whose "fits" agrees with the device
# peak and the capacity after the margin. Every estimate finishes in under 2 s and 500 MB: in this process for
# the bulk (time per case; tracemalloc's peak for every TRACED_EVERY-th case, re-run), and as a real
# `python -m planner` process for a sample (wall time and the child's own max RSS from wait4).
# PLANNER_ESTIMATE_FUZZ sets the number of cases (default 1000), PLANNER_ESTIMATE_FUZZ_SEED the seed.

ESTIMATE_FUZZ_N = int(os.environ.get("PLANNER_ESTIMATE_FUZZ", "1000"))
ESTIMATE_FUZZ_SEED = int(os.environ.get("PLANNER_ESTIMATE_FUZZ_SEED", "14"))
MAX_ESTIMATE_S = 2.0  # issue 14: every estimate of the fuzz finishes in under 2 s ...
MAX_ESTIMATE_BYTES = 500 * 10**6  # ... and 500 MB
TRACED_EVERY = 10  # every 10th case runs again under tracemalloc for its peak
SUBPROCESS_EVERY = 40  # every 40th case also runs as a real process (25 of 1000)
REPO = Path(__file__).resolve().parent.parent

FUZZ_BASES = ("llama-3.2-1b", "qwen2.5-0.5b", "gpt2", "mixtral-8x7b-v0.1", "qwen3-30b-a3b", "deepseek-v2-lite",
              "gemma-2-9b", "phi-3-mini-4k", "qwen3-8b", "llama-3.1-8b")  # fmt: skip
# Realistic-but-edgy ceilings for valid sizes (the item-5 sizes, 20,000+ layers or 10^6 GPUs, have their own
# test below).
REALISTIC_MAX = {"num_hidden_layers": 160, "n_layer": 160, "hidden_size": 16384, "n_embd": 16384,
                 "vocab_size": 262_144, "max_position_embeddings": 1_048_576, "n_positions": 32_768,
                 "num_local_experts": 256, "num_experts": 256, "n_routed_experts": 256}  # fmt: skip
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3", "gpt2", "mixtral", "qwen3_moe", "deepseek_v2")
CATEGORIES = ("params_bytes", "grads_bytes", "optimizer_states_bytes", "activations_bytes", "temporaries_bytes",
              "overhead_bytes")  # fmt: skip


def _edge_values(key: str, value, rng: random.Random) -> tuple[list, list]:
    """(edge values that are valid, invalid values) for a config field, by the kind planner.config_fields gives
    it."""
    f = FIELDS[key]
    bad = ["x", True, [], {"a": 1}] + ([] if f.nullable else [None])
    if f.kind == "int":
        top = min(f.maximum, REALISTIC_MAX.get(key, 4096))
        good = [f.minimum, f.minimum + 1, 2, 3, 7, 64, top] + ([None] if f.nullable else [])
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            good += [max(f.minimum, value // 2), min(top, value * 2), min(top, value + 1)]
        return good, [f.minimum - 1, -1, 1.5, float(max(value or 1, 1)), 10**30, *bad]
    if f.kind == "prob":
        return [0.0, 0.1, 0.5, 0.999, None], [1.0, -0.1, 2, float("nan"), *bad]
    if f.kind == "flag":
        return [True, False, None], ["x", 1, 0]
    if f.kind == "positive":
        return [50.0, 30.0, 1.0, 0.001, None], [0, -1, "x", float("inf")]
    if f.kind == "int_list":
        return [[], [0], [0, 1, 2], [1, 3], None], ["x", [1.5], [-1], [10**9]]
    if f.kind == "name_list":
        n = rng.randint(1, 8)
        return [["full_attention"] * n, ["sliding_attention", "full_attention"] * n, None], ["x", [1]]
    if key == "model_type":
        return list(FAMILIES) + ["starcoder2"], ["mamba", "no_such_type", "", "x" * 300, 5]
    return ["silu", "gelu", "gelu_new", "relu", "gelu_pytorch_tanh"], ["", 5, "x" * 300]


def _mutate(cfg: dict, rng: random.Random) -> tuple[dict, str]:
    """0-3 mutations of ``cfg``; returns the new config and what was done (for the failure report)."""
    cfg = dict(cfg)
    cfg.pop("auto_map", None)  # deepseek-v2-lite asks for remote code; added back on purpose below
    done = []
    for _ in range(rng.choice((0, 1, 1, 1, 2, 3))):
        roll = rng.random()
        if roll < 0.70:
            key = rng.choice(sorted(FIELDS))
            good, bad = _edge_values(key, cfg.get(key), rng)
            value = rng.choice(bad if rng.random() < 0.3 else good)
            cfg[key] = value
            done.append(f"{key}={value!r:.40}")
        elif roll < 0.80:
            optional = sorted(k for k in cfg if k in FIELDS and FIELDS[k].nullable)
            present = optional if rng.random() < 0.8 else sorted(k for k in cfg if k in FIELDS)
            if present:
                key = rng.choice(present)
                del cfg[key]
                done.append(f"del {key}")
        elif roll < 0.90:
            key = rng.choice(("num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size"))
            if isinstance(cfg.get(key), int):
                cfg[key] = max(1, min(REALISTIC_MAX.get(key, 65536), int(cfg[key] * rng.choice((0.25, 0.5, 2, 3)))))
                done.append(f"{key}*={cfg[key]}")
        elif roll < 0.97:
            cfg = {"text_config": cfg, "architectures": ["X"]}
            done.append("text_config")
        else:
            cfg["auto_map"] = {"AutoModelForCausalLM": "x.Y"}
            done.append("auto_map")
    return cfg, ", ".join(done)


# Per flag: (values a user would pass, edge and invalid values). Values are typed as the CLI types them, so
# every case parses (exit 2 would be a fuzz failure); a bad value is drawn with P_BAD.
_CHOICES = {
    "--gpus": ([1, 2, 4, 8, 16, 64, 256, 4096, 3, 6], [0, -1]),
    "--nodes": ([1, 2, 4], [3, 0]),
    "--method": (["full", "lora", "qlora"], ["dpo"]),
    "--zero": ([0, 1, 2, 3], [4, -1]),
    "--offload": (["none", "none", "optimizer", "optimizer+params"], ["disk"]),
    "--precision": (["bf16-mixed", "fp16-mixed", "bf16", "fp32"], ["fp8"]),
    "--optimizer": (["adamw", "adamw-8bit", "paged-adamw", "paged-adamw-8bit", "sgd", "adafactor"], ["lion"]),
    "--lora-rank": ([1, 8, 16, 64, 256], [0, -1]),
    "--lora-alpha": ([1, 16, 32], [0, -8]),
    "--lora-dropout": ([0.0, 0.05, 0.5], [1.0, "nan"]),
    "--lora-targets": (["all-linear", "q_proj,v_proj", "c_attn", "lm_head", "embed_tokens"], ["bogus", ","]),
    "--modules-to-save": (["", "lm_head", "embed_tokens,lm_head"], ["bogus"]),
    "--quant-type": (["nf4", "fp4"], ["int4"]),
    "--micro-batch": ([1, 2, 4, 8, 64], [0, -1]),
    "--seq-len": ([1, 16, 128, 512, 1024, 2048, 4096, 32768], [0, -5]),
    "--grad-accum": ([1, 2, 8], [0]),
    "--attn": (["sdpa", "eager", "flash_attention_2"], ["flash3"]),
    "--dropout": ([0.0, 0.1, 0.99], [1.0, -1.0, "nan"]),
    "--margin": ([0.0, 0.1, 0.5, 0.99], [1.0, -0.1, "nan"]),
    "--mfu": ([0.1, 0.4, 1.0, 0.001], [0.0005, 1.5, "nan"]),
    "--tokens": (["0", "2B", "1e9", "500M", "1.5T", "20k", "1e21"], ["x", "-1", "1e30", "2.5"]),
    "--price-per-gpu-hour": ([0.0, 2.5, 3.99, 1e6], [-1.0, 1e12, "inf"]),
    "--gpu": (["h100-sxm-80gb", "a100-sxm-40gb", "t4-16gb", "rtx-4090-24gb", "mi300x-192gb", "b200-hgx-180gb"],
              ["bogus"]),
}
P_BAD = 0.06
VALID_LAYOUTS = [(m, z, o) for m in ("full", "lora", "qlora") for z in (0, 1, 2, 3)
                 for o in ("none", "optimizer", "optimizer+params")
                 if not (o != "none" and z == 0) and not (o == "optimizer+params" and z != 3)
                 and not (m == "qlora" and z == 3)]  # fmt: skip
_OPTIONAL = {"--nodes": 0.2, "--precision": 0.25, "--optimizer": 0.15, "--lora-rank": 0.2, "--lora-alpha": 0.15,
             "--lora-dropout": 0.2, "--lora-targets": 0.15, "--modules-to-save": 0.08, "--quant-type": 0.15,
             "--micro-batch": 0.4, "--seq-len": 0.6, "--grad-accum": 0.2, "--attn": 0.2, "--dropout": 0.1,
             "--margin": 0.25, "--mfu": 0.2, "--tokens": 0.5, "--price-per-gpu-hour": 0.3, "--gpu": 0.3}  # fmt: skip


def _value(flag: str, rng: random.Random) -> str:
    good, bad = _CHOICES[flag]
    return str(rng.choice(bad if rng.random() < P_BAD else good))


@dataclass
class EstimateCase:
    index: int
    args: list[str]
    mutation: str = ""
    config: dict | None = None
    config_text: str | None = None  # written as is (malformed JSON)
    compare: bool = False
    json_out: bool = True

    def shown(self, path: str = "CONFIG") -> str:
        return "planner " + " ".join(shlex.quote(a.replace("{cfg}", path)) for a in self.args)


def estimate_cases(n: int, seed: int) -> list[EstimateCase]:
    """The fuzz cases, the same for the same seed."""
    rng = random.Random(seed)
    configs = {name: catalog.model_config(name) for name in FUZZ_BASES}
    cases = []
    for i in range(n):
        case = EstimateCase(i, ["estimate"])
        roll = rng.random()
        if roll < 0.72:
            base = rng.choice(FUZZ_BASES)
            case.config, case.mutation = _mutate(configs[base], rng)
            case.mutation = f"{base}: {case.mutation or 'as is'}"
            case.args += ["-m", "{cfg}"]
        elif roll < 0.74:
            case.config_text = json.dumps(configs[rng.choice(FUZZ_BASES)])[: rng.randint(0, 200)]
            case.mutation = "truncated JSON"
            case.args += ["-m", "{cfg}"]
        else:
            case.args += ["-m", rng.choice(FUZZ_BASES)]
        case.compare = rng.random() < 0.03
        if case.compare:  # the comparison searches every GPU: small models only, as a user would start
            case.args[1:3] = ["-m", rng.choice(("gpt2", "qwen2.5-0.5b", "llama-3.2-1b"))]
            case.config = case.config_text = None
            case.mutation = ""
            case.args.append("--compare-gpus")
        else:
            case.args += ["--gpus", _value("--gpus", rng)]
            if rng.random() < 0.75:  # one row (what a user asks once they know the layout); else several
                if rng.random() < 0.85:  # a layout TrainSpec accepts; else any three values
                    method, zero, offload = rng.choice(VALID_LAYOUTS)
                    case.args += ["--method", method, "--zero", str(zero), "--offload", offload]
                else:
                    for flag in ("--method", "--zero", "--offload"):
                        case.args += [flag, _value(flag, rng)]
            else:
                for flag in ("--method", "--zero", "--offload"):
                    if rng.random() < 0.3:
                        case.args += [flag, _value(flag, rng)]
        for flag, p in _OPTIONAL.items():
            if rng.random() < p and not (case.compare and flag in ("--gpu", "--nodes")):
                case.args += [flag, _value(flag, rng)]
        for flag, p in (("--grad-checkpointing", 0.2), ("--no-double-quant", 0.05), ("--allow-longer", 0.05),
                        ("--trust-remote-code", 0.05)):  # fmt: skip
            if rng.random() < p:
                case.args.append(flag)
        case.json_out = rng.random() < 0.9
        if case.json_out:
            case.args.append("--json")
        cases.append(case)
    return cases


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite_non_negative(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def check_estimate_json(payload: dict) -> list[str]:
    """The invariants of `planner estimate --json` (one message per broken one)."""
    out = []
    # fits checks the CUDA-visible capacity (the nominal size where the catalog has none) and, with --host-ram,
    # the host RAM per node
    capacity = payload["gpu"]["usable_memory_bytes"] or payload["gpu"]["memory_bytes"]
    margin = payload["margin"]
    usable = int(capacity * (1.0 - margin))
    if not (_is_int(payload["model"]["num_params"]) and payload["model"]["num_params"] > 0):
        out.append(f"model num_params {payload['model']['num_params']!r}")
    for r in payload["rows"]:
        tag = f"{r['method']}/ZeRO-{r['zero_stage']}/{r['offload']}"
        pg = r["per_gpu"]
        for key in (*CATEGORIES, "total_bytes"):
            if not (_is_int(pg[key]) and pg[key] >= 0):
                out.append(f"{tag}: per_gpu.{key} = {pg[key]!r}")
        if sum(pg[c] for c in CATEGORIES) != pg["total_bytes"]:
            out.append(f"{tag}: total_bytes {pg['total_bytes']} != sum of categories {sum(pg[c] for c in CATEGORIES)}")
        for key in ("reserved_bytes", "device_bytes", "cpu_bytes_per_node", "num_params", "num_trainable_params"):
            if not (_is_int(r[key]) and r[key] >= 0):
                out.append(f"{tag}: {key} = {r[key]!r}")
        if not (r["device_bytes"] >= r["reserved_bytes"] >= pg["total_bytes"]):
            out.append(f"{tag}: device {r['device_bytes']} >= reserved {r['reserved_bytes']} >= allocated "
                       f"{pg['total_bytes']} does not hold")  # fmt: skip
        if r["fits"] != (r["device_bytes"] <= usable and r["host_fits"] is not False):
            out.append(f"{tag}: fits={r['fits']} but device {r['device_bytes']} vs usable {usable}")
        if r["headroom_bytes"] != usable - r["device_bytes"]:
            out.append(f"{tag}: headroom {r['headroom_bytes']} != usable {usable} - device {r['device_bytes']}")
        for key in ("max_micro_batch", "max_seq_len"):
            if key in r and not (_is_int(r[key]) and r[key] >= 0):
                out.append(f"{tag}: {key} = {r[key]!r}")
        th = r.get("throughput") or {}
        for key, v in th.items():
            if key == "step":
                out += _check_step(tag, v, th.get("step_time_s"))
            elif not _finite_non_negative(v):
                out.append(f"{tag}: throughput.{key} = {v!r}")
    return out


STEP_PARTS = ("matmul_s", "attention_s", "elementwise_s", "dequant_s", "optimizer_s", "exposed_communication_s",
              "offload_transfer_s", "cpu_optimizer_s")


def _check_step(tag: str, step, step_time_s) -> list[str]:
    """The step breakdown: finite non-negative seconds whose parts add up to the step time."""
    if not isinstance(step, dict) or step.get("time_model") not in ("per-phase", "mfu"):
        return [f"{tag}: throughput.step = {step!r}"]
    out = [f"{tag}: throughput.step.{k} = {v!r}" for k, v in step.items()
           if k != "time_model" and not _finite_non_negative(v)]
    if not out and step_time_s is not None and not math.isclose(sum(step[k] for k in STEP_PARTS), step_time_s,
                                                                 rel_tol=1e-9, abs_tol=1e-12):
        out.append(f"{tag}: the step's parts add up to {sum(step[k] for k in STEP_PARTS)!r}, not {step_time_s!r}")
    return out


def check_compare_json(payload: dict, margin: float) -> list[str]:
    out = []
    for r in payload["rows"]:
        tag = f"{r['gpu']}/{r['method']}"
        if not r["fits"]:
            continue
        usable = int(r["capacity_bytes"] * (1.0 - margin))
        for key in ("device_bytes", "num_gpus", "min_gpus", "num_nodes"):
            if not (_is_int(r[key]) and r[key] >= 0):
                out.append(f"{tag}: {key} = {r[key]!r}")
        if r["device_bytes"] > usable or r["headroom_bytes"] != usable - r["device_bytes"]:
            out.append(f"{tag}: fits but device {r['device_bytes']} vs usable {usable}, headroom {r['headroom_bytes']}")
        if not 1 <= r["min_gpus"] <= r["num_gpus"]:
            out.append(f"{tag}: min_gpus {r['min_gpus']} vs num_gpus {r['num_gpus']}")
        for key in ("tokens_per_s_per_gpu", "time_s", "gpu_hours", "cost"):
            if not _finite_non_negative(r[key]):
                out.append(f"{tag}: {key} = {r[key]!r}")
    return out


def check_outcome(case: EstimateCase, code, stdout: str, stderr: str, internal: str = "") -> list[str]:
    """Everything a case must satisfy apart from time and memory."""
    text = stdout + stderr
    if internal:
        return [f"internal error: {internal.strip().splitlines()[-1][:300]}"]
    if code not in (0, 1):
        return [f"exit code {code}: {stderr.strip()[-300:]}"]
    if "Traceback (most recent call last)" in text or "internal error" in stderr:
        return [f"traceback or internal error: {stderr.strip()[-300:]}"]
    if code == 1:
        lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("[transformers]")]
        if len(lines) != 1 or not lines[0].startswith("error: "):
            return [f"exit 1 without exactly one 'error: ' line: {[line[:200] for line in lines[:4]]}"]
        if len(lines[0]) > len("error: ") + MAX_MESSAGE_CHARS:
            return [f"error line of {len(lines[0])} characters"]
        return []
    if not case.json_out:
        return []
    try:
        payload = json.loads(stdout)
    except json.JSONDecodeError as exc:  # NaN/Infinity are refused too (json_text uses allow_nan=False)
        return [f"stdout is not JSON ({exc.msg})"]
    if case.compare:
        margin = float(case.args[case.args.index("--margin") + 1]) if "--margin" in case.args else 0.1
        return check_compare_json(payload, margin)
    return check_estimate_json(payload)


@dataclass
class FuzzLog:
    outcomes: Counter = field(default_factory=Counter)
    wall: list = field(default_factory=list)  # (seconds, case index)
    traced: list = field(default_factory=list)  # (peak bytes, case index)
    meta: list = field(default_factory=list)  # (seconds, case index) of cases through the meta-device fallback
    process: list = field(default_factory=list)  # (seconds, max RSS bytes, case index)
    failures: dict = field(default_factory=dict)  # problem -> [shown invocations]

    def fail(self, case: EstimateCase, problem: str, path: str) -> None:
        key = re.sub(r"\d+", "N", problem)[:160]
        self.failures.setdefault(key, []).append(f"{case.shown(path)}  [{case.mutation}]  -> {problem[:400]}")


ANALYTICAL = set(FAMILIES)  # families planner counts itself; any other type goes through the meta-device fallback


def uses_meta_fallback(case: EstimateCase) -> bool:
    """Whether the case's model type is counted by instantiating transformers on the meta device (slow: see
    test_estimate_meta_fallback_is_fast)."""
    cfg = case.config
    if not isinstance(cfg, dict):
        return False
    if "text_config" in cfg and "hidden_size" not in cfg and isinstance(cfg["text_config"], dict):
        cfg = cfg["text_config"]
    mt = cfg.get("model_type")
    return isinstance(mt, str) and bool(mt) and len(mt) <= 200 and mt not in ANALYTICAL and mt != "mamba"


def _write_case_config(case: EstimateCase, root: Path) -> str:
    path = root / f"case-{case.index}" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if case.config_text is not None:
        path.write_text(case.config_text)
    elif case.config is not None:
        path.write_text(json.dumps(case.config, allow_nan=True))
    return str(path.parent)


def _run_timed(args: list[str]):
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, EXAMPLE_TIMEOUT_S)
    started = time.perf_counter()
    try:
        res = run_inprocess(args)
    except ExampleTimeout:
        return None, time.perf_counter() - started
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return res, time.perf_counter() - started


# Runs planner's entry point and, at exit, writes the process's own peak RSS (VmHWM, which exec resets) to the
# file named by PLANNER_FUZZ_HWM: wait4's ru_maxrss would also count the test process it was forked from.
_HWM_RUNNER = """
import atexit, os, sys
def _hwm():
    with open("/proc/self/status") as f:
        kib = next((int(l.split()[1]) for l in f if l.startswith("VmHWM:")), 0)
    with open(os.environ["PLANNER_FUZZ_HWM"], "w") as f:
        f.write(str(kib * 1024))
atexit.register(_hwm)
sys.argv = ["planner", *sys.argv[1:]]
from planner.cli.app import main
main()
"""


def run_subprocess(args: list[str], cwd: Path, timeout_s: float):
    """``planner ARGS`` as a real Python process: (exit code or None when killed, stdout, stderr, wall seconds,
    the process's own peak RSS in bytes)."""
    with tempfile.TemporaryDirectory() as tmp:
        hwm = Path(tmp) / "hwm"
        env = {**os.environ, "COLUMNS": "120", "HF_HUB_OFFLINE": "1", "PLANNER_FUZZ_HWM": str(hwm)}
        started = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-c", _HWM_RUNNER, *args], capture_output=True, text=True,
                                  cwd=cwd, env=env, timeout=timeout_s)  # fmt: skip
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            code, out, err = None, str(exc.stdout or ""), str(exc.stderr or "")
        wall = time.perf_counter() - started
        rss = int(hwm.read_text()) if hwm.exists() else 0
        return code, out, err, wall, rss


@pytest.fixture(scope="module")
def warm_estimator(tmp_path_factory):
    """Import what the estimate may import lazily (the meta-device fallback's torch, transformers and the one
    modeling module the fuzz reaches, starcoder2's), so the in-process timings measure the command, not the
    imports; the subprocess sample measures everything."""
    import importlib

    for name in ("torch", "transformers", "pandas", "planner.meta", "planner.estimate.core", "planner.cli.render"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    run_inprocess(["estimate", "-m", "gpt2", "-s", "128", "--json"])
    unknown = tmp_path_factory.mktemp("warm") / "config.json"
    unknown.write_text(json.dumps({**catalog.model_config("llama-3.2-1b"), "model_type": "starcoder2"}))
    run_inprocess(["estimate", "-m", str(unknown.parent), "-s", "128", "--json"])


def test_estimate_fuzz(tmp_path, monkeypatch, warm_estimator):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "120")
    cases = estimate_cases(ESTIMATE_FUZZ_N, ESTIMATE_FUZZ_SEED)
    log = FuzzLog()
    started = time.perf_counter()
    for case in cases:
        path = _write_case_config(case, tmp_path) if (case.config is not None or case.config_text) else ""
        args = [a.replace("{cfg}", path) for a in case.args]
        res, wall = _run_timed(args)
        if res is None:
            log.fail(case, f"ran longer than {EXAMPLE_TIMEOUT_S} s", path)
            continue
        if wall > MAX_ESTIMATE_S:  # a busy neighbour on a 2-core box: the better of two runs counts
            again, wall2 = _run_timed(args)
            wall = min(wall, wall2) if again is not None else wall
        meta = uses_meta_fallback(case)
        log.wall.append((wall, case.index))
        if meta:  # in process (imports warm) held to the bound like the rest; a fresh process: see
            log.meta.append((wall, case.index))  # test_estimate_meta_fallback_is_fast
        log.outcomes[f"exit {res.code}"] += 1
        log.outcomes["compare-gpus" if case.compare else "estimate"] += 1
        for problem in check_outcome(case, res.code, res.stdout, res.stderr, res.internal):
            log.fail(case, problem, path)
        if wall > MAX_ESTIMATE_S:
            log.fail(case, f"took {wall:.2f} s (> {MAX_ESTIMATE_S} s)", path)
        if case.index % TRACED_EVERY == 0:
            tracemalloc.start(1)
            try:
                run_inprocess(args)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            log.traced.append((peak, case.index))
            if peak > MAX_ESTIMATE_BYTES:
                log.fail(case, f"allocated {peak / 1e6:.0f} MB at its peak (> {MAX_ESTIMATE_BYTES / 1e6:.0f} MB)", path)
        if case.index % SUBPROCESS_EVERY == 0 and not meta:
            code, out, err, pwall, rss = run_subprocess(args, tmp_path, EXAMPLE_TIMEOUT_S)
            if pwall > MAX_ESTIMATE_S:  # as above: the better of two runs
                code, out, err, pwall2, rss = run_subprocess(args, tmp_path, EXAMPLE_TIMEOUT_S)
                pwall = min(pwall, pwall2)
            log.process.append((pwall, rss, case.index))
            for problem in check_outcome(case, code, out, err):
                log.fail(case, f"as a process: {problem}", path)
            if pwall > MAX_ESTIMATE_S or rss > MAX_ESTIMATE_BYTES:
                log.fail(case, f"as a process: {pwall:.2f} s, max RSS {rss / 1e6:.0f} MB", path)
    total_s = time.perf_counter() - started
    summary = _fuzz_summary(log, total_s)
    print("\n" + json.dumps(summary, indent=1))
    _write_fuzz_json("estimate_fuzz.json", {**summary, "failures": {k: v[:3] for k, v in log.failures.items()}})
    report = "\n\n".join(f"{k} ({len(v)} cases), e.g.\n  " + "\n  ".join(v[:2]) for k, v in log.failures.items())
    assert not log.failures, f"{sum(map(len, log.failures.values()))} failing cases, {len(log.failures)} kinds:\n{report}"
    assert len(log.wall) == ESTIMATE_FUZZ_N
    if ESTIMATE_FUZZ_N >= 300:  # the generator must reach both outcomes and both commands
        assert log.outcomes["exit 0"] > ESTIMATE_FUZZ_N // 3 and log.outcomes["exit 1"] > ESTIMATE_FUZZ_N // 10
        assert log.outcomes["compare-gpus"] > 0 and len(log.process) >= ESTIMATE_FUZZ_N // SUBPROCESS_EVERY


def _fuzz_summary(log: FuzzLog, total_s: float) -> dict:
    walls = sorted(w for w, _ in log.wall)
    pick = (lambda q: round(walls[min(len(walls) - 1, int(q * len(walls)))], 3)) if walls else (lambda q: None)
    return {
        "cases": len(log.wall), "seed": ESTIMATE_FUZZ_SEED, "total_s": round(total_s, 1),
        "outcomes": dict(sorted(log.outcomes.items())),
        "in_process_s": {"median": pick(0.5), "p95": pick(0.95), "max": pick(1.0)},
        "slowest": [{"s": round(w, 2), "case": i} for w, i in sorted(log.wall, reverse=True)[:5]],
        "meta_fallback_cases": len(log.meta),
        "meta_fallback_s_max": round(max((w for w, _ in log.meta), default=0), 2),
        "traced_cases": len(log.traced),
        "traced_peak_mb_max": round(max((p for p, _ in log.traced), default=0) / 1e6, 1),
        "process_cases": len(log.process),
        "process_s_max": round(max((w for w, _, _ in log.process), default=0), 2),
        "process_rss_mb_max": round(max((r for _, r, _ in log.process), default=0) / 1e6, 1),
        "failing_cases": sum(map(len, log.failures.values())),
    }  # fmt: skip


def _write_fuzz_json(name: str, data: dict) -> None:
    out = os.environ.get("PLANNER_RELIABILITY_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / name).write_text(json.dumps(data, indent=1, sort_keys=True))


def test_estimate_cases_are_seeded():
    a = [c.args for c in estimate_cases(50, 3)]
    assert a == [c.args for c in estimate_cases(50, 3)]
    assert a != [c.args for c in estimate_cases(50, 4)]


# The item-5 sizes, each generated on its own (the fuzz above keeps to realistic sizes): each must answer (an
# estimate or one sentence) within the fuzz's bounds. Before the fix 10^6 GPUs took 5-12 s and up to 670 MB,
# 100,000 layers 16-83 s; 100,000 layers are now refused (planner/config_fields.MAX_LAYERS) and 10^9 GPUs too
# (MAX_GPUS). tests/test_bounded_estimates.py runs the same sizes at the limits.
PATHOLOGICAL = [  # (name, args, config overrides of llama-3.2-1b or None for a catalog model in args)
    ("gpus-1e9-table", ["-m", "llama-3.1-8b", "--gpus", "1000000000"], None),
    ("gpus-1e9-zero2", ["-m", "llama-3.1-8b", "--gpus", "1000000000", "--method", "full", "--zero", "2",
                        "--offload", "none"], None),
    ("layers-1e5-lora-zero3", ["--gpus", "8", "--method", "lora", "--zero", "3", "--offload", "none"],
     {"num_hidden_layers": 100_000}),
    ("layers-1e5-table", ["--gpus", "8"], {"num_hidden_layers": 100_000}),
]  # fmt: skip
# ZeRO 1/2 at 10^6 GPUs: core.py asks zero_partition.partitions_to_evaluate for the few partitions that can
# hold the peak, computed per tensor boundary, never per rank.
CORE_BOUND = [
    ("gpus-1e6-full-table", ["-m", "llama-3.1-8b", "--gpus", "1000000"], None),
    ("gpus-1e6-zero1", ["-m", "llama-3.1-8b", "--gpus", "1000000", "--method", "full", "--zero", "1",
                        "--offload", "none"], None),
]  # fmt: skip


def _process_case(args: list[str], overrides: dict | None, tmp: Path, timeout_s: float):
    if overrides is not None:
        (tmp / "config.json").write_text(json.dumps({**catalog.model_config("llama-3.2-1b"), **overrides}))
        args = ["-m", str(tmp), *args]
    return run_subprocess(["estimate", *args, "--json"], tmp, timeout_s)


@pytest.mark.parametrize(("args", "overrides"), [pytest.param(a, o, id=n) for n, a, o in PATHOLOGICAL + CORE_BOUND])
def test_estimate_pathological_sizes_are_fast(args, overrides, tmp_path):
    """10^6-10^9 GPUs and 100,000-layer configs: each answers (an estimate or one sentence) within the fuzz's
    bounds (killed here after 3 x the bound)."""
    code, out, err, wall, rss = _process_case(args, overrides, tmp_path, MAX_ESTIMATE_S * 3)
    assert code is not None, f"still running after {wall:.1f} s (killed)"
    assert code in (0, 1) and "Traceback" not in err, err[-500:]
    assert wall < MAX_ESTIMATE_S and rss < MAX_ESTIMATE_BYTES, f"{wall:.1f} s, {rss / 1e6:.0f} MB"


META_CASES = [("starcoder2-tiny", {"model_type": "starcoder2", "num_hidden_layers": 2}),
              ("starcoder2-1b-shape", {"model_type": "starcoder2"})]  # fmt: skip


# A fresh process through the meta-device fallback spends its time importing, not counting: transformers 5's
# configuration_utils imports torch (modeling_rope_utils), so even the config class alone costs 4.6 s and 250 MB
# on a busy 2-core box, and the modeling module brings torch.distributed.tensor, torch._dynamo and sympy
# (transformers' sharding_utils, hub_kernels, masking_utils): 12 s and 343 MB. The build itself is now a few
# shallow models multiplied (planner.meta, 0.05 s for any depth; a 4,096-layer starcoder2 took 36 s warm).
@pytest.mark.xfail(strict=True, reason="a fresh process through the meta-device fallback imports torch and "
                   "transformers (11-13 s, 410 MB on a 2-core CI box) before it counts anything")
@pytest.mark.parametrize("overrides", [pytest.param(o, id=n) for n, o in META_CASES])
def test_estimate_meta_fallback_is_fast(overrides, tmp_path):
    code, out, err, wall, rss = _process_case(["--method", "full", "--zero", "0", "--offload", "none"], overrides,
                                              tmp_path, MAX_ESTIMATE_S * 3)  # fmt: skip
    assert code is not None, f"still running after {wall:.1f} s (killed)"
    assert code in (0, 1) and "Traceback" not in err, err[-500:]
    assert wall < MAX_ESTIMATE_S and rss < MAX_ESTIMATE_BYTES, f"{wall:.1f} s, {rss / 1e6:.0f} MB"
