"""Fault injection for `planner profile`: exceptions, Ctrl-C, a killed rank, an unwritable or full disk, OOM.

Faults come from a seeded plan (FAULT_SEED), so a failure reproduces. After every fault: the command ended
within AFTER_FAULT_S, no process it started is left, no half-written directory (``.NAME.partial-*``) is
left next to the target, the profile directory either does not exist or loads with the expected status, and
`planner compare` and `planner report` on it answer cleanly (exit 0, or exit 1 with one ``error:`` line).
Separately, truncating any file of a good profile at a random offset makes every reader fail cleanly.

CI runs a subset (still more than 30 faults; most run in this process with --fail-at, the hidden hook of
planner/profile/runner.py, and in-process SIGINT). ``PLANNER_FAULTS=full`` runs the whole plan. With
``PLANNER_RELIABILITY_DIR`` set, every fault's outcome is written to faults.json there
(benchmarks/reliability.py turns it into reports/reliability.md).
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cli_harness import run_inprocess
from conftest import ROOT
from presets import tiny

from planner.errors import PlannerError
from planner.profile import load_profile
from planner.profile.runner import CPU_RECORDED_STEPS

pytestmark = pytest.mark.slow

FULL = os.environ.get("PLANNER_FAULTS", "") == "full"
FAULT_SEED = 20261123
AFTER_FAULT_S = 30  # issue 9: the command ends within 30 s of the fault
SUBPROCESS_LIMIT_S = 300  # a hang guard for whole subprocess runs (imports alone take ~20 s on a busy 2-core box)
LLAMA = tiny("llama")
# Big enough that weights, gradients and AdamW states (about 3.2 GB in fp32) cannot fit under the memory cap.
BIG = {**LLAMA, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 8, "num_attention_heads": 8,
       "num_key_value_heads": 8, "vocab_size": 32000}  # fmt: skip
TINY = ["--precision", "fp32", "--micro-batch", "2", "--seq-len", "32", "--device", "cpu", "--no-progress"]
SETUP_PHASES = ("build", "wrap")
STEP_PHASES = ("inputs", "forward", "loss", "backward", "optimizer_step")
OUTCOMES: list[dict] = []  # every fault's outcome, for reports/reliability.md


# ------------------------------------------------------------------------------------------- the fault plan

_rng = random.Random(FAULT_SEED)
NUM_STEPS = 4 if FULL else 2
EXCEPTION_FAULTS = [(-1, p) for p in SETUP_PHASES] + [(s, p) for s in range(NUM_STEPS) for p in STEP_PHASES]
if FULL:
    EXCEPTION_FAULTS += [(_rng.randrange(NUM_STEPS), _rng.choice(STEP_PHASES)) for _ in range(8)]
SIGINT_DELAYS = [round(_rng.uniform(0.0, 4.0), 2) for _ in range(30 if FULL else 12)]
# CI leaves 2-rank exceptions to test_profile_cli.py (rank 1, step 1, backward) and SIGKILL below.
TWO_RANK_EXCEPTIONS = [(_rng.randrange(2), *_rng.choice([(-1, "init"), (-1, "build"), (-1, "wrap")]
                        + [(s, p) for s in range(2) for p in STEP_PHASES])) for _ in range(6 if FULL else 1)]  # fmt: skip
SIGKILL_AT_STEP = [_rng.randrange(3) for _ in range(3 if FULL else 1)]
# Ctrl-C to the command at a random point: a delay after start (imports, setup) or a step (read off the
# progress lines). Steps stay below 30: the time to write an interrupted profile grows with the steps
# recorded (test_sigint_after_many_steps).
SUBPROCESS_SIGINT = [(n, _rng.choice(["after", "step"]), round(_rng.uniform(0.5, 6.0), 1), _rng.randrange(30))
                     for n in ([1, 2, 1, 2, 1, 2] if FULL else [1])]  # fmt: skip
SUBPROCESS_SIGINT = [(n, "step" if i == 0 else how, d, k) for i, (n, how, d, k) in enumerate(SUBPROCESS_SIGINT)]
TRUNCATIONS_PER_FILE = 5 if FULL else 2


# ------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models")
    for name, cfg in (("tiny-llama", LLAMA), ("big-llama", BIG)):
        (d / name).mkdir()
        (d / name / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture(scope="module")
def good_profile(model_dir, tmp_path_factory) -> Path:
    """A healthy profile (also warms torch up, so in-process faults measure the run, not the imports)."""
    out = tmp_path_factory.mktemp("good") / "p"
    res = run_inprocess(["profile", "-m", str(model_dir / "tiny-llama"), *TINY, "--steps", "2", "--out", str(out)])
    assert res.code == 0, res.stderr + res.internal
    assert load_profile(out).status == "ok"
    return out


@pytest.fixture(scope="module", autouse=True)
def _write_outcomes():
    yield
    target = os.environ.get("PLANNER_RELIABILITY_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        path = Path(target) / "faults.json"
        previous = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(previous + OUTCOMES, indent=1, sort_keys=True))


def _our_processes(marker: str) -> list[str]:
    """Processes (other than this one) whose command line mentions ``marker`` (a per-test directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def _clean_answer(args: list[str]) -> str | None:
    """None when `planner ARGS` answered cleanly, else what was wrong."""
    res = run_inprocess(args)
    if res.internal:
        return f"{args[0]}: internal error {res.internal.strip().splitlines()[-1]}"
    if res.code not in (0, 1) or res.has_traceback:
        return f"{args[0]}: exit {res.code}"
    if res.code == 1 and len([line for line in res.stderr.splitlines() if line.startswith("error: ")]) != 1:
        return f"{args[0]}: exit 1 without exactly one error line: {res.stderr!r}"
    return None


def _after(out: Path, expected: set[str], *, may_be_missing: bool, wall_s: float, kind: str, params) -> list[str]:
    """The checks every fault shares; returns the problems found (and records the outcome)."""
    problems = []
    if wall_s > AFTER_FAULT_S:
        problems.append(f"ended {wall_s:.1f} s after the fault (> {AFTER_FAULT_S} s)")
    deadline = time.monotonic() + 10  # torchrun's workers may take a moment to be reaped
    while (left := _our_processes(str(out.parent))) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left:
        problems.append(f"processes left behind: {left}")
    leftovers = [p.name for p in out.parent.glob(f".{out.name}.*")]
    if leftovers:
        problems.append(f"half-written directories left: {leftovers}")
    status = None
    if out.exists():
        try:
            status = load_profile(out).status
        except PlannerError as exc:
            problems.append(f"the profile directory does not load: {exc}")
        if status is not None and status not in expected:
            problems.append(f"status {status!r}, expected one of {sorted(expected)}")
    elif not may_be_missing:
        problems.append("no profile directory was written")
    for args in (["compare", str(out)], ["report", "--profile", str(out), "-o", str(out.parent / "r.html"), "--no-accuracy"]):
        if (why := _clean_answer(args)) is not None:
            problems.append(why)
    OUTCOMES.append({"kind": kind, "params": params, "status": status if out.exists() else "no directory",
                     "after_fault_s": round(wall_s, 2), "problems": problems})  # fmt: skip
    return problems


# ------------------------------------------------------------------------------------------- single rank, in process


@pytest.mark.parametrize("step, phase", EXCEPTION_FAULTS, ids=[f"step{s}-{p}" for s, p in EXCEPTION_FAULTS])
def test_exception_at_step_and_phase(step, phase, model_dir, good_profile, tmp_path):
    out = tmp_path / "p"
    started = time.monotonic()
    res = run_inprocess(["profile", "-m", str(model_dir / "tiny-llama"), *TINY, "--steps", str(NUM_STEPS),
                         "--out", str(out), "--fail-at", f"0:{step}:{phase}"])  # fmt: skip
    wall = time.monotonic() - started
    problems = _after(out, {"failed"}, may_be_missing=False, wall_s=wall, kind="exception, 1 rank", params=[step, phase])
    if res.code != 1 or res.internal:
        problems.append(f"exit {res.code} {res.internal[-300:]}")
    elif not res.stderr.strip().splitlines()[-1].startswith(f"error: rank 0 failed during {'setup' if step < 0 else f'step {step}'}"):
        problems.append(f"last stderr line does not name the step: {res.stderr!r}")
    if out.exists():
        prof = load_profile(out)
        if prof.ranks[0].steps_completed != max(step, 0):
            problems.append(f"steps_completed {prof.ranks[0].steps_completed}, expected {max(step, 0)}")
    assert not problems, problems


class _SigintTimer:
    """Send SIGINT to this process after ``delay`` s, only while a run is in progress; a stray signal is ignored."""

    def __init__(self, delay: float):
        self.delay = delay
        self.inside = threading.Event()
        self.cancel = threading.Event()
        self.sent_at: float | None = None

    def _handler(self, signum, frame):
        if self.inside.is_set():
            raise KeyboardInterrupt

    def _fire(self):
        if not self.cancel.wait(self.delay):
            self.sent_at = time.monotonic()
            os.kill(os.getpid(), signal.SIGINT)

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handler)
        self.inside.set()
        self.thread = threading.Thread(target=self._fire, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.inside.clear()
        self.cancel.set()
        self.thread.join()
        time.sleep(0.05)  # a signal sent just before the join is handled (and ignored) here
        signal.signal(signal.SIGINT, self.previous)


@pytest.mark.parametrize("delay", SIGINT_DELAYS, ids=[f"after{d}s" for d in SIGINT_DELAYS])
def test_sigint_at_a_random_time(delay, model_dir, good_profile, tmp_path):
    out = tmp_path / "p"
    started = time.monotonic()
    with _SigintTimer(delay) as timer:
        res = run_inprocess(["profile", "-m", str(model_dir / "tiny-llama"), *TINY, "--steps", "100000", "--out", str(out)])
    ended = time.monotonic()
    assert timer.sent_at is not None, "the run ended before SIGINT was sent"
    problems = _after(out, {"interrupted"}, may_be_missing=True, wall_s=ended - timer.sent_at,
                      kind="SIGINT, 1 rank, in process", params=[delay])  # fmt: skip
    if res.code != 130 or res.internal:
        problems.append(f"exit {res.code} (expected 130) {res.internal[-300:]}")
    assert not problems, (problems, ended - started)


# ------------------------------------------------------------------------------------------- disk faults


@pytest.fixture
def read_only_dir(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    immutable = False
    try:
        (d / "probe").write_text("")  # root ignores permission bits: make the directory immutable instead
        (d / "probe").unlink()
        immutable = subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0
        if not immutable:
            pytest.skip("cannot make a read-only directory here (root without chattr)")
    except PermissionError:
        pass
    yield d
    if immutable:
        subprocess.run(["chattr", "-i", str(d)], check=False)
    d.chmod(0o755)


def test_read_only_output_directory(model_dir, good_profile, read_only_dir):
    out = read_only_dir / "p"
    started = time.monotonic()
    res = run_inprocess(["profile", "-m", str(model_dir / "tiny-llama"), *TINY, "--steps", "2", "--out", str(out)])
    problems = _after(out, set(), may_be_missing=True, wall_s=time.monotonic() - started,
                      kind="read-only output directory", params=[])  # fmt: skip
    if res.code != 1 or res.internal or str(read_only_dir) not in res.stderr:
        problems.append(f"exit {res.code}, stderr {res.stderr!r}, internal {res.internal[-200:]!r}")
    assert not problems, problems


@pytest.mark.parametrize("limit_bytes", [0, 3000] + ([1000, 8000, 20000] if FULL else []))
def test_disk_full_while_writing(limit_bytes, model_dir, good_profile, tmp_path):
    """RLIMIT_FSIZE makes every write beyond ``limit_bytes`` fail with EFBIG, as a full disk fails with ENOSPC."""
    out = tmp_path / "p"
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    started = time.monotonic()
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, old_limit[1]))
    try:
        res = run_inprocess(["profile", "-m", str(model_dir / "tiny-llama"), *TINY, "--steps", "2", "--out", str(out)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    problems = _after(out, {"ok"}, may_be_missing=True, wall_s=time.monotonic() - started,
                      kind="disk full (RLIMIT_FSIZE)", params=[limit_bytes])  # fmt: skip
    if res.internal or res.code not in (0, 1):
        problems.append(f"exit {res.code}, internal {res.internal.strip().splitlines()[-1:]!r}")
    elif res.code == 1 and (len(res.stderr.splitlines()) != 1 or str(out) not in res.stderr):
        problems.append(f"not one sentence naming {str(out)!r}: {res.stderr!r}")
    assert not problems, problems


# ------------------------------------------------------------------------------------------- subprocesses


def _popen(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "planner", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs)  # fmt: skip


def _wait(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=SUBPROCESS_LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"planner ran longer than {SUBPROCESS_LIMIT_S} s; stderr: {err[-2000:]}")


def _staging_ranks(out: Path, proc: subprocess.Popen) -> Path:
    return out.parent / f".{out.name}.partial-{proc.pid}" / "ranks"


def _wait_for(predicate, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + SUBPROCESS_LIMIT_S
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
            _, err = proc.communicate()
            pytest.fail(f"planner ended (exit {proc.returncode}) before {what}; stderr: {err[-2000:]}")
        time.sleep(0.05)


def _progress_step(ranks: Path) -> int:
    try:
        return int(json.loads((ranks / "progress.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


# BUG (planner/profile/launcher.py): a rank that fails while joining the process group leaves the other blocked
# in C++ in the rendezvous, deaf to torchrun's SIGTERM, until torchrun's 30 s grace ends in SIGKILL.
INIT_HANG = pytest.mark.xfail(strict=True, reason="BUG: a rank failing in 'init' leaves its peer blocked in the "
                              "gloo rendezvous; torchrun SIGKILLs it only after its 30 s SIGTERM grace, so the "
                              "command ends 33-35 s after the fault (planner/profile/launcher.py _run_torchrun)")  # fmt: skip


@pytest.mark.parametrize("rank, step, phase", [
    pytest.param(r, s, p, id=f"rank{r}-step{s}-{p}", marks=[INIT_HANG] if p == "init" else [])
    for r, s, p in TWO_RANK_EXCEPTIONS
])  # fmt: skip
def test_two_rank_exception(rank, step, phase, model_dir, tmp_path):
    out = tmp_path / "p"
    proc = _popen(["profile", "-m", str(model_dir / "tiny-llama"), *TINY, "--gpus", "2", "--steps", "3",
                   "--out", str(out), "--fail-at", f"{rank}:{step}:{phase}"])  # fmt: skip
    ranks = _staging_ranks(out, proc)
    _wait_for(lambda: (ranks / f"rank{rank}.json").exists() or out.exists(), proc, f"rank {rank} failed")
    failed_at = time.monotonic()
    _, err = _wait(proc)
    problems = _after(out, {"failed"}, may_be_missing=False, wall_s=time.monotonic() - failed_at,
                      kind="exception, 2 ranks", params=[rank, step, phase])  # fmt: skip
    if proc.returncode != 1 or "internal error" in err or "Traceback" in err:
        problems.append(f"exit {proc.returncode}; stderr {err[-500:]!r}")
    elif not err.strip().splitlines()[-1].startswith(f"error: rank {rank} failed during"):
        problems.append(f"the last line does not name rank {rank}: {err.strip().splitlines()[-1]!r}")
    assert not problems, problems


@pytest.mark.parametrize("at_step", SIGKILL_AT_STEP, ids=[f"at-step{s}" for s in SIGKILL_AT_STEP])
def test_sigkill_one_rank_of_two(at_step, model_dir, tmp_path):
    out = tmp_path / "p"
    proc = _popen(["profile", "-m", str(model_dir / "tiny-llama"), *TINY, "--gpus", "2", "--steps", "1000",
                   "--out", str(out)])  # fmt: skip
    ranks = _staging_ranks(out, proc)
    _wait_for(lambda: (ranks / "pid-rank1").exists() and _progress_step(ranks) >= at_step, proc, f"step {at_step}")
    os.kill(int((ranks / "pid-rank1").read_text()), signal.SIGKILL)
    killed_at = time.monotonic()
    _, err = _wait(proc)
    problems = _after(out, {"failed"}, may_be_missing=False, wall_s=time.monotonic() - killed_at,
                      kind="SIGKILL of rank 1 of 2", params=[at_step])  # fmt: skip
    if proc.returncode != 1 or "internal error" in err or "Traceback" in err:
        problems.append(f"exit {proc.returncode}; stderr {err[-500:]!r}")
    if out.exists():
        by_rank = {r.rank: r for r in load_profile(out).ranks}
        if by_rank.get(1) is None or by_rank[1].status != "failed":
            problems.append(f"rank 1 is not 'failed': {by_rank.get(1)}")
    assert not problems, problems


class _StderrLines:
    """Collect a child's stderr lines in a thread; ``step()`` is the last step its progress lines named."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc):
        for line in proc.stderr:
            self.lines.append(line)

    def step(self) -> int:
        for line in reversed(self.lines):
            m = re.search(r"\bstep (\d+)", line)
            if m:
                return int(m.group(1))
        return -1

    def text(self) -> str:
        self.thread.join(timeout=10)
        return "".join(self.lines)


def _sigint_run(num_gpus: int, out: Path, model: Path, when) -> tuple[subprocess.Popen, _StderrLines, float]:
    """Start `planner profile` (progress lines on), send SIGINT when ``when(reader)`` holds; returns the time sent."""
    proc = _popen(["profile", "-m", str(model), *[a for a in TINY if a != "--no-progress"], "--gpus", str(num_gpus),
                   "--steps", "100000", "--out", str(out)])  # fmt: skip
    reader = _StderrLines(proc)
    _wait_for(lambda: when(reader), proc, "the moment to send SIGINT")
    proc.send_signal(signal.SIGINT)
    sent_at = time.monotonic()
    try:
        proc.wait(timeout=SUBPROCESS_LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"planner ran longer than {SUBPROCESS_LIMIT_S} s after SIGINT")
    return proc, reader, sent_at


@pytest.mark.parametrize("num_gpus, how, delay, at_step", SUBPROCESS_SIGINT,
                         ids=[f"{n}rank-{'after' + str(d) + 's' if h == 'after' else 'step' + str(k)}"
                              for n, h, d, k in SUBPROCESS_SIGINT])  # fmt: skip
def test_sigint_to_the_command(num_gpus, how, delay, at_step, model_dir, tmp_path):
    """Ctrl-C in a terminal: SIGINT to the planner process at a random point (imports, setup or a step)."""
    out = tmp_path / "p"
    started = time.monotonic()
    if how == "after":
        when = lambda reader: time.monotonic() - started >= delay  # noqa: E731
    else:
        when = lambda reader: reader.step() >= at_step  # noqa: E731
    proc, reader, sent_at = _sigint_run(num_gpus, out, model_dir / "tiny-llama", when)
    err = reader.text()
    problems = _after(out, {"interrupted"}, may_be_missing=True, wall_s=time.monotonic() - sent_at,
                      kind=f"SIGINT to the command, {num_gpus} rank(s)", params=[num_gpus, how, delay, at_step])  # fmt: skip
    if proc.returncode != 130 or "internal error" in err or "Traceback" in err:
        problems.append(f"exit {proc.returncode} (expected 130); stderr {err[-500:]!r}")
    assert not problems, problems


# Regression: CI's SIGINT 18.5 s into a 1000-step run took 66.5 s to end, because every step recorded so far
# was attributed and written. The CPU recording now stops after planner.profile.runner.CPU_RECORDED_STEPS.
def test_sigint_after_many_steps(model_dir, tmp_path):
    out = tmp_path / "p"
    proc, reader, sent_at = _sigint_run(1, out, model_dir / "tiny-llama", lambda reader: reader.step() >= 300)
    problems = _after(out, {"interrupted"}, may_be_missing=False, wall_s=time.monotonic() - sent_at,
                      kind="SIGINT to the command after 300 steps", params=[300])  # fmt: skip
    assert proc.returncode == 130 and not problems, problems
    summary = load_profile(out).summary
    assert summary["steps_recorded"] == CPU_RECORDED_STEPS and summary["steps_completed"] >= 300, summary


# The same profile of the tiny model, reporting its peak address space (VmPeak, KiB) at exit: the cap is set
# relative to it, since a CUDA build of torch maps far more address space than a CPU one.
VM_PROBE = """
import atexit, sys
VM_FILE = sys.argv[1]  # read before sys.argv is replaced below
def report():
    with open(VM_FILE, "w") as f:
        f.write([line for line in open("/proc/self/status") if line.startswith("VmPeak")][0].split()[1])
atexit.register(report)
sys.argv = ["planner", *sys.argv[2:]]
from planner.cli.app import main
main()
"""


def test_memory_cap_forces_oom(model_dir, tmp_path):
    out = tmp_path / "p"
    vm_file = tmp_path / "vmpeak"
    probe = subprocess.run([sys.executable, "-c", VM_PROBE, str(vm_file), "profile", "-m", str(model_dir / "tiny-llama"),
                            *TINY, "--steps", "1", "--out", str(tmp_path / "probe")], cwd=ROOT, capture_output=True,
                           text=True, timeout=SUBPROCESS_LIMIT_S)  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-2000:]
    cap = int(vm_file.read_text()) * 1024 + 2**30  # room for the fp32 weights (0.8 GB), not for grads and AdamW

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    started = time.monotonic()
    proc = _popen(["profile", "-m", str(model_dir / "big-llama"), "--precision", "fp32", "-b", "1", "-s", "16",
                   "--device", "cpu", "--no-progress", "--steps", "2", "--out", str(out)], preexec_fn=limit)  # fmt: skip
    _, err = _wait(proc)
    problems = _after(out, {"oom"}, may_be_missing=False, wall_s=0.0, kind="memory cap (RLIMIT_AS)",
                      params=[cap, round(time.monotonic() - started, 1)])  # fmt: skip
    if proc.returncode != 1 or "internal error" in err or "out of memory" not in err:
        problems.append(f"exit {proc.returncode}; stderr {err[-500:]!r}")
    assert not problems, problems


# ------------------------------------------------------------------------------------------- truncated files


def _truncations(good: Path) -> list[tuple[str, int]]:
    rng = random.Random(FAULT_SEED + 1)
    cases = []
    for f in sorted(p for p in good.iterdir() if p.is_file()):
        size = f.stat().st_size
        cases += [(f.name, 0)] + [(f.name, rng.randrange(1, size)) for _ in range(TRUNCATIONS_PER_FILE - 1)]
    return cases


def test_truncated_files_fail_every_reader_cleanly(good_profile, tmp_path):
    cases = _truncations(good_profile)
    assert {name for name, _ in cases} >= {"meta.json", "summary.json", "timeline.parquet"}
    problems = []
    for name, offset in cases:
        bad = tmp_path / f"{name}-{offset}"
        shutil.copytree(good_profile, bad)
        with open(bad / name, "r+b") as f:
            f.truncate(offset)
        case = []
        try:
            load_profile(bad)
            case.append("load_profile accepted it")
        except PlannerError:
            pass
        except Exception as exc:  # noqa: BLE001 - anything else is the defect this test looks for
            case.append(f"load_profile raised {type(exc).__name__}: {exc}")
        for args in (["compare", str(bad)], ["report", "--profile", str(bad), "-o", str(tmp_path / "r.html"), "--no-accuracy"]):
            res = run_inprocess(args)
            if res.code != 1 or res.internal or len(res.stderr.strip().splitlines()) != 1:
                case.append(f"{args[0]}: exit {res.code}, stderr {res.stderr!r} {res.internal[-200:]}")
        if (tmp_path / "r.html").exists():
            case.append("report wrote r.html from a truncated profile")
            (tmp_path / "r.html").unlink()
        OUTCOMES.append({"kind": "truncated file", "params": [name, offset], "status": "refused" if not case else "?",
                         "after_fault_s": 0, "problems": case})  # fmt: skip
        problems += [f"{name} cut at {offset}: {p}" for p in case]
    assert not problems, problems


def test_plan_has_at_least_30_faults():
    """Issue 9: at least 30 injected faults across single-rank and 2-rank runs (truncations not counted)."""
    faults = (len(EXCEPTION_FAULTS) + len(SIGINT_DELAYS) + 1 + 2 + len(TWO_RANK_EXCEPTIONS) + len(SIGKILL_AT_STEP)
              + len(SUBPROCESS_SIGINT) + 1)  # fmt: skip
    assert faults >= 30
