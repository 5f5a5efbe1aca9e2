"""N ranks under torchrun: start it, watch it, stop it, and read what each rank wrote.

``run_torchrun`` starts ``python -m torch.distributed.run`` under lifeline (it dies with this process) with a
rendezvous on 127.0.0.1 and a free port, polls the ranks' progress, watches start-up (startup.py), forwards
Ctrl-C and SIGTERM and, once torchrun exits, kills any worker still alive. ``read_rank`` reads a rank's
recording, or stands in for a rank that wrote none.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from planner.errors import PlannerError
from planner.profile import lifeline
from planner.profile.cpu_kind import rank_threads
from planner.profile.job import Job, Terminated
from planner.profile.progress import ProgressDisplay, ProgressFile
from planner.profile.startup import StartupWatch, stale_extension_locks

# Seconds to wait for torchrun to wind the workers down after Ctrl-C before killing them.
INTERRUPT_GRACE_S = 60


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(job: Job, staging: Path, display: ProgressDisplay) -> tuple[str | None, int | None]:
    """Start torchrun; poll progress; forward Ctrl-C and SIGTERM; watch start-up; kill leftovers.

    Returns (the signal that interrupted the run or None, torchrun's exit code); raises PlannerError when
    start-up stalled (startup.py)."""
    job_path = staging / "job.json"
    job_path.write_text(job.to_json())
    (staging / "ranks").mkdir(exist_ok=True)
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    env = lifeline.child_env(env)
    env.setdefault("OMP_NUM_THREADS", str(rank_threads(job.num_ranks)))
    env["MASTER_ADDR"] = "127.0.0.1"
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    for lock in stale_extension_locks():
        print(f"warning: {lock.sentence()}.", file=sys.stderr)
    # torchrun runs under lifeline, which makes it die with this process (its workers die with it in turn)
    cmd = [
        sys.executable, "-m", "planner.profile.lifeline", "torch.distributed.run",
        "--nnodes=1", f"--nproc-per-node={job.num_ranks}", "--max-restarts=0",
        "--master-addr=127.0.0.1", f"--master-port={_free_port()}",
        "-m", "planner.profile.worker", str(job_path),
    ]  # fmt: skip
    log = open(staging / "launcher.log", "wb")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)  # fmt: skip
    interrupted: str | None = None
    stalled: str | None = None
    watch = StartupWatch()
    try:
        while proc.poll() is None:
            p = ProgressFile.read(staging / "ranks" / "progress.json")
            if p:
                display.update(p["step"], p["phase"], p["bytes"])
            watch.update(p)
            stalled = watch.stalled()
            if stalled:
                break
            time.sleep(0.2)
    except KeyboardInterrupt as exc:
        sig = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        interrupted = sig.name
        proc.send_signal(sig)
        try:
            proc.wait(timeout=INTERRUPT_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        _kill_leftover_workers(staging / "ranks")
    if stalled:
        raise PlannerError(f"{stalled}.")
    return interrupted, proc.returncode


def _kill_leftover_workers(rank_dir: Path) -> None:
    for pid_file in rank_dir.glob("pid-rank*"):
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue  # gone already
        if b"planner.profile.worker" in cmdline and str(rank_dir.parent).encode() in cmdline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def read_rank(rank_dir: Path, rank: int, exit_code: int | None) -> dict:
    import json

    path = rank_dir / f"rank{rank}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return _missing_rank(rank, exit_code)


def _missing_rank(rank: int, exit_code: int | None) -> dict:
    return {
        "rank": rank,
        "status": "failed",
        "message": f"rank {rank} exited without writing its recording (launcher exit code {exit_code}).",
        "steps_completed": 0,
        "steady_state": False,
        "peak": None,
        "phases": {},
        "identity": {},
        "cuda": None,
        "files": [],
    }
