"""Estimate vs profile, per rank and category: estimated bytes, measured bytes, signed error. No torch.

The measured side is a profile's steady-state allocated peak on each rank and what was alive at it
(planner/profile/attribution.py). Rows:

- ``params``, ``grads``, ``optimizer_states``, ``activations``, ``temporaries``: the estimator's categories;
- ``other``: tensors the estimator has no category for (input ids, model buffers); estimated as 0, since the
  estimator's ``overhead`` is not tensor memory and is left out of the allocated peak;
- ``allocated``: the allocated peak itself (estimate: total minus overhead);
- CUDA profiles also get ``reserved`` (caching allocator) and ``device`` (NVML) rows.

Errors are signed, estimate minus measurement: negative means planner underestimates (the dangerous
direction). ``error_of_peak`` divides by the rank's measured allocated peak (the share issue 5 bounds per
category); ``relative_error`` divides by the measured value of the row itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from planner.errors import PlannerError
from planner.estimate.result import Estimate, MemoryBreakdown
from planner.profile.store import Profile

TENSOR_CATEGORIES = ("params", "grads", "optimizer_states", "activations", "temporaries")
ROWS = (*TENSOR_CATEGORIES, "other", "allocated")


@dataclass(frozen=True)
class Row:
    name: str
    estimated_bytes: int
    measured_bytes: int
    measured_peak_bytes: int  # the rank's measured allocated peak (denominator of error_of_peak)

    @property
    def error_bytes(self) -> int:
        return self.estimated_bytes - self.measured_bytes

    @property
    def error_of_peak(self) -> float | None:
        return self.error_bytes / self.measured_peak_bytes if self.measured_peak_bytes else None

    @property
    def relative_error(self) -> float | None:
        return self.error_bytes / self.measured_bytes if self.measured_bytes else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "estimated_bytes": self.estimated_bytes,
            "measured_bytes": self.measured_bytes,
            "error_bytes": self.error_bytes,
            "error_of_peak": self.error_of_peak,
            "relative_error": self.relative_error,
        }


@dataclass(frozen=True)
class RankComparison:
    rank: int
    status: str
    estimated_peak_phase: str
    measured_peak_phase: str
    measured_peak_step: int | None
    rows: tuple[Row, ...]  # ROWS, then reserved/device on CUDA
    phases: dict[str, tuple[Row, ...]] = field(default_factory=dict)  # phases both sides know

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "status": self.status,
            "estimated_peak_phase": self.estimated_peak_phase,
            "measured_peak_phase": self.measured_peak_phase,
            "measured_peak_step": self.measured_peak_step,
            "rows": [r.to_dict() for r in self.rows],
            "phases": {p: [r.to_dict() for r in rows] for p, rows in sorted(self.phases.items())},
        }


@dataclass(frozen=True)
class Comparison:
    profile: str
    status: str
    device: str
    ranks: tuple[RankComparison, ...]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "status": self.status,
            "device": self.device,
            "ranks": [r.to_dict() for r in self.ranks],
            "notes": list(self.notes),
        }


def _rows(est: MemoryBreakdown, measured: dict[str, int], peak_bytes: int) -> list[Row]:
    rows = [Row(c, getattr(est, f"{c}_bytes"), measured[c], peak_bytes) for c in TENSOR_CATEGORIES]
    rows.append(Row("other", 0, measured["other"], peak_bytes))
    rows.append(Row("allocated", est.total_bytes - est.overhead_bytes, sum(measured.values()), peak_bytes))
    return rows


def compare(estimate: Estimate, profile: Profile) -> Comparison:
    """Compare one estimate with every rank of a profile; ranks without a recorded peak are left out."""
    notes: list[str] = []
    if profile.status != "ok":
        notes.append(f"the profile's status is {profile.status}: {profile.message}")
    ranks = []
    for r in profile.ranks:
        if r.peak is None:
            notes.append(f"rank {r.rank} recorded no step ({r.status}): {r.message}")
            continue
        if not r.steady_state:
            notes.append(f"rank {r.rank} completed fewer than two steps: its peak includes step 0")
        peak = r.peak.allocated_bytes
        rows = _rows(estimate.per_gpu, r.peak.by_category, peak)
        if r.cuda:
            rows.append(Row("reserved", estimate.reserved_bytes, int(r.cuda.get("steady_reserved_peak_bytes", 0)), peak))
            nvml = int(r.cuda.get("nvml_steady_peak_used_bytes", 0))
            if nvml:
                rows.append(Row("device", estimate.device_bytes, nvml, peak))
        phases = {
            p: tuple(_rows(estimate.phases[p], r.phases[p].by_category, peak))
            for p in sorted(set(estimate.phases) & set(r.phases))
        }
        ranks.append(
            RankComparison(
                rank=r.rank,
                status=r.status,
                estimated_peak_phase=estimate.peak_phase,
                measured_peak_phase=r.peak.phase,
                measured_peak_step=r.peak.step,
                rows=tuple(rows),
                phases=phases,
            )
        )
    if not ranks:
        raise PlannerError(
            f"profile {str(profile.path)!r} has no rank with a recorded step to compare "
            f"(status {profile.status}: {profile.message or 'no message'})."
        )
    return Comparison(
        profile=str(profile.path), status=profile.status, device=profile.device, ranks=tuple(ranks), notes=tuple(notes)
    )
