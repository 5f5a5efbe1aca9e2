"""Start-up of a torchrun profile: a stall watchdog and stale torch extension build locks.

A multi-rank run spends its first seconds to minutes importing, joining the process group (the gloo or NCCL
rendezvous, plus DeepSpeed's JIT build of its CPU shared-memory op where it is not skipped) and wrapping the
model in the data-parallel engine (DeepSpeed may load more ops there). A peer that never arrives, or an op
build waiting on a lock nobody will release, blocks these phases forever. ``StartupWatch`` gives each of
them a time limit; building the model has none (its time grows with the model).

``torch.utils.cpp_extension`` serialises builds with a ``lock`` file in the op's build directory
(``<TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions/py<ver>_<cpu|cuXY>>/<op>/lock``, torch/utils/
file_baton.py): the builder creates it with O_EXCL, holds it open while it builds and removes it at the end;
everyone else polls until it is gone, with no time limit. A build that was killed leaves the file behind,
and every later load of that op waits forever. A lock file that no process holds open is such a leftover.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

# Joining the process group and wrapping the model each get this long (PLANNER_STARTUP_TIMEOUT_S overrides).
# The slowest legitimate case seen: DeepSpeed's shm op JIT build, ~1.5 min on 2 cores (scripts/setup.sh).
STARTUP_TIMEOUT_S = 600.0
# From launch to rank 0's first progress report: torchrun's and the workers' imports (~20-100 s on a busy
# 2-core machine), never a rendezvous; generous, it only catches a launcher that hangs outright.
LAUNCH_TIMEOUT_S = 900.0
TIMED_PHASES = {"init": "joining the process group (rendezvous, DeepSpeed op build)",
                "wrap": "wrapping the model in the data-parallel engine (DeepSpeed initialize, op loads)"}  # fmt: skip


def startup_timeout_s() -> float:
    value = os.environ.get("PLANNER_STARTUP_TIMEOUT_S", "")
    try:
        return float(value) if value and float(value) > 0 else STARTUP_TIMEOUT_S
    except ValueError:
        return STARTUP_TIMEOUT_S


def extension_roots() -> list[Path]:
    """Where torch JIT-builds C++ extensions: TORCH_EXTENSIONS_DIR/<op>, else <cache>/torch_extensions/<tag>/<op>."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return [Path(os.environ["TORCH_EXTENSIONS_DIR"])]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch_extensions"
    try:
        return sorted(p for p in cache.iterdir() if p.is_dir())
    except OSError:
        return []


def _open_paths() -> tuple[set[str], bool]:
    """Every path some visible process holds open, and whether some process's files could not be read."""
    held: set[str] = set()
    partial = False
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            partial = partial or proc.exists()
            continue
        for fd in fds:
            try:
                held.add(os.readlink(fd))
            except OSError:
                pass
    return held, partial


@dataclass(frozen=True)
class StaleLock:
    path: Path
    age_s: float
    certain: bool  # False: some processes' open files could not be read (another user's build may hold it)

    def sentence(self) -> str:
        who = "no process holds it" if self.certain else "no process this user can see holds it"
        age = f"{self.age_s:.0f} s" if self.age_s < 120 else f"{self.age_s / 60:.0f} min"
        return (f"the torch extension build lock {str(self.path)!r} is {age} old and {who}, "
                "left by a killed build: every load of that op waits for it forever; delete it")  # fmt: skip


def stale_extension_locks() -> list[StaleLock]:
    locks = [lock for root in extension_roots() for lock in sorted(root.glob("*/lock")) if lock.is_file()]
    if not locks:
        return []
    held, partial = _open_paths()
    now = time.time()
    stale = []
    for lock in locks:
        if str(lock.resolve()) in held or str(lock) in held:
            continue
        try:
            age = now - lock.stat().st_mtime
        except OSError:
            continue  # released meanwhile
        stale.append(StaleLock(lock, max(age, 0.0), not partial))
    return stale


class StartupWatch:
    """Fed rank 0's progress ({step, phase} or None) while torchrun runs; ``stalled()`` says why it gave up."""

    def __init__(self, timeout_s: float | None = None, launch_timeout_s: float = LAUNCH_TIMEOUT_S):
        self.timeout_s = startup_timeout_s() if timeout_s is None else timeout_s
        self.launch_timeout_s = max(launch_timeout_s, self.timeout_s)
        self.stage = "launch"
        self.since = time.monotonic()
        self.done = False

    def update(self, progress: dict | None) -> None:
        if self.done or progress is None:
            return
        if int(progress.get("step", -1)) >= 0:
            self.done = True
            return
        phase = str(progress.get("phase", ""))
        if phase != self.stage:
            self.stage, self.since = phase, time.monotonic()

    def stalled(self) -> str | None:
        """None while within the limits, else one sentence (without the final period) on what stalled."""
        if self.done:
            return None
        waited = time.monotonic() - self.since
        if self.stage == "launch" and waited > self.launch_timeout_s:
            what = "torchrun and its workers did not start (rank 0 never reported)"
        elif self.stage in TIMED_PHASES and waited > self.timeout_s:
            what = f"rank 0 spent more than {self.timeout_s:.0f} s {TIMED_PHASES[self.stage]}"
        else:
            return None
        locks = stale_extension_locks()
        why = f"; {locks[0].sentence()}" if locks else (
            "; a peer rank may be stuck or dead, or another job holds the rendezvous port"
            if self.stage == "init" else "")  # fmt: skip
        return f"the run was stopped during start-up: {what}{why}"
