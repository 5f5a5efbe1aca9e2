"""Pure plotly figure builders for the report: numbers in, ``go.Figure`` out. No torch, no I/O.

Every category has one colour everywhere (``palette``). Every string that came from a user (model names,
paths, notes) goes through ``palette.text`` before it reaches a plotly label, because plotly renders a
subset of HTML in labels and would otherwise turn ``<b>`` or ``<a>`` in a model name into markup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import plotly.graph_objects as go
import plotly.io as pio

from planner.report import palette
from planner.units import GIB, MIB

# Phases in the order they happen in a training step.
PHASE_ORDER = ("setup", "inputs", "forward", "loss", "backward", "optimizer_step", "between")
FONT = {"family": "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif", "size": 13}


@cache
def template() -> go.layout.Template:
    """plotly_white's layout only (no per-trace defaults): a fraction of the bytes and of the time to apply."""
    return go.layout.Template(layout=pio.templates["plotly_white"].layout)


def unit_for(max_bytes: float) -> tuple[int, str]:
    """The divisor and label for a byte axis: GiB from 1 GiB up, MiB below (tiny CPU profiles)."""
    return (GIB, "GiB") if max_bytes >= GIB else (MIB, "MiB")


def fmt_bytes(num_bytes: float, divisor: int, unit: str) -> str:
    value = num_bytes / divisor
    digits = 2 if abs(value) < 100 else 1
    return f"{value:,.{digits}f} {unit}"


def base_layout(fig: go.Figure, *, title: str, height: int) -> go.Figure:
    fig.update_layout(
        template=template(),
        font=FONT,
        # Title pinned to the top edge, the legend (up to two rows) between it and the plot.
        title={"text": title, "x": 0.01, "xanchor": "left", "yref": "container", "y": 1.0, "yanchor": "top",
               "pad": {"t": 12}},
        height=height,
        margin={"l": 70, "r": 30, "t": 110, "b": 60},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "right", "x": 1.0},
        hoverlabel={"namelength": -1},
    )
    return fig


# ------------------------------------------------------------------ estimates


def _lines(value: str) -> str:
    """Escaped text with each newline drawn as a line break in plotly."""
    return "<br>".join(palette.text(line) for line in str(value).split("\n"))


@dataclass(frozen=True)
class BarRow:
    """One stacked bar: a configuration's per-GPU bytes by category and how it compares with the GPU.

    ``group`` and ``label`` form a two-level x axis (e.g. method, then "Z2\\nopt off"; newlines break lines).
    """

    group: str
    label: str
    bytes_by_category: Mapping[str, int]
    device_bytes: int
    headroom_bytes: int
    fits: bool
    peak_phase: str = ""
    cpu_bytes_per_node: int = 0


def estimate_bars(
    rows: Sequence[BarRow], *, capacity_bytes: int, usable_bytes: int, gpu_name: str, title: str
) -> go.Figure:
    """Per-GPU memory by category, one stacked bar per configuration, with capacity and headroom."""
    top = max([capacity_bytes] + [max(r.device_bytes, sum(r.bytes_by_category.values())) for r in rows])
    div, unit = unit_for(top)
    x = [[palette.text(r.group) for r in rows], [_lines(r.label) for r in rows]]
    fig = go.Figure()
    for cat in palette.CATEGORIES:
        values = [r.bytes_by_category.get(cat, 0) / div for r in rows]
        fig.add_trace(
            go.Bar(
                x=x,
                y=values,
                name=palette.label(cat),
                marker={"color": palette.color(cat)},
                legendgroup=cat,
                hovertemplate=f"{palette.label(cat)}: %{{y:,.2f}} {unit}<extra>%{{x}}</extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[r.device_bytes / div for r in rows],
            mode="markers",
            name="device (what nvidia-smi shows)",
            marker={"symbol": "line-ew-open", "size": 26, "color": palette.DEVICE_COLOR,
                    "line": {"width": 3, "color": palette.DEVICE_COLOR}},
            hovertemplate=f"device: %{{y:,.2f}} {unit}<extra>%{{x}}</extra>",
        )
    )
    # The headroom, written above each bar: usable capacity minus the device peak.
    texts, colors, ys, hovers = [], [], [], []
    for r in rows:
        sign = "+" if r.headroom_bytes >= 0 else "−"
        texts.append(f"{sign}{abs(r.headroom_bytes) / div:,.1f}<br>{unit}")
        colors.append("#2CA02C" if r.fits else palette.CAPACITY_COLOR)
        ys.append(max(r.device_bytes, sum(r.bytes_by_category.values())) / div)
        extra = f", CPU/node {fmt_bytes(r.cpu_bytes_per_node, div, unit)}" if r.cpu_bytes_per_node else ""
        hovers.append(
            f"{'fits' if r.fits else 'does not fit'}; headroom {sign}{fmt_bytes(abs(r.headroom_bytes), div, unit)}; "
            f"peak at {palette.text(r.peak_phase)}{extra}"
        )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=ys,
            mode="text",
            text=texts,
            textposition="top center",
            textfont={"color": colors, "size": 10},
            name="headroom",
            hovertext=hovers,
            hoverinfo="text",
            showlegend=False,
        )
    )
    fig.add_hline(
        y=capacity_bytes / div,
        line={"color": palette.CAPACITY_COLOR, "width": 2},
        annotation_text=f"{palette.text(gpu_name)} capacity {fmt_bytes(capacity_bytes, div, unit)}",
        annotation_position="top right",
    )
    if usable_bytes != capacity_bytes:
        fig.add_hline(
            y=usable_bytes / div,
            line={"color": palette.CAPACITY_COLOR, "width": 1, "dash": "dash"},
            annotation_text=f"usable after margin {fmt_bytes(usable_bytes, div, unit)}",
            annotation_position="bottom right",
        )
    base_layout(fig, title=title, height=520)
    fig.update_layout(barmode="stack", bargap=0.25)
    fig.update_yaxes(title_text=f"per-GPU memory ({unit})", range=[0, top / div * 1.12])
    fig.update_xaxes(tickangle=0, tickfont={"size": 11})
    return fig


def phase_bars(phases: Mapping[str, Mapping[str, int]], *, peak_phase: str, title: str) -> go.Figure:
    """The breakdown at each phase of one configuration (the peak is one of them, not their sum)."""
    names = sorted(phases, key=lambda n: (PHASE_ORDER.index(n) if n in PHASE_ORDER else len(PHASE_ORDER), n))
    top = max([sum(p.values()) for p in phases.values()] + [1])
    div, unit = unit_for(top)
    fig = go.Figure()
    labels = [palette.text(n) + (" (peak)" if n == peak_phase else "") for n in names]
    for cat in palette.CATEGORIES:
        fig.add_trace(
            go.Bar(
                x=labels,
                y=[phases[n].get(cat, 0) / div for n in names],
                name=palette.label(cat),
                marker={"color": palette.color(cat)},
                legendgroup=cat,
                hovertemplate=f"{palette.label(cat)}: %{{y:,.2f}} {unit}<extra>%{{x}}</extra>",
            )
        )
    base_layout(fig, title=title, height=380)
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text=f"allocated ({unit})")
    return fig


# ------------------------------------------------------------------ estimate vs measured


def signed_error(estimated: float, measured: float) -> float | None:
    """(estimated - measured) / measured; None when nothing was measured. Negative = underestimate."""
    if measured == 0:
        return None
    return (estimated - measured) / measured


# Rows of a comparison that are not categories: their labels and colours.
TOTAL_ROWS = {
    "allocated": ("allocated (the peak)", "#555555"),
    "reserved": ("reserved (caching allocator)", palette.RESERVED_COLOR),
    "device": ("device (NVML)", palette.DEVICE_COLOR),
}


def _row_style(name: str) -> tuple[str, str]:
    if name in TOTAL_ROWS:
        return TOTAL_ROWS[name]
    return palette.label(name), palette.color(name)


def error_label(estimated: int, measured: int) -> str:
    err = signed_error(estimated, measured)
    if err is None:
        return "n/a" if estimated == 0 else "new"
    return "±0.0%" if abs(err) < 0.0005 else f"{err:+.1%}"


def estimate_vs_measured(rows: Sequence[tuple[str, int, int]], *, peak_bytes: int, title: str) -> go.Figure:
    """Grouped bars per row (estimate light with an outline, measured solid), the signed error on each pair.

    ``rows`` are (name, estimated bytes, measured bytes): the categories (``other`` for tensors the estimator
    has no category for), then ``allocated`` (the peak) and on CUDA ``reserved`` and ``device``. Rows where
    both sides are 0 are left out. ``peak_bytes`` (the measured allocated peak) scales the hover's share.
    """
    rows = [r for r in rows if r[1] or r[2]]
    names = [_row_style(r[0])[0] for r in rows]
    colors = [_row_style(r[0])[1] for r in rows]
    est_vals = [r[1] for r in rows]
    meas_vals = [r[2] for r in rows]
    div, unit = unit_for(max(est_vals + meas_vals + [1]))
    errors = [error_label(e, m) for e, m in zip(est_vals, meas_vals, strict=True)]
    shares = [f"{(e - m) / peak_bytes:+.2%}" if peak_bytes else "n/a" for e, m in zip(est_vals, meas_vals, strict=True)]
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=names,
            y=[v / div for v in est_vals],
            name="estimated",
            marker={"color": colors, "opacity": 0.45, "line": {"color": colors, "width": 2}},
            offsetgroup="estimated",
            hovertemplate=f"estimated: %{{y:,.3f}} {unit}<extra>%{{x}}</extra>",
        )
    )
    fig.add_trace(
        go.Bar(
            x=names,
            y=[v / div for v in meas_vals],
            name="measured",
            marker={"color": colors},
            offsetgroup="measured",
            text=errors,
            customdata=shares,
            textposition="outside",
            textfont={"color": "#222222"},
            hovertemplate=(f"measured: %{{y:,.3f}} {unit}<br>signed error %{{text}} (%{{customdata}} of the "
                           "measured peak)<extra>%{x}</extra>"),
        )
    )
    base_layout(fig, title=title, height=420)
    fig.update_layout(barmode="group", uniformtext={"minsize": 9, "mode": "show"})
    top = max(est_vals + meas_vals + [1]) / div
    fig.update_yaxes(title_text=f"bytes at the peak ({unit})", range=[0, top * 1.15])
    fig.add_annotation(
        text="label = signed error (estimated − measured) / measured; negative means planner underestimates",
        xref="paper",
        yref="paper",
        x=0,
        y=-0.18,
        showarrow=False,
        font={"size": 11, "color": "#555"},
        xanchor="left",
    )
    return fig


# ------------------------------------------------------------------ accuracy


def accuracy_scatter(
    labels: Sequence[str], errors: Sequence[float], groups: Sequence[str], *, bound: float, title: str
) -> go.Figure:
    """Signed relative error of the peak per validation cell, coloured by group (e.g. method)."""
    fig = go.Figure()
    for group in sorted(set(groups)):
        idx = [i for i, g in enumerate(groups) if g == group]
        fig.add_trace(
            go.Scatter(
                x=[palette.text(labels[i]) for i in idx],
                y=[errors[i] * 100 for i in idx],
                mode="markers",
                name=palette.text(group),
                marker={"size": 9},
                hovertemplate="%{x}<br>signed error %{y:+.2f}%<extra>" + palette.text(group) + "</extra>",
            )
        )
    for y, dash in ((bound * 100, "dash"), (-bound * 100, "dash"), (0, "solid")):
        fig.add_hline(y=y, line={"color": "#999" if y else "#333", "width": 1, "dash": dash})
    base_layout(fig, title=title, height=420)
    fig.update_xaxes(showticklabels=len(labels) <= 60, tickangle=-45)
    fig.update_yaxes(title_text="signed error of the peak (%)", zeroline=False)
    return fig


def plan_bars(rows: Sequence[BarRow], *, capacity_bytes: int, usable_bytes: int, gpu_name: str) -> go.Figure:
    """The chosen plan and its runners-up, as the same stacked bars as the estimate figure."""
    return estimate_bars(
        rows, capacity_bytes=capacity_bytes, usable_bytes=usable_bytes, gpu_name=gpu_name,
        title="Chosen plan and runners-up: per-GPU memory by category",
    )
