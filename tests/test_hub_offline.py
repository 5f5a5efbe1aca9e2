"""A hub id with no local cache and no way to the hub fails at once, naming the catalog entry (issue 14).

No test here can reach the real hub: each points HF_ENDPOINT at a closed port on this machine (or sets
HF_HUB_OFFLINE), and HF_HOME at an empty directory, so nothing is ever downloaded.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT

from planner.errors import PlannerError
from planner.models import load_model

FAIL_FAST_S = 5.0  # issue 14: the error within 5 s (it took 27-37 s of retry messages)


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): connecting to it is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _estimate(model: str, tmp_path, **env) -> tuple[subprocess.CompletedProcess, float]:
    (tmp_path / "hf").mkdir(exist_ok=True)
    full_env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    full_env.update({"HF_HOME": str(tmp_path / "hf"), "COLUMNS": "200", **env})
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "planner", "estimate", "--model", model], capture_output=True,
                         text=True, timeout=120, cwd=ROOT, env=full_env)  # fmt: skip
    return res, time.monotonic() - started


def _one_sentence(res: subprocess.CompletedProcess) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr and not res.stdout.strip()
    return lines[0]


@pytest.mark.slow
def test_unreachable_hub_fails_fast_and_names_the_catalog_entry(tmp_path):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    res, wall = _estimate("Qwen/Qwen2.5-7B", tmp_path, HF_ENDPOINT=endpoint)
    line = _one_sentence(res)
    assert "'qwen2.5-7b'" in line and "cannot be reached" in line, line
    assert wall < FAIL_FAST_S, f"{wall:.1f} s: {line}"


def test_offline_hub_id_names_the_catalog_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    started = time.monotonic()
    with pytest.raises(PlannerError) as exc:
        load_model("meta-llama/Llama-3.1-8B-Instruct")
    assert time.monotonic() - started < FAIL_FAST_S
    assert "HF_HUB_OFFLINE" in str(exc.value) and "'llama-3.1-8b'" in str(exc.value), exc.value


def test_unreachable_hub_in_process(tmp_path, monkeypatch):
    """The hub at an IP address (no DNS lookup) that the tests' network guard refuses, as with no route."""
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://10.255.255.1")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    started = time.monotonic()
    with pytest.raises(PlannerError) as exc:
        load_model("Qwen/Qwen2.5-7B-Instruct")
    assert time.monotonic() - started < FAIL_FAST_S
    assert "cannot be reached" in str(exc.value) and "'qwen2.5-7b'" in str(exc.value), exc.value


@pytest.mark.parametrize("repo_id, name", [
    ("Qwen/Qwen2.5-7B", "qwen2.5-7b"),
    ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5-7b"),
    ("meta-llama/Llama-3.1-8B", "llama-3.1-8b"),
    ("meta-llama/Meta-Llama-3.1-8B-Instruct", "llama-3.1-8b"),
    ("meta-llama/Llama-2-7b-hf", "llama-2-7b"),
    ("meta-llama/Llama-2-13b-chat-hf", "llama-2-13b"),
    ("mistralai/Mistral-7B-v0.3", "mistral-7b-v0.3"),
    ("mistralai/Mixtral-8x7B-v0.1", "mixtral-8x7b-v0.1"),
    ("google/gemma-2-9b-it", "gemma-2-9b"),
    ("Qwen/Qwen3-30B-A3B", "qwen3-30b-a3b"),
    ("deepseek-ai/DeepSeek-V2-Lite", "deepseek-v2-lite"),
    ("openai-community/gpt2", "gpt2"),
    ("someone/unknown-model-3b", None),
    ("Qwen/Qwen2.5-7B-Math", None),  # a different model, not a tuned copy: no entry is claimed
])  # fmt: skip
def test_catalog_name_for_hub_id(repo_id, name):
    from planner.models import catalog_name_for_hub_id

    assert catalog_name_for_hub_id(repo_id) == name
