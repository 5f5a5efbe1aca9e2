"""Run validation cells: a real profile of each (planner.profile, in worker processes), then its estimate.

Profiles run in a pool of ``jobs`` spawned worker processes, each importing torch, transformers, peft and
bitsandbytes once for all the cells it runs (a single-rank cell then takes seconds); a two-rank cell's
worker starts torchrun, which runs the ranks under DeepSpeed with gloo. This process never imports torch:
it estimates each cell (``estimate(..., device="cpu")``) as soon as its profile is in, and rewrites the
CSV and Markdown reports after every cell, so an interrupted matrix keeps what it finished.

Resume: a cell whose profile directory under the cache (``profiles/validation/<cell id>/``) loads with
status ok and the cell's exact inputs, or whose measured rows are in the existing CSV, is not profiled
again; its estimate is always recomputed, since the estimator is what is being validated.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import PlannerError
from planner.validate.matrix import STEPS, Cell
from planner.validate.report import read_measurements, write_reports
from planner.validate.results import CATEGORIES, CellResult, RankResult, Summary, summarize

DEFAULT_CACHE = Path("profiles/validation")
WORKER_LOG = "worker.log"  # the workers' stdout and stderr (transformers, DeepSpeed and torchrun chatter)
MAX_TRIES = 2  # a cell whose worker process died is tried once more in a fresh worker


@dataclass(frozen=True)
class Run:
    results: list[CellResult]
    summary: Summary
    csv_path: Path
    md_path: Path
    wall_s: float


# ---------------------------------------------------------------- worker side (imports torch)


def _worker_init(log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def profile_cell(cell_dict: dict[str, Any], out: str) -> tuple[str, str, float]:
    """Profile one cell into ``out`` (replacing what is there); returns (status, message, wall seconds)."""
    from planner.profile.launcher import run_profile

    cell = Cell.from_dict(cell_dict)
    started = time.time()
    print(f"=== {cell.id}", flush=True)
    try:
        status, message, _ = run_profile(cell.model_spec(), cell.train_spec(), num_gpus=cell.num_ranks, steps=STEPS,
                                         device="cpu", out=Path(out), force=True, seed=0, show_progress=False)  # fmt: skip
    except PlannerError as exc:
        status, message = "failed", str(exc)
    return status, message, time.time() - started


# ---------------------------------------------------------------- this process (no torch)


def _measured_from_profile(path: Path) -> tuple[str, str, list[tuple[int, dict[str, int], str, int | None]]]:
    from planner.profile.store import load_profile

    prof = load_profile(path)
    ranks = [(r.rank, dict(r.peak.by_category), r.peak.phase, r.peak.step) for r in prof.ranks if r.peak is not None]
    if prof.status == "ok" and len(ranks) < prof.num_ranks:
        return "failed", "a rank recorded no peak", ranks
    return prof.status, prof.message, ranks


def _cached_profile(cell: Cell, cache_dir: Path) -> Path | None:
    """The cell's profile directory when it loads with status ok and was made from exactly these inputs."""
    from planner.profile.store import load_profile
    from planner.specs import train_spec_to_dict

    path = cache_dir / cell.id
    try:
        prof = load_profile(path)
    except PlannerError:
        return None
    same = prof.meta["model"]["config"] == cell.model_config() and prof.meta["train"] == train_spec_to_dict(
        cell.train_spec()
    )
    return path if prof.status == "ok" and same and prof.meta.get("device") == "cpu" else None


def evaluate(cell: Cell, status: str, message: str, measured: list, *, source: str, wall_s: float | None) -> CellResult:
    """Estimate the cell and pair it with the measured ranks."""
    from planner import catalog
    from planner.estimate.core import estimate
    from planner.specs import Cluster

    inputs = cell.inputs()
    if status != "ok":
        return CellResult(cell.id, inputs, status, message, (), wall_s, source)
    try:
        cluster = Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=cell.num_ranks)
        est = estimate(cell.model_spec(), cell.train_spec(), cluster, device="cpu", allow_longer=True)
    except Exception as exc:  # noqa: BLE001 - an estimator failure is a result of the cell, not the end of the run
        return CellResult(cell.id, inputs, "estimate-error", f"{type(exc).__name__}: {exc}", (), wall_s, source)
    estimated = {c: getattr(est.per_gpu, f"{c}_bytes") for c in CATEGORIES if c != "other"} | {"other": 0}
    ranks = tuple(
        RankResult(rank, estimated, {c: int(by_cat.get(c, 0)) for c in CATEGORIES}, est.peak_phase, phase, step)
        for rank, by_cat, phase, step in sorted(measured, key=lambda m: m[0])
    )
    return CellResult(cell.id, inputs, "ok", "", ranks, wall_s, source)


def _context(command: str, matrix: str, num_planned: int, profile_s: float, num_profiled: int) -> dict[str, Any]:
    from planner.profile import meta

    return {
        "command": command,
        "matrix": matrix,
        "num_planned": num_planned,
        "versions": meta.versions(),
        "hardware": meta.hardware("cpu"),
        "git_commit": meta.git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "profile_s": profile_s,
        "num_profiled": num_profiled,
        "num_reused": num_planned - num_profiled,
        "description": (
            "Each cell is a real 3-step training run of a tiny transformers model on CPU (`planner profile`: "
            "torch.profiler records every allocation; categories by tensor identity), compared with "
            "`planner estimate` of the same inputs (`device=cpu`). The measured figure is the steady-state "
            "allocated peak (after step 0) per rank; the bounds are issue 5's."
        ),
    }


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]validate[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[status]}"), console=Console(stderr=True), disable=not enabled,
                    transient=False)  # fmt: skip


def run_cells(
    cells: list[Cell],
    *,
    out_dir: Path,
    stem: str = "accuracy",
    cache_dir: Path = DEFAULT_CACHE,
    resume: bool = True,
    jobs: int = 1,
    progress: bool = True,
    title: str = "planner accuracy: CPU validation suite",
    command: str = "planner validate --suite cpu",
    matrix: str = "",
) -> Run:
    """Profile (or reuse) and estimate every cell; write ``<out_dir>/<stem>.csv`` and ``.md`` as it goes."""
    if jobs < 1:
        raise PlannerError(f"--jobs must be at least 1, got {jobs}.")
    if len({c.id for c in cells}) != len(cells):
        raise PlannerError("the validation matrix holds the same cell twice.")
    started = time.time()
    cache_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = read_measurements(out_dir / f"{stem}.csv") if resume else {}
    results: dict[str, CellResult] = {}
    todo: list[Cell] = []
    for cell in cells:
        path = _cached_profile(cell, cache_dir) if resume else None
        if path is not None:
            status, message, measured = _measured_from_profile(path)
            results[cell.id] = evaluate(cell, status, message, measured, source="cache", wall_s=None)
        elif cell.id in previous:
            entry = previous[cell.id]
            results[cell.id] = evaluate(cell, "ok", "", entry["ranks"], source="csv", wall_s=entry["wall_s"])
        else:
            todo.append(cell)
    profile_s = 0.0

    def publish() -> Run:
        done = [results[c.id] for c in cells if c.id in results]
        summary = summarize(done)
        ctx = _context(command, matrix, len(cells), profile_s, len(todo))
        csv_path, md_path = write_reports(done, summary, out_dir, stem, title=title, context=ctx)
        return Run(done, summary, csv_path, md_path, time.time() - started)

    run = publish()
    if not todo:
        return run
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # inherited by the spawned workers
    import multiprocessing

    tries = {c.id: 0 for c in todo}
    with _progress(progress) as bar:
        task = bar.add_task("cells", total=len(cells), completed=len(cells) - len(todo), status="")
        pending = list(todo)
        while pending:
            pool = ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_worker_init, initargs=(str(cache_dir / WORKER_LOG),))  # fmt: skip
            retry: list[Cell] = []
            try:
                futures: dict[Future, Cell] = {
                    pool.submit(profile_cell, c.to_dict(), str(cache_dir / c.id)): c for c in pending
                }
                for fut in as_completed(futures):
                    cell = futures[fut]
                    tries[cell.id] += 1
                    try:
                        status, message, wall = fut.result()
                        profile_s += wall
                        try:
                            st, msg, measured = _measured_from_profile(cache_dir / cell.id)
                        except PlannerError as exc:  # the run failed before it could write a profile
                            st, msg, measured = "failed", str(exc), []
                        if status == "ok":
                            status, message = st, msg
                        results[cell.id] = evaluate(cell, status, message, measured, source="profiled", wall_s=wall)
                    except BrokenProcessPool:
                        if tries[cell.id] < MAX_TRIES:
                            retry.append(cell)
                            continue
                        results[cell.id] = CellResult(cell.id, cell.inputs(), "failed",
                                                      "the profiling worker process died (see worker.log)")  # fmt: skip
                    run = publish()
                    s = run.summary
                    med = "" if s.median_abs_error is None else f"median |err| {s.median_abs_error:.2%}, "
                    bar.update(task, advance=1, status=f"{med}{len(s.failing)} outside bounds; last {cell.id}")
            except KeyboardInterrupt:
                pool.shutdown(wait=False, cancel_futures=True)
                publish()
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            pending = retry
    return publish()
