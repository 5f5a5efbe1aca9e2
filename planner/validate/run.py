"""Run validation cells: a real profile of each (planner.profile, in worker processes), then its estimate.

Profiles run in ``jobs`` worker processes (pool.py, worker.py), each importing torch, transformers, peft and
bitsandbytes once for all the cells it runs (a single-rank cell then takes seconds); a two-rank cell's
worker starts torchrun, which runs the ranks under DeepSpeed with gloo. This process never imports torch:
it estimates each cell (``estimate(..., device="cpu")``) as soon as its profile is in, and rewrites the
CSV and Markdown reports after every cell, so an interrupted matrix keeps what it finished.

Resume: a cell whose profile directory under the cache (``profiles/validation/<fingerprint>/<cell id>/``)
loads with status ok and the cell's exact inputs, or whose measured rows are in the existing CSV with the
same fingerprint, is not profiled again; its estimate is always recomputed, since the estimator is what is
being validated. The fingerprint hashes what a measurement depends on besides the cell's inputs (the
profiler's source and the versions of torch, transformers, peft, bitsandbytes, DeepSpeed, accelerate), so
a changed profiler or library never passes off an old measurement as current.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from planner.errors import PlannerError
from planner.validate.matrix import Cell
from planner.validate.pool import WORKER_LOG, Pool
from planner.validate.report import read_measurements, write_reports
from planner.validate.results import CATEGORIES, CellResult, RankResult, Summary, summarize

DEFAULT_CACHE = Path("profiles/validation")
INTERRUPT_GRACE_S = 90  # after Ctrl-C, time for running profiles to write what they recorded


@dataclass(frozen=True)
class Run:
    results: list[CellResult]
    summary: Summary
    csv_path: Path
    md_path: Path
    wall_s: float


# ---------------------------------------------------------------- this process (no torch)


FINGERPRINT_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "deepspeed", "accelerate")


def measurement_fingerprint() -> str:
    """12 hex digits over planner/profile/*.py, the validation worker and the measuring libraries' versions."""
    from importlib import metadata

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted((root / "profile").glob("*.py")) + [root / "validate" / "worker.py"]:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    for name in FINGERPRINT_PACKAGES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "-"
        h.update(f"{name}={version}\0".encode())
    # the CPU kind: oneDNN or ATen kernels allocate differently (planner/estimate/step/cpu_kernels.py)
    from planner.profile.cpu_kind import local_kernels

    kind = local_kernels()
    h.update(f"{kind.cpu_name}|{kind.capability}|{kind.onednn_bf16}\0".encode())
    return h.hexdigest()[:12]


def _measured_from_profile(path: Path) -> tuple[str, str, list[tuple[int, dict[str, int], str, int | None]]]:
    from planner.profile.store import load_profile

    prof = load_profile(path)
    ranks = [(r.rank, dict(r.peak.by_category), r.peak.phase, r.peak.step, prof.cpu_kernels(r.rank))
             for r in prof.ranks if r.peak is not None]
    if prof.status == "ok" and len(ranks) < prof.num_ranks:
        return "failed", "a rank recorded no peak", ranks
    return prof.status, prof.message, ranks


def _cached_profile(cell: Cell, cache_dir: Path, retry_failed: bool = True) -> Path | None:
    """The cell's profile directory when it loads, was made from exactly these inputs and has status ok (or
    any status, unless ``retry_failed``)."""
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
    usable = prof.status == "ok" or not retry_failed
    return path if usable and same and prof.meta.get("device") == "cpu" else None


def evaluate(cell: Cell, status: str, message: str, measured: list, *, source: str, wall_s: float | None) -> CellResult:
    """Estimate the cell and pair it with the measured ranks."""
    from planner import catalog
    from planner.estimate.core import estimate
    from planner.specs import Cluster

    inputs = cell.inputs()
    if status != "ok":
        return CellResult(cell.id, inputs, status, message, (), wall_s, source)
    ranks = []
    try:
        cluster = Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=cell.num_ranks)
        for rank, by_cat, phase, step, *kind in sorted(measured, key=lambda m: m[0]):
            # the CPU kind the rank ran on: recorded in its profile, or (rows resumed from a CSV of the same
            # measurement fingerprint, which includes the kind) this machine's with the rank's threads
            kernels = kind[0] if kind else _local_kernels(cell)
            # each rank against its own estimate: ZeRO 1/2 ranks hold different gradient buffers
            est = estimate(cell.model_spec(), cell.train_spec(), cluster, device="cpu", allow_longer=True,
                           rank=rank, cpu=kernels)
            estimated = {c: getattr(est.per_gpu, f"{c}_bytes") for c in CATEGORIES if c != "other"} | {"other": 0}
            measured_by_cat = {c: int(by_cat.get(c, 0)) for c in CATEGORIES}
            ranks.append(RankResult(rank, estimated, measured_by_cat, est.peak_phase, phase, step))
    except Exception as exc:  # noqa: BLE001 - an estimator failure is a result of the cell, not the end of the run
        return CellResult(cell.id, inputs, "estimate-error", f"{type(exc).__name__}: {exc}", (), wall_s, source)
    return CellResult(cell.id, inputs, "ok", "", tuple(ranks), wall_s, source)


def _local_kernels(cell: Cell):
    from planner.profile.cpu_kind import kernels_for, local_kernels, rank_threads

    return kernels_for(cell.model_spec(), cell.train_spec(), local_kernels(rank_threads(cell.num_ranks)))


def _from_answer(cell: Cell, answer: dict[str, Any], cache_dir: Path) -> CellResult:
    status, message, wall = answer["status"], answer["message"], float(answer["wall_s"])
    try:
        st, msg, measured = _measured_from_profile(cache_dir / cell.id)
    except PlannerError as exc:  # the run failed before it could write a profile
        st, msg, measured = "failed", str(exc), []
    if status == "ok":
        status, message = st, msg
    return evaluate(cell, status, message, measured, source="profiled", wall_s=wall)


def _context(command: str, matrix: str, num_planned: int, profile_s: float, num_profiled: int,
             wall_s: float, git_commit: str | None) -> dict[str, Any]:
    from planner.profile import meta

    return {
        "command": command,
        "matrix": matrix,
        "num_planned": num_planned,
        "versions": meta.versions(),
        "hardware": meta.hardware("cpu"),
        "git_commit": git_commit,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "profile_s": profile_s,
        "wall_s": wall_s,
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
    retry_failed: bool = True,
    keep_measurements: bool = False,
) -> Run:
    """Profile (or reuse) and estimate every cell; write ``<out_dir>/<stem>.csv`` and ``.md`` as it goes.

    With ``resume``, a cell whose cached profile failed (oom, failed, interrupted) is profiled again unless
    ``retry_failed`` is off, in which case the failure is reported as it was recorded. ``keep_measurements``:
    re-estimate the CSV's cells against the measurements it holds even when another profiler version or library
    set measured them (each row keeps its ``measured_with`` fingerprint, so the table says which); only cells it
    lacks are profiled. For an estimator change that leaves the profiler's measurement of earlier cells alone.
    """
    if jobs < 1:
        raise PlannerError(f"--jobs must be at least 1, got {jobs}.")
    if len({c.id for c in cells}) != len(cells):
        raise PlannerError("the validation matrix holds the same cell twice.")
    started = time.time()
    from planner.profile.meta import git_commit

    commit = git_commit()  # before this run writes its own report files into the tree
    fingerprint = measurement_fingerprint()
    cells_dir = cache_dir / fingerprint
    cells_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = read_measurements(out_dir / f"{stem}.csv", fingerprint, any_fingerprint=keep_measurements) \
        if resume else {}
    results: dict[str, CellResult] = {}
    todo: list[Cell] = []
    for cell in cells:
        path = _cached_profile(cell, cells_dir, retry_failed) if resume else None
        if path is not None:
            status, message, measured = _measured_from_profile(path)
            results[cell.id] = evaluate(cell, status, message, measured, source="cache", wall_s=None)
        elif cell.id in previous:
            entry = previous[cell.id]
            results[cell.id] = replace(evaluate(cell, "ok", "", entry["ranks"], source="csv", wall_s=entry["wall_s"]),
                                       measured_with=entry["measured_with"])
        else:
            todo.append(cell)
    profile_s = 0.0

    def publish() -> Run:
        done = [replace(results[c.id], measured_with=results[c.id].measured_with or fingerprint) for c in cells
                if c.id in results]
        summary = summarize(done)
        ctx = _context(command, matrix, len(cells), profile_s, len(todo), time.time() - started, commit)
        ctx["fingerprint"] = fingerprint
        csv_path, md_path = write_reports(done, summary, out_dir, stem, title=title, context=ctx)
        return Run(done, summary, csv_path, md_path, time.time() - started)

    run = publish()
    if not todo:
        return run
    with _progress(progress) as bar:
        task = bar.add_task("cells", total=len(cells), completed=len(cells) - len(todo), status="")
        pool = Pool(todo, jobs, cells_dir)
        try:
            for cell, answer in pool.results(len(todo)):
                if answer is None:
                    results[cell.id] = CellResult(cell.id, cell.inputs(), "failed",
                                                  f"the profiling worker process died twice (see {WORKER_LOG})")  # fmt: skip
                else:
                    profile_s += float(answer["wall_s"])
                    results[cell.id] = _from_answer(cell, answer, cells_dir)
                run = publish()
                s = run.summary
                med = "" if s.median_abs_error is None else f"median |err| {s.median_abs_error:.2%}, "
                bar.update(task, advance=1, status=f"{med}{len(s.failing)} outside bounds; last {cell.id}")
            pool.join()
        except KeyboardInterrupt:
            pool.stop(INTERRUPT_GRACE_S)
            publish()
            raise
    return publish()
