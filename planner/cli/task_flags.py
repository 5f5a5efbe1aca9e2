"""The one rule a task's own flags share (--task grpo's and ppo's): typed with another task, they are refused."""

from __future__ import annotations

from planner.errors import PlannerError
from planner.specs import Task


def for_task(f, task: Task, flags: tuple[str, ...]) -> bool:
    """True when ``f.task`` is ``task``; otherwise the first of its ``flags`` the user typed is refused in one
    sentence (a flag left at its default is not), and False."""
    if f.task.lower() == task.value:
        return True
    typed = sorted(n for n in flags if n in f.typed)
    if typed:
        raise PlannerError(f"--{typed[0].replace('_', '-')} applies to --task {task.value}, not --task {f.task}.")
    return False
