"""The profile part of the report: status, peaks per rank, the timeline, estimate vs measured."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from planner.report import figures, palette, timeline
from planner.report.html import Figure, KeyValues, Paragraph, Section, Table
from planner.units import MIB


@dataclass(frozen=True)
class RankPeak:
    """One rank's measured peak: when it happened and what was alive then, by category (bytes)."""

    rank: int
    allocated_bytes: int
    by_category: Mapping[str, int]
    step: int | None = None
    phase: str = ""
    reserved_bytes: int | None = None
    device_bytes: int | None = None


@dataclass(frozen=True)
class ProfileView:
    """What the report needs from a profile, whatever the store's own classes look like."""

    name: str
    path: str
    status: str
    message: str
    inputs: Sequence[tuple[str, str]]
    versions: Mapping[str, str]
    peaks: Sequence[RankPeak]
    timeline: pd.DataFrame | None = None
    # planner.compare's Comparison of the estimate for the profile's own inputs (None when not estimable).
    comparison: Any = None
    estimate_note: str = ""
    extra_notes: Sequence[str] = field(default_factory=tuple)
    # Measured breakdown at each phase's peak (of rank ``phases_rank``, the rank with the highest peak).
    phases: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    phases_rank: int = 0


def _mib(num_bytes: int | None) -> object:
    return "-" if num_bytes is None else round(num_bytes / MIB, 2)


def peaks_table(peaks: Sequence[RankPeak]) -> Table:
    cats = [c for c in palette.CATEGORIES if any(p.by_category.get(c, 0) for p in peaks)]
    cols = ["rank", "step", "phase", "allocated MiB", "reserved MiB", "device MiB"]
    cols += [f"{palette.label(c)} MiB" for c in cats]
    rows = [
        [p.rank, "-" if p.step is None else p.step, p.phase or "-", _mib(p.allocated_bytes),
         _mib(p.reserved_bytes), _mib(p.device_bytes)] + [_mib(p.by_category.get(c, 0)) for c in cats]
        for p in peaks
    ]
    return Table(cols, rows, caption="Measured peak per rank, and what was alive at that moment")


def _row_label(name: str) -> str:
    return figures.TOTAL_ROWS[name][0] if name in figures.TOTAL_ROWS else palette.label(name)


def comparison_table(comparison: Any) -> Table:
    """Every rank's rows of a planner.compare Comparison, with both errors (of the row, of the peak)."""
    rows = []
    for rc in comparison.ranks:
        for r in rc.rows:
            rel, share = r.relative_error, r.error_of_peak
            rows.append([rc.rank, _row_label(r.name), _mib(r.estimated_bytes), _mib(r.measured_bytes),
                         round(r.error_bytes / MIB, 3), "n/a" if rel is None else f"{rel:+.2%}",
                         "n/a" if share is None else f"{share:+.2%}"])
    cols = ["rank", "row", "estimated MiB", "measured MiB", "difference MiB", "signed error",
            "error / measured peak"]
    return Table(cols, rows, caption="Estimate vs measured, per rank (signed: negative = underestimate)")


def profile_section(view: ProfileView, index: int, *, max_points: int = timeline.DEFAULT_MAX_POINTS) -> Section:
    blocks: list[object] = []
    status = view.status or "unknown"
    if status != "ok":
        blocks.append(Paragraph(
            f"status {status}: {view.message or 'the run did not finish'}; the timeline ends where it stopped.",
            kind="error" if status in ("oom", "failed") else "warning",
        ))
    blocks.append(KeyValues([("profile", view.path), ("status", status), *view.inputs], caption="Inputs"))
    if view.versions:
        blocks.append(KeyValues(sorted(view.versions.items()), caption="Recorded with"))
    if view.peaks:
        blocks.append(peaks_table(view.peaks))
    if view.timeline is not None and len(view.timeline):
        num_rows = len(view.timeline)
        references = {
            p.rank: [(label, value) for label, value in (("reserved peak (caching allocator)", p.reserved_bytes),
                                                         ("device peak (NVML)", p.device_bytes)) if value]
            for p in view.peaks
        }
        panels = timeline.timeline_figures(
            view.timeline, title=f"{palette.text(view.name)}: memory timeline", max_points=max_points,
            references=references,
        )
        for rank, fig in panels:
            blocks.append(Figure(fig, name=f"timeline-{index}-rank-{rank}"))
        hidden = timeline.hidden_setup_s(timeline.aligned(view.timeline))
        if hidden:
            blocks.append(Paragraph(
                f"The panels open on the training steps: the first {hidden:.1f} s of setup (model build, engine "
                "initialisation) are left of the view; plotly's autoscale button (top right of a panel) shows them.",
                kind="note"))
        blocks.append(Paragraph(
            f"Allocated bytes stacked by category, one panel per rank, on one scale and one time axis with 0 at "
            f"each rank's first step (ranks record on their own clocks); shaded "
            f"bands are phases; the dashed line is the caching allocator's reserved memory and the dotted one "
            f"NVML device memory where recorded. Drawn from {num_rows:,} samples, downsampled keeping every "
            f"step's peak and each bucket's highest and lowest point.", kind="note"))
    else:
        blocks.append(Paragraph("This profile has no timeline samples.", kind="warning"))
    if view.phases:
        peak_phase = next((p.phase for p in view.peaks if p.rank == view.phases_rank), "")
        blocks.append(Figure(
            figures.phase_bars(view.phases, peak_phase=peak_phase,
                               title=f"Measured: what was alive at each phase's peak (rank {view.phases_rank})"),
            name=f"phases-{index}",
        ))
    if view.comparison is not None and view.comparison.ranks:
        top = max(view.comparison.ranks, key=lambda rc: (rc.row("allocated").measured_bytes, -rc.rank))
        peak = top.row("allocated").measured_bytes
        blocks.append(Figure(
            figures.estimate_vs_measured(
                [(r.name, r.estimated_bytes, r.measured_bytes) for r in top.rows], peak_bytes=peak,
                title=f"Estimate vs measured at the peak (rank {top.rank}: estimate peaks at "
                      f"{palette.text(top.estimated_peak_phase)}, measured at step {top.measured_peak_step} "
                      f"{palette.text(top.measured_peak_phase)})",
            ),
            name=f"compare-{index}",
        ))
        blocks.append(comparison_table(view.comparison))
        blocks += [Paragraph(n, kind="note") for n in view.comparison.notes]
    if view.estimate_note:
        blocks.append(Paragraph(view.estimate_note, kind="note"))
    blocks += [Paragraph(n, kind="note") for n in view.extra_notes]
    return Section(f"Profile: {view.name}", f"profile-{index}", blocks,
                   subtitle="A real training run, recorded by planner profile.")
