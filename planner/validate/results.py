"""Results of validation cells: estimated vs measured bytes per rank and category, and the issue-5 metrics.

No torch. The measured side of a rank is its profile's steady-state allocated peak and the bytes alive at it
per category (planner/profile/attribution.py); the estimated side is ``Estimate.per_gpu`` at the estimated
peak, without ``overhead`` (not tensor memory). Errors are signed, estimate minus measurement, as in
planner/compare.py: negative means planner underestimates, the dangerous direction.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from planner.compare import TENSOR_CATEGORIES

CATEGORIES = (*TENSOR_CATEGORIES, "other")  # "other": input ids, model buffers (estimated as 0)

# Issue 5's acceptance bounds (relative to the rank's measured allocated peak); never loosen them.
PEAK_BOUND = 0.05  # every cell within 5% of the measured peak
MEDIAN_BOUND = 0.015  # median absolute error at most 1.5%
UNDER_BOUND = 0.02  # no cell underestimates by more than 2%
CATEGORY_BOUND = 0.03  # each category's error at most 3% of the measured peak, in every cell


@dataclass(frozen=True)
class RankResult:
    rank: int
    estimated: dict[str, int]  # CATEGORIES -> bytes at the estimated peak
    measured: dict[str, int]  # CATEGORIES -> bytes at the measured steady-state peak
    estimated_phase: str
    measured_phase: str
    measured_step: int | None

    @property
    def estimated_bytes(self) -> int:
        return sum(self.estimated.values())

    @property
    def measured_bytes(self) -> int:
        return sum(self.measured.values())

    @property
    def error(self) -> float:
        """Signed relative error of the allocated peak."""
        return (self.estimated_bytes - self.measured_bytes) / self.measured_bytes

    def category_error(self, category: str) -> float:
        """Signed error of one category as a share of the measured peak."""
        return (self.estimated[category] - self.measured[category]) / self.measured_bytes


@dataclass(frozen=True)
class CellResult:
    id: str
    inputs: dict[str, Any]
    status: str  # ok, or the profile's oom / failed / interrupted, or estimate-error
    message: str = ""
    ranks: tuple[RankResult, ...] = ()
    profile_wall_s: float | None = None
    source: str = "profiled"  # profiled (this run), cache (profile directory), csv (an earlier report)
    measured_with: str = ""  # the measurement fingerprint (planner/validate/run.py)
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok" and bool(self.ranks)

    @property
    def worst(self) -> RankResult:
        """The rank with the largest absolute peak error (ranks differ by DeepSpeed's partition padding)."""
        return max(self.ranks, key=lambda r: (abs(r.error), -r.rank))

    @property
    def error(self) -> float:
        return self.worst.error

    def max_category_error(self, category: str) -> float:
        """The category's signed error of largest magnitude over the ranks."""
        return max((r.category_error(category) for r in self.ranks), key=lambda e: (abs(e), e))

    def violations(self) -> list[str]:
        """Which per-cell bound this cell misses (empty when it meets all of them)."""
        if not self.ok:
            return [f"no comparison ({self.status}: {self.message})"]
        out = []
        err = self.error
        if abs(err) > PEAK_BOUND:
            out.append(f"peak error {err:+.2%} beyond ±{PEAK_BOUND:.0%}")
        if err < -UNDER_BOUND:
            out.append(f"underestimates the peak by {-err:.2%} (> {UNDER_BOUND:.0%})")
        for c in CATEGORIES:
            e = self.max_category_error(c)
            if abs(e) > CATEGORY_BOUND:
                out.append(f"{c} off by {e:+.2%} of the peak (> {CATEGORY_BOUND:.0%})")
        return out


@dataclass(frozen=True)
class Summary:
    num_cells: int
    num_compared: int  # cells with a profile and an estimate
    num_within_bounds: int
    median_abs_error: float | None
    max_abs_error: float | None
    share_under: float | None  # share of compared cells where planner underestimates the peak
    worst_under: float | None  # the most negative signed error (None when no cell underestimates)
    max_category_error: dict[str, float]  # largest |error| of each category, as a share of the peak
    failing: tuple[str, ...]  # ids of cells that miss a bound or could not be compared

    @property
    def passes(self) -> bool:
        return (
            self.num_cells > 0
            and not self.failing
            and self.median_abs_error is not None
            and self.median_abs_error <= MEDIAN_BOUND
        )

    def bound_rows(self) -> list[tuple[str, str, str, bool]]:
        """(metric, measured, bound, met) for the summary table."""

        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.2%}"

        under = self.worst_under if self.worst_under is not None else 0.0
        cat = max(self.max_category_error.values(), default=0.0)
        compared = self.num_compared == self.num_cells and self.num_cells > 0
        return [
            ("cells compared", f"{self.num_compared} / {self.num_cells}", "all", compared),
            ("max abs peak error", pct(self.max_abs_error), f"≤ {PEAK_BOUND:.0%}",
             self.max_abs_error is not None and self.max_abs_error <= PEAK_BOUND),
            ("median abs peak error", pct(self.median_abs_error), f"≤ {MEDIAN_BOUND:.1%}",
             self.median_abs_error is not None and self.median_abs_error <= MEDIAN_BOUND),
            ("worst underestimate", pct(-under if under < 0 else 0.0), f"≤ {UNDER_BOUND:.0%}", under >= -UNDER_BOUND),
            ("share of cells underestimated", pct(self.share_under), "reported", True),
            ("max abs category error / peak", pct(cat), f"≤ {CATEGORY_BOUND:.0%}", cat <= CATEGORY_BOUND),
        ]  # fmt: skip


def summarize(results: list[CellResult]) -> Summary:
    compared = [r for r in results if r.ok]
    errors = [r.error for r in compared]
    abs_errors = [abs(e) for e in errors]
    unders = [e for e in errors if e < 0]
    return Summary(
        num_cells=len(results),
        num_compared=len(compared),
        num_within_bounds=sum(1 for r in results if not r.violations()),
        median_abs_error=statistics.median(abs_errors) if abs_errors else None,
        max_abs_error=max(abs_errors) if abs_errors else None,
        share_under=len(unders) / len(errors) if errors else None,
        worst_under=min(unders) if unders else None,
        max_category_error={c: max((abs(r.max_category_error(c)) for r in compared), default=0.0) for c in CATEGORIES},
        failing=tuple(r.id for r in results if r.violations()),
    )


def group_errors(results: list[CellResult], key: str) -> list[tuple[str, int, float, float, float]]:
    """(level, cells, median |error|, max |error|, mean signed error) per level of one input."""
    groups: dict[str, list[float]] = {}
    for r in results:
        if r.ok:
            groups.setdefault(str(r.inputs.get(key, "")), []).append(r.error)
    return [
        (level, len(errs), statistics.median(abs(e) for e in errs), max(abs(e) for e in errs), statistics.fmean(errs))
        for level, errs in sorted(groups.items())
    ]
