"""planner's recording hook: this directory is put first on PYTHONPATH by `planner profile -- COMMAND`
(planner/profile/command.py), so Python imports this file at start-up in every process of the command.
It does nothing unless PLANNER_PROFILE_JOB is set; then planner/profile/inject.py decides whether this
process trains (and records) or is a launcher (and does not)."""

import os

if os.environ.get("PLANNER_PROFILE_JOB"):
    try:
        from planner.profile import inject

        inject.activate()
    except Exception as exc:  # noqa: BLE001 - never break the user's command; say why nothing is recorded
        import sys

        print(f"planner: recording could not start in process {os.getpid()}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
