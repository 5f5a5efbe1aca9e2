"""Memory timelines of a profile: downsampling that keeps every peak, and the per-rank stacked-area figure.

The timeline table the report reads (one row per sample, any order):

    rank   int     data-parallel rank
    t_s    float   seconds since the rank started recording
    phase  str     forward, loss, backward, optimizer_step, ... (free text is allowed)
    step   int     training step, 0-based
    params, grads, optimizer_states, activations, temporaries, other (or overhead)
           int     bytes allocated in that category at that moment (a missing column counts as 0)
    reserved  int  caching-allocator reserved bytes (optional, CUDA)
    nvml      int  device memory seen by NVML (optional, CUDA; NaN where not sampled)

A CPU profile records every allocation and free: a 20-rank, 1,000-step run has millions of rows, far
more than a browser should draw. ``downsample`` keeps, per rank, the first and last sample, the sample
of the highest and the lowest total in each of ``max_points / 2`` equal-count buckets, the highest total
of every step, and the highest reserved and NVML sample of each bucket. So the global peak, every
step's peak and every local dip survive, and each kept row carries its real breakdown: the stack drawn
at a peak is the breakdown measured at that moment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from planner.report import palette
from planner.report.figures import FONT, fmt_bytes, template, unit_for

DEFAULT_MAX_POINTS = 1200
# Above this many phase intervals per rank, phases are drawn at this many time bins (sub-pixel otherwise).
MAX_PHASE_BANDS = 600
OPTIONAL_COLUMNS = ("reserved", "nvml")
# When setup (model build, DeepSpeed init) takes more than this share of the run, the panels open on the
# training steps; plotly's autoscale button shows the setup too.
SETUP_SHARE = 0.3


def category_columns(frame: pd.DataFrame) -> list[str]:
    """The frame's category columns in the report's stacking order (``other`` counts as overhead)."""
    present = {palette.canonical(c): c for c in frame.columns if palette.canonical(c) in palette.CATEGORIES}
    return [present[c] for c in palette.CATEGORIES if c in present]


def _total(frame: pd.DataFrame) -> np.ndarray:
    cols = category_columns(frame)
    if not cols:
        return np.zeros(len(frame))
    return frame[cols].to_numpy(dtype=np.float64).sum(axis=1)


def _argext_per_group(values: np.ndarray, groups: np.ndarray, *, largest: bool) -> np.ndarray:
    """Positions of the largest (or smallest) value in each group; ``groups`` sorted ascending."""
    if len(values) == 0:
        return np.empty(0, dtype=np.int64)
    key = -values if largest else values
    key = np.where(np.isnan(key), np.inf, key)
    order = np.lexsort((key, groups))  # by group, then by key ascending: the first of each group wins
    g = groups[order]
    first = np.r_[True, g[1:] != g[:-1]]
    return order[first]


def downsample_rank(frame: pd.DataFrame, max_points: int = DEFAULT_MAX_POINTS) -> pd.DataFrame:
    """One rank's timeline reduced to about ``max_points`` rows plus one per step, keeping every peak."""
    frame = frame.sort_values("t_s", kind="stable").reset_index(drop=True)
    n = len(frame)
    if n <= max_points:
        return frame
    total = _total(frame)
    num_buckets = max(1, max_points // 2)
    buckets = (np.arange(n) * num_buckets) // n
    keep = [np.array([0, n - 1, int(np.argmax(total))])]
    keep.append(_argext_per_group(total, buckets, largest=True))
    keep.append(_argext_per_group(total, buckets, largest=False))
    if "step" in frame:
        steps = frame["step"].to_numpy()
        if np.all(steps[1:] >= steps[:-1]):
            keep.append(_argext_per_group(total, steps, largest=True))
        else:
            order = np.argsort(steps, kind="stable")
            keep.append(order[_argext_per_group(total[order], steps[order], largest=True)])
    for col in OPTIONAL_COLUMNS:
        if col in frame and frame[col].notna().any():
            values = frame[col].to_numpy(dtype=np.float64)
            keep.append(_argext_per_group(values, buckets, largest=True))
    idx = np.unique(np.concatenate(keep))
    return frame.iloc[idx].reset_index(drop=True)


def downsample(frame: pd.DataFrame, max_points: int = DEFAULT_MAX_POINTS) -> pd.DataFrame:
    """Every rank downsampled with ``downsample_rank``; ranks in ascending order."""
    if "rank" not in frame:
        frame = frame.assign(rank=0)
    parts = [downsample_rank(g, max_points) for _, g in frame.groupby("rank", sort=True)]
    if not parts:
        return frame.iloc[0:0]
    return pd.concat(parts, ignore_index=True)


def phase_bands(times: np.ndarray, phases: np.ndarray, max_bands: int = MAX_PHASE_BANDS) -> list[tuple[str, float, float]]:
    """Contiguous (phase, start, end) intervals; at most ``max_bands`` by sampling the phase on a grid."""
    if len(times) == 0:
        return []
    change = np.r_[True, phases[1:] != phases[:-1]]
    starts = np.flatnonzero(change)
    if len(starts) > max_bands:
        grid = np.linspace(times[0], times[-1], max_bands + 1)
        at = np.clip(np.searchsorted(times, grid[:-1], side="right") - 1, 0, len(times) - 1)
        sampled = phases[at]
        change = np.r_[True, sampled[1:] != sampled[:-1]]
        idx = np.flatnonzero(change)
        ends = np.r_[grid[idx[1:]], grid[-1]]
        return [(str(sampled[i]), float(grid[i]), float(e)) for i, e in zip(idx, ends, strict=True)]
    ends = np.r_[times[starts[1:]], times[-1]]
    return [(str(phases[s]), float(times[s]), float(e)) for s, e in zip(starts, ends, strict=True)]


def _band_trace(bands: Sequence[tuple[str, float, float]], phase: str, top: float, **kw) -> go.Scatter:
    """One trace of rectangles (NaN-separated) for every interval of ``phase``: one SVG path, not one shape each."""
    spans = np.array([(start, end) for name, start, end in bands if name == phase], dtype=np.float64).reshape(-1, 2)
    xs = np.column_stack([spans[:, 0], spans[:, 0], spans[:, 1], spans[:, 1], spans[:, 0], np.full(len(spans), np.nan)])
    ys = np.tile(np.array([0.0, top, top, 0.0, 0.0, np.nan]), (len(spans), 1))
    return go.Scatter(
        x=xs.ravel().astype(np.float32),
        y=ys.ravel().astype(np.float32),
        mode="none",
        fill="toself",
        fillcolor=palette.phase_color(phase),
        name=f"phase: {palette.text(phase)}",
        legendgroup=f"phase-{phase}",
        hoverinfo="skip",
        **kw,
    )


def rank_panel(
    part: pd.DataFrame,
    rank: int,
    *,
    cats: Sequence[str],
    divisor: int,
    unit: str,
    x_range: tuple[float, float],
    y_top: float,
    title: str,
    show_legend: bool,
    references: Sequence[tuple[str, int]] = (),
) -> go.Figure:
    """One rank's panel: phases shaded, categories stacked, reserved and NVML lines, the peak annotated.

    ``references`` are (label, bytes) drawn as horizontal lines: peaks known without a time series, such as
    the caching allocator's reserved peak and NVML's device peak from a CUDA profile's summary.
    """
    fig = go.Figure()
    t = part["t_s"].to_numpy(dtype=np.float64)
    rank_total = _total(part)
    band_top = y_top * 1.02 / divisor
    if "phase" in part and len(part):
        bands = phase_bands(t, part["phase"].astype(str).to_numpy())
        for phase in dict.fromkeys(b[0] for b in bands):
            fig.add_trace(_band_trace(bands, phase, band_top, showlegend=show_legend))
    for col in cats:
        cat = palette.canonical(col)
        fig.add_trace(
            go.Scatter(
                x=t.astype(np.float32),
                y=(part[col].to_numpy(dtype=np.float64) / divisor).astype(np.float32),
                mode="lines",
                line={"width": 0.5, "color": palette.color(cat), "shape": "hv"},
                fillcolor=palette.color(cat),
                stackgroup="allocated",
                name=palette.label(cat),
                legendgroup=cat,
                showlegend=show_legend,
                hovertemplate=f"{palette.label(cat)}: %{{y:,.2f}} {unit}<extra>rank {rank}</extra>",
            )
        )
    for col, name, color, dash in (
        ("reserved", "reserved (caching allocator)", palette.RESERVED_COLOR, "dash"),
        ("nvml", "device (NVML)", palette.DEVICE_COLOR, "dot"),
    ):
        if col in part and part[col].notna().any():
            sel = part[col].notna().to_numpy()
            fig.add_trace(
                go.Scatter(
                    x=t[sel].astype(np.float32),
                    y=(part[col].to_numpy(dtype=np.float64)[sel] / divisor).astype(np.float32),
                    mode="lines",
                    line={"width": 1.5, "color": color, "dash": dash, "shape": "hv"},
                    name=name,
                    legendgroup=col,
                    showlegend=show_legend,
                    hovertemplate=f"{name}: %{{y:,.2f}} {unit}<extra>rank {rank}</extra>",
                )
            )
    for label, value in references:
        dash = "dot" if "NVML" in label else "dash"
        fig.add_hline(y=value / divisor, line={"color": palette.RESERVED_COLOR, "width": 1, "dash": dash},
                      annotation_text=f"{palette.text(label)} {fmt_bytes(value, divisor, unit)}",
                      annotation_position="top left", annotation_font={"size": 10})
    if len(rank_total):
        at = int(np.argmax(rank_total))
        right = t[at] > (x_range[0] + x_range[1]) / 2
        row = part.iloc[at]
        where = [f"step {int(row['step'])}"] if "step" in part else []
        where += [palette.text(row["phase"])] if "phase" in part else []
        fig.add_annotation(
            x=float(t[at]),
            y=float(rank_total[at]) / divisor,
            text=f"peak {fmt_bytes(rank_total[at], divisor, unit)}" + (f" ({', '.join(where)})" if where else ""),
            showarrow=True,
            arrowhead=2,
            ax=-40 if right else 40,
            xanchor="right" if right else "left",
            ay=-26,
            font={"size": 11},
            bgcolor="rgba(255,255,255,0.85)",
        )
    height = 360 if show_legend else 230
    fig.update_layout(
        template=template(),
        font=FONT,
        title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 14}, "yref": "container", "y": 1.0,
               "yanchor": "top", "pad": {"t": 10}},
        height=height,
        margin={"l": 70, "r": 20, "t": 40 + (80 if show_legend else 0), "b": 40},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.04, "xanchor": "left", "x": 0, "font": {"size": 11}},
        showlegend=show_legend,
        hovermode="closest",
    )
    fig.update_xaxes(range=list(x_range), title_text="time since step 0 began (s)" if show_legend else None)
    fig.update_yaxes(range=[0, y_top * 1.15 / divisor], title_text=unit)
    return fig


def aligned(frame: pd.DataFrame) -> pd.DataFrame:
    """``t_s`` shifted per rank so that 0 is when the rank's first training step began.

    Each rank records on its own clock from its own first event, so raw times do not line up across
    ranks; aligned on step 0, the same step sits at the same x on every panel and setup (model build,
    engine initialisation; rows with a negative step) falls at negative times. A rank without a step
    keeps its own start as 0.
    """
    if "rank" not in frame:
        frame = frame.assign(rank=0)
    t = frame["t_s"].to_numpy(dtype=np.float64)
    ranks = frame["rank"].to_numpy()
    if "step" in frame:
        stepped = pd.Series(np.where(frame["step"].to_numpy() >= 0, t, np.nan))
        zero = stepped.groupby(ranks).transform("min").to_numpy()
    else:
        zero = np.full(len(t), np.nan)
    zero = np.where(np.isnan(zero), pd.Series(t).groupby(ranks).transform("min").to_numpy(), zero)
    return frame.assign(t_s=t - zero)


def hidden_setup_s(frame: pd.DataFrame) -> float:
    """Seconds of setup left off the initial view of ``aligned(frame)`` (0 when setup is short enough)."""
    t = frame["t_s"].to_numpy(dtype=np.float64)
    t0, t1 = float(t.min()), float(t.max())
    if t0 >= 0 or -t0 <= SETUP_SHARE * (t1 - t0):
        return 0.0
    return -t0


def timeline_figures(
    frame: pd.DataFrame,
    *,
    title: str,
    max_points: int = DEFAULT_MAX_POINTS,
    references: Mapping[int, Sequence[tuple[str, int]]] | None = None,
) -> list[tuple[int, go.Figure]]:
    """(rank, panel) for every rank, on one time axis and one memory scale so panels compare at a glance.

    ``frame`` is the full timeline (see the module docstring); it is aligned on step 0 (``aligned``) and
    downsampled here. The first panel carries the legend and the title.
    """
    frame = aligned(frame)
    small = downsample(frame, max_points)
    if not len(small):
        return []
    cats = category_columns(small)
    tops = [_total(small)] + [small[c].to_numpy(dtype=np.float64) for c in OPTIONAL_COLUMNS if c in small]
    y_top = max(float(np.nanmax(np.concatenate(tops))), 1.0)
    references = references or {}
    y_top = max([y_top] + [float(v) for refs in references.values() for _, v in refs])
    divisor, unit = unit_for(y_top)
    t = small["t_s"].to_numpy(dtype=np.float64)
    x_range = (float(t.min()), float(t.max()) if t.max() > t.min() else float(t.min()) + 1.0)
    if hidden_setup_s(small):
        x_range = (-0.02 * x_range[1], x_range[1])
    panels = []
    for i, (rank, part) in enumerate(small.groupby("rank", sort=True)):
        panels.append((int(rank), rank_panel(
            part.reset_index(drop=True), int(rank), cats=cats, divisor=divisor, unit=unit, x_range=x_range,
            y_top=y_top, title=f"{title}, rank {int(rank)}" if i == 0 else f"rank {int(rank)}", show_legend=i == 0,
            references=references.get(int(rank), ()),
        )))
    return panels
