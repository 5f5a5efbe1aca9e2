"""Safety: no network, no remote code, no clobbered directories, no shell injection.

- The network guard of conftest.py is active in every test (internet refused, loopback allowed).
- A config that asks for remote code (``auto_map``) is refused by estimate, recommend, report and profile
  unless --trust-remote-code is given, for local paths and for hub ids found in the Hugging Face cache; and
  even with the flag, planner never imports the code next to the config.
- ``--out`` never writes into a non-empty directory planner did not create without --force (recommend,
  profile), and --force never deletes what is not planner's.
- Shell commands planner writes or runs keep user values literal. The bundle's launch.sh is covered by
  test_emit.py (quoting) and test_bundle_e2e.py (a real run with hostile paths); here the same hostile
  values go through the CLI (`recommend --out` with a hostile model path, launch.sh run against a stub
  Python in place of the one that runs accelerate) and through `profile --gpus 2`, which starts torchrun.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cli_harness import run_inprocess
from conftest import run_cli
from presets import tiny

from planner.profile import load_profile

LLAMA = tiny("llama", max_position_embeddings=256)
AUTO_MAP = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
WEIRD = """we ird 'sq' "dq" $(touch PWNED1) `touch PWNED2` ; touch PWNED3 & $HOME"""
TINY_PROFILE = ["--precision", "fp32", "--micro-batch", "2", "--seq-len", "32", "--device", "cpu", "--no-progress"]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _pwned(*roots: Path) -> list[str]:
    return [str(p) for r in roots for p in r.rglob("PWNED*")]


# ------------------------------------------------------------------------------------------- network


def test_network_guard_refuses_the_internet():
    with pytest.raises(RuntimeError, match="network connection"):
        socket.create_connection(("93.184.216.34", 80), timeout=1)
    with pytest.raises((RuntimeError, urllib.error.URLError), match="network connection"):
        urllib.request.urlopen("http://93.184.216.34/", timeout=1)


def test_network_guard_allows_loopback():
    """Multi-rank profiles rendezvous on 127.0.0.1: the guard must let that through."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
    finally:
        server.close()


def test_a_hub_id_never_reaches_the_network(monkeypatch):
    """Even without HF_HUB_OFFLINE, an uncached hub id ends in one sentence, not a connection attempt that the
    guard would turn into an internal error."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    res = run_inprocess(["estimate", "-m", "planner-tests/never-published-model"])
    assert res.code == 1 and not res.internal, res.internal
    assert "'planner-tests/never-published-model'" in res.stderr and len(res.stderr.splitlines()) == 1


# ------------------------------------------------------------------------------------------- remote code


@pytest.fixture
def remote_code_dir(tmp_path) -> Path:
    """A config with auto_map, and the module it names, which leaves a mark if anything imports it."""
    d = tmp_path / "evil-model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({**LLAMA, "auto_map": AUTO_MAP}))
    (d / "modeling_evil.py").write_text(f"open({str(tmp_path / 'IMPORTED')!r}, 'w').write('remote code ran')\n")
    return d


REMOTE_CODE_COMMANDS = {
    "estimate": ["estimate", "-m", "{m}", "--method", "full", "--zero", "0", "--offload", "none", "--json"],
    "recommend": ["recommend", "-m", "{m}", "-g", "4", "-s", "64", "--json"],
    "report": ["report", "-m", "{m}", "-s", "64", "--method", "lora", "-o", "{tmp}/r.html"],
}


@pytest.mark.parametrize("command", sorted(REMOTE_CODE_COMMANDS))
def test_auto_map_needs_trust_remote_code(command, remote_code_dir, tmp_path):
    args = [a.replace("{m}", str(remote_code_dir)).replace("{tmp}", str(tmp_path)) for a in REMOTE_CODE_COMMANDS[command]]
    refused = run_inprocess(args)
    assert refused.code == 1 and not refused.internal
    assert refused.stderr.startswith("error: ") and "auto_map" in refused.stderr and "--trust-remote-code" in refused.stderr
    assert not (tmp_path / "r.html").exists()
    allowed = run_inprocess([*args, "--trust-remote-code"])
    assert allowed.code == 0, allowed.stderr + allowed.internal
    assert not (tmp_path / "IMPORTED").exists(), "planner imported the model's own code"


def test_profile_refuses_auto_map_before_doing_anything(remote_code_dir, tmp_path):
    out = tmp_path / "p"
    res = run_inprocess(["profile", "-m", str(remote_code_dir), *TINY_PROFILE, "--out", str(out)])
    assert res.code == 1 and not res.internal and "--trust-remote-code" in res.stderr
    assert not out.exists() and not list(tmp_path.glob(".p.*"))


@pytest.mark.slow
def test_profile_with_trust_remote_code_still_runs_no_remote_code(remote_code_dir, tmp_path):
    out = tmp_path / "p"
    res = run_inprocess(["profile", "-m", str(remote_code_dir), *TINY_PROFILE, "--steps", "1", "--out", str(out),
                         "--trust-remote-code"])  # fmt: skip
    assert res.code == 0, res.stderr + res.internal
    assert load_profile(out).status == "ok"
    assert not (tmp_path / "IMPORTED").exists(), "planner imported the model's own code"


def _fake_hub_cache(root: Path, repo_id: str, config: dict) -> Path:
    """The Hugging Face cache layout (huggingface_hub file_download): refs/main names a snapshot."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(config))
    return root


def test_auto_map_from_the_hub_cache_needs_trust_remote_code(tmp_path):
    cache = _fake_hub_cache(tmp_path / "hub", "evil-org/evil-model", {**LLAMA, "auto_map": AUTO_MAP})
    _fake_hub_cache(cache, "good-org/good-model", LLAMA)
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    args = ["estimate", "--method", "full", "--zero", "0", "--offload", "none", "--json"]
    good = run_cli(*args, "-m", "good-org/good-model", env=env, cwd=tmp_path)
    assert good.returncode == 0, good.stderr  # the fake cache is read at all
    refused = run_cli(*args, "-m", "evil-org/evil-model", env=env, cwd=tmp_path)
    assert refused.returncode == 1 and "--trust-remote-code" in refused.stderr, refused.stderr
    allowed = run_cli(*args, "-m", "evil-org/evil-model", "--trust-remote-code", env=env, cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr


# ------------------------------------------------------------------------------------------- --out


@pytest.fixture
def foreign_dir(tmp_path) -> Path:
    d = tmp_path / "mine"
    (d / "sub").mkdir(parents=True)
    (d / "thesis.tex").write_text("months of work\n")
    (d / "sub" / "train.py").write_text("# the user's own script\n")
    return d


def _recommend(out: Path, *extra: str):
    return run_inprocess(["recommend", "-m", "gpt2", "-g", "8", "-s", "512", "--out", str(out), *extra])


def test_recommend_out_refuses_a_foreign_non_empty_directory(foreign_dir):
    before = _tree(foreign_dir)
    res = _recommend(foreign_dir)
    assert res.code == 1 and "--force" in res.stderr and not res.internal
    assert _tree(foreign_dir) == before
    assert not list(foreign_dir.parent.glob(".mine.*")), "a staging directory was left behind"


def test_recommend_out_refuses_a_symlink_to_a_foreign_directory(foreign_dir, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(foreign_dir, target_is_directory=True)
    before = _tree(foreign_dir)
    res = _recommend(link)
    assert res.code == 1 and "--force" in res.stderr
    assert _tree(foreign_dir) == before


def test_recommend_out_force_keeps_the_users_files(foreign_dir):
    before = _tree(foreign_dir)
    res = _recommend(foreign_dir, "--force")
    assert res.code == 0, res.stderr + res.internal
    after = _tree(foreign_dir)
    assert {k: after[k] for k in before} == before  # the user's files, byte for byte
    assert {"launch.sh", "train.py", "PLAN.md"} <= set(after)


def test_recommend_out_may_reuse_its_own_bundle_and_an_empty_directory(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _recommend(empty).code == 0
    res = _recommend(empty)  # now planner's own bundle: rewriting it needs no --force
    assert res.code == 0, res.stderr
    assert (empty / "launch.sh").is_file()


def test_profile_out_refuses_an_existing_directory(foreign_dir):
    before = _tree(foreign_dir)
    res = run_inprocess(["profile", "-m", "gpt2", *TINY_PROFILE, "--out", str(foreign_dir)])
    assert res.code == 1 and "--force" in res.stderr and not res.internal
    assert _tree(foreign_dir) == before


@pytest.mark.slow
def test_profile_force_never_deletes_a_directory_that_is_not_a_profile(foreign_dir, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(LLAMA))
    before = _tree(foreign_dir)
    res = run_inprocess(["profile", "-m", str(tmp_path / "m"), *TINY_PROFILE, "--steps", "1", "--out",
                         str(foreign_dir), "--force"])  # fmt: skip
    assert not res.internal
    assert res.code == 1 and "not a planner profile" in res.stderr
    assert _tree(foreign_dir) == before, "the user's directory was replaced"


@pytest.mark.slow
def test_profile_force_replaces_a_profile(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(LLAMA))
    out = tmp_path / "p"
    args = ["profile", "-m", str(tmp_path / "m"), *TINY_PROFILE, "--steps", "1", "--out", str(out)]
    assert run_inprocess(args).code == 0
    first = load_profile(out).meta["created_unix_s"]
    assert run_inprocess([*args, "--seed", "1"]).code == 1  # exists: refused without --force
    res = run_inprocess([*args, "--seed", "1", "--force"])
    assert res.code == 0, res.stderr + res.internal
    prof = load_profile(out)
    assert prof.meta["seed"] == 1 and prof.meta["created_unix_s"] >= first
    assert not list(tmp_path.glob(".p.*"))


# ------------------------------------------------------------------------------------------- shell quoting


STUB_PYTHON = """#!{python}
import json, os, sys
if sys.argv[1] == "-c":  # launch.sh's check that this interpreter has accelerate
    os.execv({python!r}, [{python!r}, *sys.argv[1:]])
with open(os.environ["STUB_RECORD"], "w") as f:
    json.dump(sys.argv[1:], f)
"""


def test_recommend_bundle_with_a_hostile_model_path_runs_launch_sh_literally(tmp_path):
    """`recommend --out` from the CLI with hostile model and bundle paths; launch.sh run by bash against a stub
    Python (launch.sh runs `$PYTHON -m accelerate.commands.launch`) that records its argv: every value arrives
    literally and nothing else runs."""
    model_dir = tmp_path / f"models {WEIRD}"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(LLAMA))
    bundle = tmp_path / f"out {WEIRD}"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    res = run_inprocess(["recommend", "-m", str(model_dir), "-g", "4", "-s", "64", "--out", str(bundle)])
    assert res.code == 0, res.stderr + res.internal
    launch = bundle / "launch.sh"
    assert subprocess.run(["bash", "-n", str(launch)], capture_output=True).returncode == 0
    stub_bin = tmp_path / "bin"
    stub_bin.mkdir()
    (stub_bin / "python").write_text(STUB_PYTHON.format(python=sys.executable))
    (stub_bin / "python").chmod(0o755)
    record = tmp_path / "argv.json"
    env = {**os.environ, "PYTHON": str(stub_bin / "python"), "STUB_RECORD": str(record)}
    extra = ["--max-steps", "2", f"--note={WEIRD}"]
    proc = subprocess.run(["bash", str(launch), *extra], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    argv = json.loads(record.read_text())
    assert argv[:2] == ["-m", "accelerate.commands.launch"] and "train.py" in argv
    after = argv[argv.index("train.py") + 1 :]
    assert after[after.index("--model") + 1] == str(model_dir)
    assert after[-len(extra) :] == extra  # "$@" passes the user's extra arguments on untouched
    assert _pwned(tmp_path) == [] and not list(Path.cwd().glob("PWNED*"))


@pytest.mark.slow
def test_profile_two_ranks_with_hostile_paths_runs_nothing_else(tmp_path):
    """`profile --gpus 2` starts torchrun with the model path and the output directory in its job: hostile
    values must stay literal (argument lists, no shell) and the command recorded in meta.json must be exact."""
    model_dir = tmp_path / f"models {WEIRD}"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(LLAMA))
    out = tmp_path / f"profiles {WEIRD}" / f"p {WEIRD}"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = ["profile", "-m", str(model_dir), *TINY_PROFILE, "--gpus", "2", "--steps", "2", "--out", str(out)]
    proc = run_cli(*args, cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    prof = load_profile(out)
    assert prof.status == "ok" and prof.num_ranks == 2
    assert prof.meta["model"]["source"].startswith(str(model_dir))
    recorded = prof.meta["command"]
    if isinstance(recorded, str):
        recorded = shlex.split(recorded)
    assert recorded[1:] == args
    assert _pwned(tmp_path) == [] and not list(Path.cwd().glob("PWNED*"))
