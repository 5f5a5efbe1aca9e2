"""Run the real `planner` entry point (planner.cli.app.main) cheaply and in isolation, for the reliability tests.

``run_forked`` forks this process once per invocation: the child redirects its stdout and stderr to files,
moves to its own empty working and temporary directories, caps its address space (RLIMIT_AS), sets
``sys.argv`` and calls ``main()`` exactly as the console script does; the parent waits with a deadline and
kills the child if it overruns. Python, typer and planner are imported once (here), so a case costs only the
command's own work, while exit codes, stderr and memory are those of a real process.

``run_inprocess`` calls the typer app in this process with main()'s exception handling (for the fuzzer:
thousands of invocations, no fork).
"""

from __future__ import annotations

import io
import os
import resource
import signal
import sys
import tempfile
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from planner.cli.app import app, main
from planner.errors import PlannerError, one_sentence

# Extra address space a case may map on top of what this process already maps (torch and pandas in a
# test session map a few GiB of virtual memory before the command starts).
HEADROOM_BYTES = 2 * 2**30
TRACEBACK_MARKERS = ("Traceback (most recent call last)", 'File "')


@dataclass(frozen=True)
class Outcome:
    code: int | None  # exit status; None when the child was killed (timeout or signal)
    stdout: str
    stderr: str
    wall_s: float
    killed: str = ""  # why the parent killed the child, if it did
    internal: str = ""  # in-process only: an exception other than PlannerError (a bug), with its trace

    @property
    def has_traceback(self) -> bool:
        return any(m in self.stderr for m in TRACEBACK_MARKERS) or any(m in self.stdout for m in TRACEBACK_MARKERS)


def _vm_size_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def run_forked(
    args: list[str], *, cwd: Path, tmp: Path, timeout_s: float = 5.0, headroom_bytes: int = HEADROOM_BYTES,
    env: dict[str, str] | None = None,
) -> Outcome:  # fmt: skip
    """Run ``planner ARGS`` in a forked child of this process; see the module docstring."""
    out_path, err_path = tmp / ".stdout", tmp / ".stderr"
    limit = _vm_size_bytes() + headroom_bytes
    sys.stdout.flush()
    sys.stderr.flush()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test session
        code = 70
        try:
            out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
            sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), write_through=True)
            sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), write_through=True)
            sys.stdin = io.StringIO("")
            os.chdir(cwd)
            os.environ.update({"TMPDIR": str(tmp), "COLUMNS": "200", "HF_HUB_OFFLINE": "1", **(env or {})})
            tempfile.tempdir = None
            signal.signal(signal.SIGINT, signal.default_int_handler)
            resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
            sys.argv = ["planner", *args]
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - report whatever escaped main() as a traceback on stderr
            traceback.print_exc()
            code = 71
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    killed = ""
    deadline = started + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            killed = f"ran longer than {timeout_s} s"
            break
        time.sleep(0.005)
    wall = time.monotonic() - started
    code = os.waitstatus_to_exitcode(status)
    if code < 0 and not killed:
        killed = f"died of signal {-code}"
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    out_path.unlink()
    err_path.unlink()
    return Outcome(code if code >= 0 else None, stdout, stderr, wall, killed)


def run_inprocess(args: list[str]) -> Outcome:
    """Call the typer app here, handling exceptions as planner.cli.app.main does."""
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    internal = ""
    code: int | None
    with redirect_stdout(out), redirect_stderr(err):
        try:
            app(args, prog_name="planner", standalone_mode=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except PlannerError as exc:
            err.write(f"error: {one_sentence(exc)}\n")
            code = 1
        except KeyboardInterrupt:
            err.write("error: interrupted.\n")
            code = 130
        except Exception:  # noqa: BLE001 - main() would print "internal error": a bug the tests report
            internal = traceback.format_exc()
            code = 1
    return Outcome(code, out.getvalue(), err.getvalue(), time.monotonic() - started, internal=internal)


def tree(root: Path) -> set[str]:
    """Every path under ``root``, relative, for "nothing was written" checks."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}
