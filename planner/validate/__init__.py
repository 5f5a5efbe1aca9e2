"""`planner validate`: the estimator checked against real profiles, cell by cell (issue 5).

- ``cell``          one run's inputs (``Cell``), its id and hash, and the factor levels
- ``matrix``        the seeded matrix of cells (full, CI subset, random shapes)
- ``recipe_cells``  one recipe's cells each, in the full matrix only, and the GPU reference cells
- ``run``           profiles in worker processes, estimates here, resume from the cache or the CSV
- ``results``       per-cell and per-rank errors, the issue-5 bounds and the summary metrics
- ``report``        reports/accuracy.csv and reports/accuracy.md, written atomically
- ``gpu_reference`` the estimator against committed GPU profiles (profiles/gpu/<device>/<slug>/), offline

Importing this package does not import torch; only the profiling workers do.
"""

from __future__ import annotations

from planner.validate.matrix import Cell, ci_matrix, full_matrix, random_cells
from planner.validate.results import (
    CATEGORY_BOUND,
    MEDIAN_BOUND,
    PEAK_BOUND,
    UNDER_BOUND,
    CellResult,
    RankResult,
    Summary,
    summarize,
)
from planner.validate.run import Run, run_cells

__all__ = [
    "CATEGORY_BOUND",
    "MEDIAN_BOUND",
    "PEAK_BOUND",
    "UNDER_BOUND",
    "Cell",
    "CellResult",
    "RankResult",
    "Run",
    "Summary",
    "ci_matrix",
    "full_matrix",
    "random_cells",
    "run_cells",
    "summarize",
]
