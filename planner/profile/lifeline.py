"""Child processes that die with their parent, so a killed `planner profile` or `planner validate` leaves nothing
training behind it.

Linux's ``prctl(PR_SET_PDEATHSIG)`` asks the kernel to signal a process when its parent ends, even when the
parent is SIGKILLed and can run no cleanup. Each link of the chain asks for it in its own first lines (no
``preexec_fn``, which is unsafe in a parent with threads): the validation worker (parent: `planner
validate`), torchrun (parent: the planner process that launched it; torchrun runs under ``python -m
planner.profile.lifeline``, which asks and then runs torchrun in the same process) and every rank (parent:
torchrun). A child whose parent died before it asked would wait forever, so it compares its parent with
the process id its parent wrote into ``PLANNER_LIFELINE_PARENT`` and dies at once when they differ.

The signal is sent when the parent *thread* that started the child ends: the launchers here start children
from a thread that waits for them (torchrun starts its workers from its main thread).
"""

from __future__ import annotations

import os
import signal
import sys

PARENT_ENV = "PLANNER_LIFELINE_PARENT"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) plus this process's id, for a child that calls ``die_with_parent``."""
    return {**(os.environ if env is None else env), PARENT_ENV: str(os.getpid())}


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send ``sig`` to this process when its parent ends; if the parent named in
    ``PLANNER_LIFELINE_PARENT`` is gone already, take the signal now. False where prctl is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    expected = os.environ.get(PARENT_ENV, "")
    if expected.isdigit() and os.getppid() != int(expected):
        os.kill(os.getpid(), sig)  # the parent died before we asked: we were re-parented already
    return True


def main(argv: list[str]) -> None:
    """``python -m planner.profile.lifeline MODULE ARGS...``: die with the parent, then run MODULE as __main__
    in this process (its children see this process as their parent)."""
    import runpy

    die_with_parent()
    os.environ[PARENT_ENV] = str(os.getpid())
    sys.argv = [argv[1], *argv[2:]]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv)
