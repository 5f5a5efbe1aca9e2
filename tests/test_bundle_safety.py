"""Safety of `planner recommend --out DIR` and of the bundle's documented first run (issue 14, items 3, 10, 11).

- The marker ``.planner-bundle.json`` records the SHA-256 of every file planner wrote. A re-run overwrites or
  removes only files whose content is still what planner wrote; a file the user edited is never overwritten
  without --force (and never deleted at all). A marker that lists a file a bundle never has is no marker.
- The marker is read only when it is a small regular file: a FIFO, a link or a huge file is no marker (and
  never hangs the command).
- An update (with or without --force) is all or nothing: a failure at any step leaves the old bundle.
- A relative model path (``-m ./mymodel``) is written absolute, since launch.sh changes to its own directory.
- launch.sh runs accelerate through a Python interpreter (``$PYTHON``, default ``python3``) rather than an
  ``accelerate`` on PATH, and the documented smoke run uses the ``sample.jsonl`` the bundle ships.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from cli_harness import run_forked, run_inprocess

from planner.emit import MARKER, write_bundle
from planner.errors import PlannerError
from tests.bundle_helpers import TINY_LLAMA, tiny_plan

RECOMMEND = ["recommend", "-g", "4", "-s", "64", "--attn", "sdpa"]
VENV_PYTHON = sys.executable


def _tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under root: file bytes, or the kind of a non-file."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = f"link -> {os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "dir"
        elif p.is_file():
            out[rel] = p.read_bytes()
        else:
            out[rel] = "special"
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def model_dir(tmp_path) -> Path:
    d = tmp_path / "mymodel"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(TINY_LLAMA))
    return d


def _recommend(model_dir: Path, out: Path, *extra: str):
    return run_inprocess([*RECOMMEND, "-m", str(model_dir), "--out", str(out), *extra])


def _plan_literal(train_py: str) -> dict:
    import ast

    tree = ast.parse(train_py)
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "PLAN":
            return ast.literal_eval(node.value)
    raise AssertionError("no PLAN literal in train.py")


def _launch_argv(launch_sh: str) -> list[str]:
    joined = launch_sh.replace("\\\n", " ")
    line = next(ln for ln in joined.splitlines() if ln.startswith("exec "))
    return shlex.split(line)


# ------------------------------------------------------------------------------------------- edited files


def test_rerun_refuses_to_overwrite_an_edited_train_py(tmp_path, model_dir):
    out = tmp_path / "bundle"
    assert _recommend(model_dir, out).code == 0
    train = out / "train.py"
    train.write_text(train.read_text() + "\n# my change: log to wandb\n")
    before = _tree(out)
    for extra in ([], ["-g", "8"]):  # the same plan and another one
        res = _recommend(model_dir, out, *extra)
        assert res.code == 1 and not res.internal, res.stderr + res.internal
        assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "train.py" in res.stderr and "--force" in res.stderr
        assert _tree(out) == before, "the bundle changed although the run was refused"
    res = _recommend(model_dir, out, "-g", "8", "--force")
    assert res.code == 0, res.stderr + res.internal
    assert "# my change" not in train.read_text() and _plan_literal(train.read_text())["global_batch_size"] == 8
    assert _recommend(model_dir, out, "-g", "4").code == 0  # what --force wrote is planner's again


def test_rerun_keeps_an_edited_file_the_new_plan_drops(tmp_path):
    """ds_config.json of a ZeRO plan, edited by the user; the next plan (ZeRO 0) has none: it stays."""
    out = tmp_path / "b"
    plan, est = _plan(zero=2, num_gpus=2)
    write_bundle(plan, out, estimate=est)
    (out / "ds_config.json").write_text('{"my": "tuning"}\n')
    plan, est = _plan(zero=0, num_gpus=1)
    before = _tree(out)
    with pytest.raises(PlannerError, match="ds_config.json.*--force"):
        write_bundle(plan, out, estimate=est)
    assert _tree(out) == before
    write_bundle(plan, out, estimate=est, force=True)
    assert (out / "ds_config.json").read_text() == '{"my": "tuning"}\n'  # --force overwrites, never deletes
    assert "ds_config.json" not in json.loads((out / MARKER).read_text())["files"]
    write_bundle(plan, out, estimate=est)  # the kept file is the user's now: no --force needed


def test_unedited_rerun_replaces_and_removes_only_planner_files(tmp_path):
    out = tmp_path / "b"
    plan, est = _plan(zero=2, num_gpus=2)
    write_bundle(plan, out, estimate=est)
    (out / "output").mkdir()
    (out / "output" / "run_summary.rank0.json").write_text("{}")
    (out / "data.jsonl").write_text('{"text": "mine"}\n')
    plan, est = _plan(zero=0, num_gpus=1)
    write_bundle(plan, out, estimate=est)
    assert not (out / "ds_config.json").exists()  # planner's, unedited: removed with the plan that needed it
    assert (out / "data.jsonl").read_text() == '{"text": "mine"}\n' and (out / "output").is_dir()
    recorded = json.loads((out / MARKER).read_text())["files"]
    assert recorded == {name: _sha((out / name).read_bytes()) for name in recorded}
    assert "data.jsonl" not in recorded and "output" not in recorded


# ------------------------------------------------------------------------------------------- forged markers


def test_forged_marker_never_gets_user_files_deleted(tmp_path, model_dir):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("months of work\n")
    (out / "ds_config.json").write_text('{"mine": true}\n')
    forged = [
        {"files": ["thesis.tex", "ds_config.json"]},  # the old marker format
        {"files": {"thesis.tex": _sha(b"months of work\n")}},  # names a file no bundle has
        {"files": {"ds_config.json": "0" * 64}},  # a bundle name, but not the content planner wrote
    ]
    for marker in forged:
        (out / MARKER).write_text(json.dumps(marker))
        before = _tree(out)
        res = _recommend(model_dir, out)
        assert res.code == 1 and not res.internal, (marker, res.stderr, res.internal)
        assert "--force" in res.stderr
        assert _tree(out) == before, marker
    res = _recommend(model_dir, out, "--force")
    assert res.code == 0, res.stderr + res.internal
    assert (out / "thesis.tex").read_text() == "months of work\n"
    assert (out / "ds_config.json").read_text() == '{"mine": true}\n'  # the single-GPU plan has no ds_config.json


@pytest.mark.parametrize("kind", ["fifo", "huge", "symlink", "directory"])
def test_marker_is_read_only_when_it_is_a_small_regular_file(tmp_path, model_dir, kind):
    out = tmp_path / "b"
    assert _recommend(model_dir, out).code == 0
    marker = out / MARKER
    real = marker.read_bytes()
    marker.unlink()
    if kind == "fifo":
        os.mkfifo(marker)
    elif kind == "huge":
        with open(marker, "wb") as f:
            f.write(real)
            f.truncate(64 * 2**20)  # sparse: a valid JSON prefix, then 64 MiB of NUL bytes
    elif kind == "symlink":
        (tmp_path / "elsewhere.json").write_bytes(real)
        marker.symlink_to(tmp_path / "elsewhere.json")
    else:
        marker.mkdir()
    before = _tree(out)
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    args = [*RECOMMEND, "-m", str(model_dir), "--out", str(out)]
    res = run_forked(args, cwd=cwd, tmp=cwd, timeout_s=30)
    assert res.killed == "", f"recommend hung on a {kind} marker: {res.killed}"
    assert res.code == 1 and "--force" in res.stderr and not res.has_traceback, res.stderr
    assert _tree(out) == before


# ------------------------------------------------------------------------------------------- all or nothing


def _plan(**kwargs):
    model, train, cluster, est, gbs = tiny_plan(**kwargs)

    class Plan:
        pass

    plan = Plan()
    plan.model, plan.train, plan.cluster, plan.global_batch_size = model, train, cluster, gbs
    return plan, est


@pytest.mark.parametrize("force", [False, True])
def test_a_failed_update_leaves_the_old_bundle(tmp_path, monkeypatch, force):
    """Every rename into the bundle directory fails in turn (a full disk, a permission): each time the directory
    is exactly the old bundle afterwards, and nothing temporary is left behind."""
    out = tmp_path / "b"
    old_plan, old_est = _plan(zero=2, num_gpus=2)
    new_plan, new_est = _plan(zero=0, num_gpus=1, micro_batch=1)
    real_replace, real_rename = os.replace, os.rename
    calls: list[int] = []
    fail_at: list[int | None] = [None]

    def flaky(name):
        real = real_replace if name == "replace" else real_rename

        def move(src, dst, *args, **kwargs):
            if Path(dst).parent == out or Path(src).parent == out:
                calls.append(1)
                if len(calls) == fail_at[0]:
                    raise OSError(28, "No space left on device")
            return real(src, dst, *args, **kwargs)

        return move

    monkeypatch.setattr(os, "replace", flaky("replace"))
    monkeypatch.setattr(os, "rename", flaky("rename"))

    def reset():
        if out.exists():
            import shutil

            shutil.rmtree(out)
        write_bundle(old_plan, out, estimate=old_est)
        (out / "output").mkdir()
        (out / "notes.md").write_text("the user's notes\n")
        calls.clear()

    reset()
    write_bundle(new_plan, out, estimate=new_est, force=force)  # counts the renames of a whole update
    total = len(calls)
    assert total >= 3
    for k in range(1, total + 1):
        fail_at[0] = None
        reset()
        before = _tree(out)
        fail_at[0] = k
        with pytest.raises(PlannerError, match="No space left on device"):
            write_bundle(new_plan, out, estimate=new_est, force=force)
        assert _tree(out) == before, f"a failure at rename {k} of {total} left a mix of old and new files"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


# ------------------------------------------------------------------------------------------- model path


def test_a_relative_model_path_is_written_absolute(tmp_path, model_dir):
    """launch.sh changes to the bundle directory first: `-m ./mymodel` must not reach train.py as 'mymodel'."""
    work = model_dir.parent
    res = run_forked([*RECOMMEND, "-m", "./mymodel", "--out", "bundle"], cwd=work, tmp=work, timeout_s=60)
    assert res.code == 0, res.stderr
    bundle = work / "bundle"
    assert _plan_literal((bundle / "train.py").read_text())["model"] == str(model_dir)
    argv = _launch_argv((bundle / "launch.sh").read_text())
    assert argv[argv.index("--model") + 1] == str(model_dir)
    profile_line = next(ln for ln in (bundle / "PLAN.md").read_text().splitlines() if ln.startswith("planner profile"))
    profile_argv = shlex.split(profile_line)
    assert profile_argv[profile_argv.index("--model") + 1] == str(model_dir / "config.json")


# ------------------------------------------------------------------------------------------- the first run


def _documented_commands(bundle: Path) -> list[list[str]]:
    """Every `./launch.sh ...` command PLAN.md shows, as argv (comments dropped)."""
    text = (bundle / "PLAN.md").read_text()
    commands = []
    for chunk in re.findall(r"`?(\./launch\.sh[^`\n]*)", text):
        commands.append(shlex.split(chunk, comments=True))
    return commands


def test_launch_sh_needs_no_accelerate_on_path(tmp_path, model_dir):
    out = tmp_path / "bundle"
    assert _recommend(model_dir, out).code == 0
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHON")}
    env.update(PATH="/usr/bin:/bin", PYTHON=VENV_PYTHON, HF_HUB_OFFLINE="1")
    assert subprocess.run(["bash", "-c", "command -v accelerate"], env=env, capture_output=True).returncode != 0
    proc = subprocess.run(["bash", str(out / "launch.sh"), "--help"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage: train.py" in proc.stdout and "--max-steps" in proc.stdout
    # An interpreter without accelerate: one sentence that says what to do, not "command not found".
    proc = subprocess.run(["bash", str(out / "launch.sh")], cwd=tmp_path, env={**env, "PYTHON": "/bin/false"},
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1 and "accelerate" in proc.stderr and "PYTHON=" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_documented_smoke_run_has_its_data(tmp_path, model_dir):
    out = tmp_path / "bundle"
    assert _recommend(model_dir, out).code == 0
    sample = out / "sample.jsonl"
    rows = [json.loads(line) for line in sample.read_text().splitlines()]
    assert len(rows) >= 50 and all(isinstance(r.get("text"), str) and r["text"] for r in rows)
    smoke = [c for c in _documented_commands(out) if "--max-steps" in c]
    assert smoke, "PLAN.md shows no smoke run"
    for argv in smoke:
        dataset = argv[argv.index("--dataset") + 1] if "--dataset" in argv else "data.jsonl"
        assert (out / dataset).is_file(), f"PLAN.md's smoke run {shlex.join(argv)} reads {dataset}, not in the bundle"
    assert "--dataset sample.jsonl" in (out / "launch.sh").read_text()
    # The full run still reads the user's data.jsonl, and says what to do when it is missing.
    assert _plan_literal((out / "train.py").read_text())["dataset"] == "data.jsonl"
    proc = subprocess.run([VENV_PYTHON, str(out / "train.py"), "--random-init", "model_config.json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "'data.jsonl' does not exist" in proc.stderr and "sample.jsonl" in proc.stderr


@pytest.mark.slow
def test_the_documented_first_run_works_from_a_relative_model_path(tmp_path):
    """Real weights in ./mymodel, `recommend -m ./mymodel --out bundle`, then PLAN.md's smoke run on CPU from
    another directory, with no accelerate on PATH: it loads those weights and trains two steps."""
    from transformers import AutoConfig, AutoModelForCausalLM

    work = tmp_path / "work"
    work.mkdir()
    raw = dict(TINY_LLAMA)
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(work / "mymodel"))
    res = run_forked([*RECOMMEND, "-m", "./mymodel", "--precision", "fp32", "--out", "bundle"], cwd=work, tmp=work,
                     timeout_s=60)  # fmt: skip
    assert res.code == 0, res.stderr
    bundle = work / "bundle"
    smoke = next(c for c in _documented_commands(bundle) if "--max-steps" in c and "--random-init" not in c)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHON")}
    env.update(PATH="/usr/bin:/bin", PYTHON=VENV_PYTHON, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")  # fmt: skip
    # A CPU host and no tokenizer next to the random weights: the bundle's own switches for both.
    argv = ["bash", str(bundle / "launch.sh"), *smoke[1:], "--cpu", "--tokenizer", "bytes"]
    proc = subprocess.run(argv, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((bundle / "output" / "run_summary.rank0.json").read_text())
    assert summary["global_step"] == 2 and summary["loss_is_finite"]
    assert summary["model"] == str(work / "mymodel")
