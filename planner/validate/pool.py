"""Worker processes that profile cells (planner/validate/worker.py), driven by one thread each.

Parent and workers talk through pipes only, so nothing depends on how the parent was started (pytest,
``python -m planner``, a script), unlike multiprocessing's spawn, which re-imports the parent's main module.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from planner.profile.lifeline import child_env
from planner.validate.matrix import Cell

WORKER_LOG = "worker.log"  # the workers' stdout and stderr (transformers, DeepSpeed and torchrun chatter)
MAX_TRIES = 2  # a cell whose worker process died is tried once more in a fresh worker


class Worker:
    """One ``python -m planner.validate.worker`` process, asked one cell at a time."""

    def __init__(self, log_path: Path):
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        env = child_env(env)  # the worker dies with this process (lifeline.py): it is started from a thread
        # that outlives it (``Pool._serve`` closes its worker before it returns)
        # Before torch loads: C++ warnings about blocks allocated before recording began are expected.
        env.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
        self.proc = subprocess.Popen([sys.executable, "-m", "planner.validate.worker", str(log_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip

    def ask(self, cell: Cell, out: Path) -> dict[str, Any] | None:
        """The worker's answer ({status, message, wall_s}), or None when it died."""
        try:
            self.proc.stdin.write(json.dumps({"cell": cell.to_dict(), "out": str(out)}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
            return json.loads(line) if line else None
        except (OSError, ValueError):
            return None

    def close(self, timeout: float = 10) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Pool:
    """``jobs`` threads, each driving its own worker process, taking cells from one queue."""

    def __init__(self, cells: list[Cell], jobs: int, cache_dir: Path):
        self.work: queue.Queue[Cell] = queue.Queue()
        self.done: queue.Queue[tuple[Cell, dict[str, Any] | None]] = queue.Queue()
        self.cache_dir = cache_dir
        self.workers: list[Worker] = []
        self.lock = threading.Lock()
        for c in cells:
            self.work.put(c)
        self.threads = [threading.Thread(target=self._serve, daemon=True) for _ in range(min(jobs, len(cells)))]
        for t in self.threads:
            t.start()

    def _spawn(self) -> Worker:
        w = Worker(self.cache_dir / WORKER_LOG)
        with self.lock:
            self.workers.append(w)
        return w

    def _serve(self) -> None:
        worker: Worker | None = None
        while True:
            try:
                cell = self.work.get_nowait()
            except queue.Empty:
                break
            answer = None
            for _ in range(MAX_TRIES):
                worker = worker or self._spawn()
                answer = worker.ask(cell, self.cache_dir / cell.id)
                if answer is not None:
                    break
                worker.close(timeout=0)
                worker = None
            self.done.put((cell, answer))
        if worker is not None:
            worker.close()

    def results(self, count: int) -> Iterator[tuple[Cell, dict[str, Any] | None]]:
        """The next ``count`` answers as they come (None: the worker died twice on that cell)."""
        for _ in range(count):
            while True:
                try:
                    yield self.done.get(timeout=0.5)
                    break
                except queue.Empty:
                    continue

    def join(self) -> None:
        """Wait for the threads, which close their workers (so no worker outlives the run)."""
        for t in self.threads:
            t.join()

    def stop(self, grace_s: float) -> None:
        """After Ctrl-C: take no more cells, let running profiles write what they recorded, then end."""
        while True:
            try:
                self.work.get_nowait()
            except queue.Empty:
                break
        with self.lock:
            workers = list(self.workers)
        for w in workers:
            if w.proc.poll() is None:
                try:
                    w.proc.send_signal(signal.SIGINT)
                except ProcessLookupError:
                    pass
        deadline = time.time() + grace_s
        for t in self.threads:
            t.join(timeout=max(0.0, deadline - time.time()))
        for w in workers:
            w.close(timeout=0)
