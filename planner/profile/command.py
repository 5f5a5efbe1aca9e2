"""``planner profile -- COMMAND``: run the user's own training command with recording injected, then assemble
its ranks' recordings into a profile directory that ``planner compare`` reads.

COMMAND runs as given (python, torchrun, accelerate launch, deepspeed), in the current directory, its output
on this terminal, with ``planner/profile/hook`` and planner's own root first on ``PYTHONPATH`` and
``PLANNER_PROFILE_JOB`` naming the job file: every training process records itself (inject.py) and writes
``ranks/rank<r>.json`` with its timeline. The profile's ``meta.json`` carries the model and train specs the
run was declared with (``--from FILE`` or flags), so ``planner compare`` estimates that run; the number of
ranks that recorded must equal ``--gpus``. Ctrl-C or SIGTERM is passed on to the command, which still writes
what it recorded.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from planner.errors import PlannerError
from planner.profile.job import Job
from planner.profile.run_summary import overall_status, run_meta
from planner.profile.store import assemble, check_target, publish, staging_dir
from planner.profile.torchrun import read_rank
from planner.specs import ModelSpec, TrainSpec, train_spec_to_dict

HOOK_DIR = Path(__file__).resolve().parent / "hook"
PLANNER_ROOT = Path(__file__).resolve().parents[2]


def command_env(job_file: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment COMMAND runs in: the hook first on PYTHONPATH, then planner, then the user's own."""
    env = dict(os.environ if base is None else base)
    parts = [str(HOOK_DIR), str(PLANNER_ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PLANNER_PROFILE_JOB"] = str(job_file)
    env.pop("PLANNER_PROFILE_ACTIVE", None)
    env.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # blocks allocated before the recording began are expected
    return env


def _run(command: list[str], env: dict[str, str]) -> tuple[int, str | None]:
    """(exit code, the signal that interrupted it or None)."""
    try:
        proc = subprocess.Popen(command, env=env)
    except OSError as exc:
        raise PlannerError(f"cannot run {command[0]!r}: {exc.strerror or exc}.") from None
    interrupted = None
    while True:
        try:
            return proc.wait(), interrupted
        except KeyboardInterrupt:
            interrupted = "SIGINT"
            proc.send_signal(signal.SIGINT)


def run_command_profile(
    model: ModelSpec,
    train: TrainSpec,
    command: list[str],
    *,
    num_gpus: int,
    num_nodes: int = 1,
    steps: int = 3,
    device: str,
    out: Path,
    force: bool = False,
    gpu: str | None = None,
) -> tuple[str, str, Path]:
    """Profile COMMAND for ``steps`` optimizer steps; returns (status, message, profile directory)."""
    if not command:
        raise PlannerError("give the training command after '--', e.g. planner profile --from cfg.yaml -- python train.py.")
    if steps < 1:
        raise PlannerError(f"--steps must be at least 1, got {steps}.")
    check_target(out, force)
    job = Job(model_name=model.name, model_config=model.config, train=train_spec_to_dict(train), num_ranks=num_gpus,
              device=device, steps=steps)  # fmt: skip
    meta = run_meta(job, model, train, num_nodes, gpu)
    meta["command"] = list(command)
    meta["workload"] = {"engine": "the user's command", "command": list(command),
                        "recording": "injected (planner/profile/inject.py); HF Trainer: PlannerCallback"}
    staging = staging_dir(out)
    try:
        if staging.exists():
            shutil.rmtree(staging)
        (staging / "ranks").mkdir(parents=True)
        job_file = staging / "job.json"
        job_file.write_text(job.to_json())
    except OSError as exc:
        raise PlannerError(f"cannot create the profile directory in {str(out.parent)!r}: {exc.strerror or exc}; "
                           "choose a writable --out.") from None
    try:
        code, interrupted = _run(command, command_env(job_file))
        written = sorted(int(p.stem[len("rank"):]) for p in (staging / "ranks").glob("rank*.json")
                         if p.stem[len("rank"):].isdigit())
        if not written and not interrupted:
            raise PlannerError(f"the command exited with code {code} and no process of it recorded a training step; "
                               "is it a Python training script (python, torchrun, accelerate or deepspeed)?")
        num_ranks = max([*written, num_gpus - 1]) + 1
        if written and num_ranks != num_gpus:
            raise PlannerError(f"the command ran {num_ranks} training processes but the run was declared with "
                               f"{num_gpus} GPUs; pass --gpus {num_ranks} (or the accelerate config it launches "
                               "with) so the estimate is of the same run.")
        ranks = [read_rank(staging / "ranks", r, code) for r in range(num_ranks)]
        status, message = overall_status(ranks, interrupted, num_ranks)
        if status == "ok" and code != 0:
            message = f"the command exited with code {code} after every rank recorded its steps."
        job_file.unlink(missing_ok=True)
        for p in (staging / "ranks").glob("pid-rank*"):
            p.unlink()
        assemble(staging, meta, ranks, status, message, num_ranks)
        publish(staging, out, force)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise PlannerError(f"could not write the profile to {str(out)!r} ({exc.strerror or type(exc).__name__}); "
                           "nothing was kept.") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return status, message, out
