"""Recording injected into a user's own training process (``planner profile -- COMMAND``), no edit to the script.

``planner profile -- COMMAND`` (command.py) runs COMMAND with ``planner/profile/hook`` first on PYTHONPATH and
``PLANNER_PROFILE_JOB`` naming the job file; that directory's ``sitecustomize.py`` calls ``activate`` in every
Python process that starts. A process records when it is a training process: torchrun, DeepSpeed and accelerate
set ``RANK`` in their workers; a process that is itself a launcher (``torchrun``, ``deepspeed``, ``accelerate``,
``python -m torch.distributed.run``, ...) does not record, and neither does any process started by a recording
one (``PLANNER_PROFILE_ACTIVE``: data-loader or compile workers). A recording process starts planner's own
recorder (recorders.py: ``CpuRecorder`` or ``CudaRecorder``) before the script runs, so every tensor is seen
allocated, and marks the windows the replay (attribution.py) reads, from what the libraries do:

- ``step::S::MB::forward``: the outermost module call (a global forward hook; DDP and the DeepSpeed engine are
  modules); ``loss``: from its end to the start of backward (a loss computed outside the model);
  ``backward``: the outermost ``torch.autograd.backward`` (``Tensor.backward`` calls it), or the DeepSpeed
  engine's own ``backward`` (which also reduces the gradients); a checkpointed layer's forward re-run inside
  backward is a ``recompute`` window; ``optimizer_step``: the outermost ``torch.optim.Optimizer.step`` (global
  step hooks) or the DeepSpeed engine's ``step``; ``inputs``: from the end of a backward or a step to the next
  forward (the batch is made there); ``setup::wrap``: DDP's construction, the HF Trainer's ``accelerator.prepare``
  (DeepSpeed's initialize runs in it);
- identity probes (identity.py) of the model (the outermost module) and its optimizer (the one stepped, or the
  DeepSpeed engine's) at the start and end of every backward, after every step, when each gradient is made
  (HF Trainer: hooks registered before DeepSpeed's) and before ZeRO 1/2 partition the gradients.

After ``steps`` optimizer steps the rank's recording is attributed and written (rank_output.py) like a
``planner profile`` rank; an HF Trainer is then stopped by its callback (trainer_hook.py), any other script
exits. A script that ends earlier (an error, fewer steps) writes what it recorded with its status.

The recording process itself, ``Session``, is in inject_session.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from planner.profile.inject_session import Session

ENV_JOB = "PLANNER_PROFILE_JOB"
ENV_ACTIVE = "PLANNER_PROFILE_ACTIVE"
# Launchers: they start the training processes and never train themselves (console script or module names).
LAUNCHERS = frozenset({"torchrun", "deepspeed", "accelerate", "torch.distributed.run", "torch.distributed.launch",
                       "deepspeed.launcher.runner", "deepspeed.launcher.launch", "accelerate.commands.launch",
                       "accelerate.commands.accelerate_cli"})

_session: Session | None = None


def program(argv: list[str]) -> str:
    """The script or module a Python command line runs: ``-m NAME`` -> NAME, else the script's file stem."""
    args = argv[1:]
    while args:
        a = args.pop(0)
        if a == "-m" and args:
            return args[0]
        if a.startswith("-m") and len(a) > 2:
            return a[2:]
        if a in ("-c",):
            return "-c"
        if a.startswith("-"):
            if a in ("-W", "-X") and args:
                args.pop(0)
            continue
        return Path(a).stem if a.endswith(".py") else Path(a).name
    return ""


def should_record(env: dict[str, str], argv: list[str]) -> bool:
    if not env.get(ENV_JOB) or env.get(ENV_ACTIVE):
        return False
    return program(argv) not in LAUNCHERS


def activate() -> None:
    """Called by the hook's sitecustomize.py at interpreter start-up."""
    global _session
    if _session is not None or not should_record(dict(os.environ), list(getattr(sys, "orig_argv", sys.argv))):
        return
    os.environ[ENV_ACTIVE] = str(os.getpid())
    from planner.profile.job import Job

    job_path = Path(os.environ[ENV_JOB])
    _session = Session(Job.from_json(job_path.read_text()), job_path.parent / "ranks")
    _session.start()


def session() -> Session | None:
    return _session


__all__ = ["ENV_ACTIVE", "ENV_JOB", "LAUNCHERS", "Session", "activate", "program", "session", "should_record"]
