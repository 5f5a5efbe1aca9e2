"""Entry point of one torchrun worker: ``python -m planner.profile.worker JOB.json``.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE. The worker joins the process group inside the recorded run,
writes ``ranks/rank<r>.json`` and its timeline next to the job file, and exits 0 (ok), 1 (oom or failed) or
130 (interrupted), so that torchrun stops the other ranks when one fails. It dies with torchrun
(planner/profile/lifeline.py), so no rank outlives a killed launcher.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from planner.profile.lifeline import die_with_parent

    die_with_parent()
    from planner.profile.progress import ProgressFile
    from planner.profile.runner import Job, run_rank
    from planner.specs import train_spec_from_dict

    job_path = Path(argv[1])
    job = Job.from_json(job_path.read_text())
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    rank_dir = job_path.parent / "ranks"
    rank_dir.mkdir(exist_ok=True)
    (rank_dir / f"pid-rank{rank}").write_text(str(os.getpid()))
    progress = ProgressFile(rank_dir / "progress.json") if rank == 0 else None
    uses_deepspeed = train_spec_from_dict(job.train).uses_deepspeed

    def init() -> None:
        from planner.profile.engine import init_distributed

        init_distributed(job.device, uses_deepspeed)

    summary = run_rank(job, rank, local_rank, rank_dir, progress=progress, init=init)
    if summary["status"] == "ok":
        import torch.distributed as dist

        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        return 0
    return 130 if summary["status"] == "interrupted" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
