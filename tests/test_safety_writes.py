"""Safety of the files planner writes where the user says (issue 14, items 1 and 2).

- ``estimate --csv``, ``report -o`` and ``validate`` reports go to a new or existing regular file only: never
  through or over a symbolic link, never over a device node, FIFO, socket or directory, never over a file the
  same command reads (the model's config.json); atomically (a temporary file beside it, then a rename), so a
  failure leaves the old file as it was and no temporary file behind. One helper does it: planner.safe_write.
- ``profile --out DIR --force`` replaces only an empty directory or one that holds nothing but the files a
  planner profile consists of (planner.profile.store); a directory that merely has a ``meta.json`` is refused.

Every refusal is one sentence on stderr and exit code 1, and leaves the target exactly as it was.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cli_harness import run_inprocess
from presets import tiny

from planner.errors import PlannerError

LLAMA = tiny("llama", max_position_embeddings=256)
ESTIMATE = ["estimate", "--method", "full", "--zero", "0", "--offload", "none"]


def _kind(path: Path) -> str:
    st = os.lstat(path)
    for name, test in (("link", stat.S_ISLNK), ("fifo", stat.S_ISFIFO), ("chr", stat.S_ISCHR), ("dir", stat.S_ISDIR),
                       ("file", stat.S_ISREG)):  # fmt: skip
        if test(st.st_mode):
            return name
    return "other"


def _one_sentence_refusal(res, *words: str) -> None:
    assert res.code == 1, (res.code, res.stderr, res.internal)
    assert not res.internal and not res.has_traceback, res.internal
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1, res.stderr
    for word in words:
        assert word in res.stderr, res.stderr


def _no_temp_files(directory: Path) -> None:
    assert not [p.name for p in directory.iterdir() if p.name.startswith(".")], "a temporary file was left behind"


@pytest.fixture
def model_dir(tmp_path) -> Path:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(LLAMA))
    return d


# ------------------------------------------------------------------------------------------- estimate --csv


def test_csv_refuses_a_fifo(tmp_path, model_dir):
    fifo = tmp_path / "rows.csv"
    os.mkfifo(fifo)
    res = run_inprocess([*ESTIMATE, "-m", str(model_dir), "--csv", str(fifo)])
    _one_sentence_refusal(res, "--csv", "FIFO")
    assert _kind(fifo) == "fifo", "the FIFO was replaced by a regular file"


def test_csv_refuses_a_device_node(tmp_path, model_dir):
    dev = tmp_path / "null"
    try:
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # the same device as /dev/null
    except PermissionError:
        pytest.skip("creating a device node needs root")
    res = run_inprocess([*ESTIMATE, "-m", str(model_dir), "--csv", str(dev)])
    _one_sentence_refusal(res, "--csv", "device")
    assert _kind(dev) == "chr", "the device node became a regular file"


def test_csv_refuses_a_symlink_and_keeps_its_target(tmp_path, model_dir):
    """A link to /dev/stdout was replaced by a regular file; here a link to a file the user keeps."""
    target = tmp_path / "keep.txt"
    target.write_text("the user's file\n")
    for link_target in (target, Path("/dev/stdout"), tmp_path / "dangling"):
        link = tmp_path / "out.csv"
        link.unlink(missing_ok=True)
        link.symlink_to(link_target)
        res = run_inprocess([*ESTIMATE, "-m", str(model_dir), "--csv", str(link)])
        _one_sentence_refusal(res, "--csv", "symbolic link")
        assert _kind(link) == "link" and os.readlink(link) == str(link_target)
    assert target.read_text() == "the user's file\n"
    assert not (tmp_path / "dangling").exists()


@pytest.mark.parametrize("given", ["file", "dir"])
def test_csv_refuses_the_model_config_it_reads(tmp_path, model_dir, given):
    config = model_dir / "config.json"
    before = config.read_bytes()
    model = config if given == "file" else model_dir
    res = run_inprocess([*ESTIMATE, "-m", str(model), "--csv", str(config)])
    _one_sentence_refusal(res, "--csv", "input")
    assert config.read_bytes() == before
    # The same file reached through another spelling of its path.
    os.chdir(model_dir)
    res = run_inprocess([*ESTIMATE, "-m", str(model), "--csv", "../m/./config.json"])
    _one_sentence_refusal(res, "input")
    assert config.read_bytes() == before


def test_csv_writes_a_new_file_and_replaces_a_regular_one_atomically(tmp_path, model_dir):
    out = tmp_path / "rows.csv"
    res = run_inprocess([*ESTIMATE, "-m", str(model_dir), "--csv", str(out)])
    assert res.code == 0, res.stderr + res.internal
    assert out.read_text().startswith("method,") and _kind(out) == "file"
    out.write_text("old\n")
    out.chmod(0o640)
    res = run_inprocess([*ESTIMATE, "-m", str(model_dir), "--csv", str(out)])
    assert res.code == 0, res.stderr + res.internal
    assert out.read_text().startswith("method,")
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # the replaced file keeps its permissions
    _no_temp_files(tmp_path)


# ------------------------------------------------------------------------------------------- the helper


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    from planner import safe_write

    out = tmp_path / "r.csv"
    out.write_text("old\n")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safe_write.os, "replace", full_disk)
    with pytest.raises(PlannerError, match="No space left on device"):
        safe_write.write_atomic(out, "new\n", flag="--csv")
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]


def test_helper_refuses_every_input_it_is_given(tmp_path):
    from planner import safe_write

    a = tmp_path / "a.json"
    a.write_text("{}")
    hard = tmp_path / "hard.json"
    os.link(a, hard)
    for path in (a, hard, tmp_path / "." / "a.json"):
        with pytest.raises(PlannerError, match="input"):
            safe_write.write_atomic(path, "x", flag="-o", inputs={"the model config": a})
    assert a.read_text() == "{}"


# ------------------------------------------------------------------------------------------- report -o


def test_report_output_refuses_a_fifo_and_a_symlink(tmp_path, model_dir):
    fifo = tmp_path / "r.html"
    os.mkfifo(fifo)
    args = ["report", "-m", str(model_dir), "-s", "64", "--method", "full", "--zero", "0", "--offload", "none",
            "--no-accuracy"]  # fmt: skip
    res = run_inprocess([*args, "-o", str(fifo)])
    _one_sentence_refusal(res, "-o", "FIFO")
    assert _kind(fifo) == "fifo"
    keep = tmp_path / "keep.html"
    keep.write_text("<p>mine</p>")
    link = tmp_path / "link.html"
    link.symlink_to(keep)
    res = run_inprocess([*args, "-o", str(link)])
    _one_sentence_refusal(res, "-o", "symbolic link")
    assert _kind(link) == "link" and keep.read_text() == "<p>mine</p>"


# ------------------------------------------------------------------------------------------- validate reports


def test_validate_reports_never_replace_a_symlink(tmp_path):
    from planner.validate.report import write_reports
    from planner.validate.results import summarize

    keep = tmp_path / "keep.md"
    keep.write_text("mine\n")
    out = tmp_path / "reports"
    out.mkdir()
    (out / "accuracy.md").symlink_to(keep)
    with pytest.raises(PlannerError, match="symbolic link"):
        write_reports([], summarize([]), out, "accuracy", title="t", context={})
    assert _kind(out / "accuracy.md") == "link" and keep.read_text() == "mine\n"
    assert not (out / "accuracy.csv").exists(), "one report of the pair was written before the other was refused"


def test_validate_checks_its_report_paths_before_running_anything(tmp_path):
    """A run of the matrix takes minutes: a report path it could not write is refused before the first cell."""
    out = tmp_path / "reports"
    out.mkdir()
    os.mkfifo(out / "accuracy-ci.csv")
    res = run_inprocess(["validate", "--out", str(out), "--cache", str(tmp_path / "cache"), "--no-progress"])
    _one_sentence_refusal(res, "FIFO")
    assert not (tmp_path / "cache").exists() and res.wall_s < 10


# ------------------------------------------------------------------------------------------- profile --force


def _profile_dir(path: Path) -> Path:
    """A real profile directory, assembled and published the way `planner profile` does it (no training)."""
    from planner.profile.store import assemble, publish, staging_dir

    staging = staging_dir(path)
    (staging / "ranks").mkdir(parents=True)
    meta = {"model": {"name": "tiny", "config": LLAMA}, "train": {}, "device": "cpu", "steps": 1}
    assemble(staging, meta, [{"rank": 0, "status": "ok", "files": []}], "ok", "", 1)
    publish(staging, path, force=False)
    return path


def test_profile_force_refuses_a_directory_that_only_has_a_meta_json(tmp_path, model_dir):
    from planner.profile.store import check_target

    work = tmp_path / "work"
    (work / "checkpoints").mkdir(parents=True)
    (work / "meta.json").write_text('{"experiment": 3}')
    (work / "thesis.tex").write_text("months of work\n")
    (work / "checkpoints" / "step-1000.pt").write_bytes(b"\0" * 64)
    with pytest.raises(PlannerError, match="not a planner profile"):
        check_target(work, force=True)
    res = run_inprocess(["profile", "-m", str(model_dir), "--precision", "fp32", "--micro-batch", "1", "--seq-len", "16",
                         "--device", "cpu", "--no-progress", "--steps", "1", "--out", str(work), "--force"])  # fmt: skip
    _one_sentence_refusal(res, "--out", "not a planner profile")
    assert sorted(str(p.relative_to(work)) for p in work.rglob("*")) == [
        "checkpoints", "checkpoints/step-1000.pt", "meta.json", "thesis.tex"]  # fmt: skip


def test_profile_force_refuses_a_profile_with_foreign_entries(tmp_path):
    from planner.profile.store import check_target

    prof = _profile_dir(tmp_path / "p")
    check_target(prof, force=True)  # a profile as planner wrote it: replaceable
    for extra in ("notes.txt", "checkpoints/", "summary.json.bak"):
        entry = prof / extra.rstrip("/")
        entry.mkdir() if extra.endswith("/") else entry.write_text("x")
        with pytest.raises(PlannerError, match="not a planner profile"):
            check_target(prof, force=True)
        entry.rmdir() if extra.endswith("/") else entry.unlink()
    link = prof / "snapshot-rank0.pickle"
    link.symlink_to(tmp_path)  # a profile's file name, but a link: not what planner writes
    with pytest.raises(PlannerError, match="not a planner profile"):
        check_target(prof, force=True)


def test_profile_force_accepts_every_file_a_profile_holds(tmp_path):
    from planner.profile.store import check_target

    prof = _profile_dir(tmp_path / "p")
    for name in ("launcher.log", "snapshot-rank0.pickle", "snapshot-rank1.pickle", "nvml-rank0.parquet"):
        (prof / name).write_bytes(b"x")
    check_target(prof, force=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    check_target(empty, force=True)
