"""`planner validate`: the estimator against real profiles (CPU suite) or committed GPU profiles, with bounds."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from planner.errors import PlannerError

SUITES = ("cpu", "gpu-reference")

SuiteOpt = Annotated[str, typer.Option("--suite", help="cpu (profile and estimate a matrix of tiny models) or "
                                       "gpu-reference (committed GPU profiles under profiles/gpu/, offline).")]  # fmt: skip
FullOpt = Annotated[bool, typer.Option("--full", help="The full matrix (177 cells) instead of the CI subset (30).")]
ResumeOpt = Annotated[
    bool, typer.Option("--resume/--no-resume", help="Reuse cells already profiled (cache dir or the CSV).")
]
OutOpt = Annotated[Path, typer.Option("--out", help="Report directory: accuracy.md/.csv (--full), accuracy-ci.md/.csv "
                                      "(CI subset) or accuracy-gpu.md/.csv (gpu-reference).")]
JobsOpt = Annotated[int, typer.Option("--jobs", help="Profiles run side by side (worker processes).")]
CacheOpt = Annotated[Path, typer.Option("--cache", help="Per-cell profile directories (resume reuses them).")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Matrix seed (default: the fixed published one).")]
RandomOpt = Annotated[
    int, typer.Option("--random", help="Also run N cells of random shapes (seeded by --random-seed).")
]
RandomSeedOpt = Annotated[int | None, typer.Option("--random-seed", help="Seed of --random (default: from the clock).")]
GpuDirOpt = Annotated[Path, typer.Option("--profiles", help="gpu-reference: root of profiles/gpu/<device>/<slug>/.")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")]
KeepOpt = Annotated[bool, typer.Option("--keep-measurements", help="Re-estimate the CSV's cells against the "
                    "measurements it holds even if an earlier profiler version took them (each row keeps its "
                    "measured_with fingerprint); profile only the cells it lacks.")]


def validate(
    suite: SuiteOpt = "cpu",
    full: FullOpt = False,
    resume: ResumeOpt = True,
    out: OutOpt = Path("reports"),
    jobs: JobsOpt = 1,
    cache: CacheOpt = Path("profiles/validation"),
    seed: SeedOpt = None,
    random: RandomOpt = 0,
    random_seed: RandomSeedOpt = None,
    profiles: GpuDirOpt = Path("profiles/gpu"),
    progress: ProgressOpt = True,
    keep_measurements: KeepOpt = False,
) -> None:
    """Check the estimator against measured peaks, cell by cell, and write the accuracy report (Markdown + CSV).

    Exits 1 when a cell misses issue 5's bounds (5% of the measured peak, 2% underestimate, 3% per category,
    1.5% median) or could not be compared.
    """
    if suite not in SUITES:
        raise PlannerError(f"--suite {suite!r} is not valid; choose one of {', '.join(SUITES)}.")
    for flag, path in (("--out", out), ("--cache", cache)):
        if path.exists() and not path.is_dir():
            raise PlannerError(f"{flag} {str(path)!r} is a file; give a directory.")
    from planner.validate.report import check_report_paths

    check_report_paths(out, "accuracy-gpu" if suite == "gpu-reference" else "accuracy" if full else "accuracy-ci")
    if suite == "gpu-reference":
        from planner.validate.gpu_reference import run_gpu_reference

        run = run_gpu_reference(profiles, out_dir=out)
    else:
        run = _cpu(full=full, resume=resume, out=out, jobs=jobs, cache=cache, seed=seed, random=random,
                   random_seed=random_seed, progress=progress, keep_measurements=keep_measurements)  # fmt: skip
    _render(run)
    if not run.summary.passes:
        s = run.summary
        typer.echo(f"error: {len(s.failing)} of {s.num_cells} cells miss the issue-5 bounds or could not be compared "
                   f"(median |error| {_pct(s.median_abs_error)}); see {run.md_path}.", err=True)  # fmt: skip
        raise SystemExit(1)


def _cpu(*, full, resume, out, jobs, cache, seed, random, random_seed, progress, keep_measurements=False):
    import os
    import time

    from planner.validate import ci_matrix, full_matrix, random_cells, run_cells
    from planner.validate.matrix import DEFAULT_SEED

    if random < 0:
        raise PlannerError(f"--random must be 0 or more, got {random}.")
    seed = DEFAULT_SEED if seed is None else seed
    cells = full_matrix(seed) if full else ci_matrix(seed)
    label = f"{'full' if full else 'CI subset'}, seed {seed}, {len(cells)} cells"
    if random:
        random_seed = random_seed if random_seed is not None else int.from_bytes(os.urandom(4), "big")
        typer.echo(f"random cells: --random {random} --random-seed {random_seed}", err=True)
        extra = [c for c in random_cells(random_seed, random) if c not in cells]
        cells += extra
        label += f" + {len(extra)} random (seed {random_seed})"
    command = shlex.join(["planner", "validate", *sys.argv[2:]]) if len(sys.argv) > 1 else "planner validate"
    started = time.time()
    run = run_cells(cells, out_dir=out, stem="accuracy" if full else "accuracy-ci", cache_dir=cache, resume=resume,
                    jobs=jobs, progress=progress, command=command, matrix=label,
                    keep_measurements=keep_measurements)  # fmt: skip
    typer.echo(f"validated {len(cells)} cells in {time.time() - started:.0f} s", err=True)
    return run


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2%}"


def _render(run) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"estimate vs measured allocated peak: {run.summary.num_cells} cells")
    for col in ("metric", "value", "bound", "met"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, value, bound, met in run.summary.bound_rows():
        table.add_row(name, value, bound, "yes" if met else "[red]no[/]")
    console = Console()
    console.print(table)
    for cell_id in run.summary.failing:
        result = next(r for r in run.results if r.id == cell_id)
        typer.echo(f"outside bounds: {cell_id}: " + "; ".join(result.violations()))
    typer.echo(f"wrote {run.md_path} and {run.csv_path}")
