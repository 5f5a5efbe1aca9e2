"""Progress on stderr: a rich bar with step, phase and current memory (a plain line per step off a terminal)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from planner.units import fmt_gib


class ProgressDisplay:
    def __init__(self, total_steps: int, device: str, enabled: bool = True):
        self.total = total_steps
        self.mem_label = "allocated" if device == "cuda" else "RSS"
        self.enabled = enabled
        self._progress = None
        self._task = None
        self._last_step = None

    def __enter__(self) -> ProgressDisplay:
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        if console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]profile[/bold]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[phase]:<16}"),
                TextColumn("{task.fields[mem]}"),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("profile", total=self.total, phase="setup", mem="")
        else:
            self._console = console
        return self

    def update(self, step: int, phase: str, current_bytes: int) -> None:
        if not self.enabled:
            return
        mem = f"{self.mem_label} {fmt_gib(current_bytes)}" if current_bytes else ""
        label = "setup" if step < 0 else f"step {step} {phase}"
        if self._progress is not None:
            self._progress.update(self._task, completed=max(step, 0), phase=label, mem=mem)
        elif step != self._last_step:
            self._console.print(f"profile: {label} {mem}".rstrip(), highlight=False)
        self._last_step = step

    def finish(self, steps_completed: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=steps_completed, phase="done")

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


class ProgressFile:
    """Rank 0 of a torchrun job reports progress through a small JSON file the parent polls."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, step: int, phase: str, current_bytes: int) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"step": step, "phase": phase, "bytes": current_bytes}))
        os.replace(tmp, self.path)

    @staticmethod
    def read(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None
