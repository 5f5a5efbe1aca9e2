"""`planner profile` from the command line: output, Ctrl-C, a crashed rank, no leftover processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from presets import tiny

from planner.profile import load_profile

pytestmark = pytest.mark.slow

LLAMA = tiny("llama")
TINY = ["--precision", "fp32", "--micro-batch", "2", "--seq-len", "32", "--device", "cpu"]


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "tiny-llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(LLAMA))
    return d


def _workers_of(out) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if "planner.profile.worker" in line and str(out.name) in line]


def test_cli_profile_json_and_compare(tmp_path, model_dir, cli):
    out = tmp_path / "p"
    res = cli("profile", "--model", str(model_dir), *TINY, "--steps", "2", "--out", str(out), "--json", timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["status"] == "ok" and summary["ranks"][0]["peak"]["allocated_bytes"] > 0
    res = cli("compare", str(out), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["ranks"][0]["rows"][0]["name"] == "params"


def test_sigint_leaves_an_interrupted_profile(tmp_path, model_dir):
    out = tmp_path / "p"
    cmd = [sys.executable, "-m", "planner", "profile", "--model", str(model_dir), *TINY, "--steps", "100000",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    for line in proc.stderr:  # one progress line per step when stderr is not a terminal
        if "step 2" in line or time.time() > deadline:
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1].startswith("error: rank 0 was interrupted (SIGINT) during step 2")
    prof = load_profile(out)
    assert prof.status == "interrupted" and prof.ranks[0].steps_completed == 2
    assert prof.ranks[0].peak is not None and len(prof.timeline()) > 0


def test_crashed_rank_fails_the_profile_and_leaves_no_process(tmp_path, model_dir, cli):
    out = tmp_path / "crash"
    res = cli("profile", "--model", str(model_dir), *TINY, "--gpus", "2", "--fail-at", "1:1:backward",
              "--out", str(out), timeout=300)  # fmt: skip
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last == "error: rank 1 failed during step 1 backward: InjectedFailure: injected failure at step 1 backward (--fail-at)."
    prof = load_profile(out)
    assert prof.status == "failed" and prof.meta["workload"]["engine"] == "ddp"
    by_rank = {r.rank: r for r in prof.ranks}
    assert by_rank[1].status == "failed" and by_rank[1].steps_completed == 1
    # The healthy rank was stopped (its collective lost its peer, or torchrun terminated it) and still wrote
    # what it recorded.
    assert by_rank[0].status in ("failed", "interrupted") and by_rank[0].peak is not None
    assert set(prof.timeline()["rank"]) == {0, 1}
    assert _workers_of(out) == []


def test_cli_user_errors_are_one_sentence(tmp_path, model_dir, cli):
    res = cli("profile", "--model", str(model_dir), *TINY, "--zero", "3", "--method", "qlora", "--offload", "optimizer+params",
              "--out", str(tmp_path / "x"))
    assert res.returncode == 1 and res.stderr.startswith("error: QLoRA with ZeRO-3 parameter offload")
    res = cli("profile", "--model", str(model_dir), "--device", "tpu", "--out", str(tmp_path / "x"))
    assert res.returncode == 1 and "--device 'tpu'" in res.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_moe_lora_with_dropout_is_refused_before_any_rank_starts(tmp_path, cli, family):
    """peft's lora.ParamWrapper (LoRA on fused expert tensors and routers) refuses lora_dropout != 0; planner's
    default 0.05 got as far as the rank's get_peft_model (issue 14 item 8). Now: one sentence, nothing written."""
    from tests.test_bundle_e2e import TINY_MOE

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY_MOE[family]))
    out = tmp_path / "p"
    res = cli("profile", "--model", str(cfg), *TINY, "--method", "lora", "--lora-dropout", "0.05", "--steps", "1",
              "--out", str(out))  # the default is 0 for these models; an explicit dropout is refused
    assert res.returncode == 1 and "lora.ParamWrapper" in res.stderr and "--lora-dropout 0" in res.stderr
    assert "Traceback" not in res.stderr and not out.exists()
    ok = cli("profile", "--model", str(cfg), *TINY, "--method", "lora", "--lora-dropout", "0", "--steps", "2",
             "--out", str(out), "--json", timeout=300)
    assert ok.returncode == 0, ok.stderr
