"""A profiling worker process: ``python -m planner.validate.worker LOG``.

It reads one JSON request per line on stdin (``{"cell": {...}, "out": "DIR"}``), profiles the cell into DIR
with planner.profile and answers one JSON line (``{"status", "message", "wall_s"}``) on its original
stdout. Everything else the libraries print (transformers, DeepSpeed, torchrun) goes to LOG, so the
parent's progress bar stays readable. torch, transformers, peft and bitsandbytes are imported once per
worker, not once per cell. Parent and worker talk through pipes only: nothing depends on how the parent
was started (pytest, ``python -m planner``, a script). The worker dies with its parent, and the profile it
is running with it (planner/profile/lifeline.py).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def profile_cell(cell_dict: dict, out: str) -> dict:
    from planner.errors import PlannerError
    from planner.profile.launcher import run_profile
    from planner.validate.matrix import STEPS, Cell

    cell = Cell.from_dict(cell_dict)
    started = time.time()
    print(f"=== {cell.id}", flush=True)
    try:
        status, message, _ = run_profile(cell.model_spec(), cell.train_spec(), num_gpus=cell.num_ranks, steps=STEPS,
                                         device="cpu", out=Path(out), force=True, seed=0, show_progress=False)  # fmt: skip
    except PlannerError as exc:
        status, message = "failed", str(exc)
    except KeyboardInterrupt:
        status, message = "interrupted", "the validation run was interrupted."
    except Exception as exc:  # noqa: BLE001 - one cell's bug must not end the matrix
        status, message = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return {"status": status, "message": message, "wall_s": time.time() - started}


def main() -> None:
    from planner.profile.lifeline import die_with_parent

    die_with_parent()
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    answer = os.fdopen(os.dup(1), "w", buffering=1)
    log = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        answer.write(json.dumps(profile_cell(request["cell"], request["out"])) + "\n")
        answer.flush()


if __name__ == "__main__":
    main()
