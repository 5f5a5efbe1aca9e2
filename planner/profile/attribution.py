"""Replay a rank's alloc/free events into the estimator's categories, peaks and a timeline (pure Python).

Input (a ``Recording``): the allocator's events in time order, the phase windows the runner marked with
``record_function``, and the identity probes: at known moments the runner listed the storage pointers of
every parameter, gradient and optimizer-state tensor. Output (an ``Attribution``): one category per
allocation, the running total per category, the steady-state peak and what was alive at it.

Categories (DESIGN.md §2, same names as the estimator):

- by identity, from the probes: ``params`` (parameters incl. bitsandbytes Params4bit and their quant_state
  tensors, DeepSpeed's flat 16-bit partitions), ``grads`` (``.grad``, DeepSpeed's 16-bit gradient
  partitions), ``optimizer_states`` (optimizer state tensors and fp32 master weights / partitions), and
  ``temporaries/allgather`` (ZeRO-3 full parameters gathered at a probe). Identity wins over lifetime.
- by lifetime, for every other allocation: made in a step's ``forward`` or ``loss`` phase and still alive
  when that micro-batch's ``backward`` starts -> ``activations`` (saved for backward); made inside a
  recomputation window (a checkpointed layer's forward re-run during backward) and alive when it ends ->
  ``activations/recompute``; anything else made during a step -> ``temporaries`` (origin = its phase),
  except the input batch -> ``other/inputs``; made while the data-parallel engine was being set up (DDP
  buckets, DeepSpeed buffers) -> ``temporaries/engine``; made elsewhere during setup (buffers such as
  rotary tables) -> ``other/setup``.

An allocation keeps one category for its whole life, so the categories add up to the total at every event.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

CATEGORIES = ("params", "grads", "optimizer_states", "activations", "temporaries", "other")
STEP_PHASES = ("inputs", "forward", "loss", "backward", "optimizer_step")
# When one storage is listed under two identities (DeepSpeed views), the first in this order wins.
IDENTITY_PRIORITY = ("params", "optimizer_states", "grads", "temporaries/allgather")
MARKER_PREFIX = "planner::"


@dataclass(frozen=True)
class Window:
    """A marked time range; ``name`` is the record_function name without the ``planner::`` prefix."""

    name: str
    start_ns: int
    end_ns: int


@dataclass
class Recording:
    """One rank's raw recording, normalised across the CPU and CUDA recorders."""

    events: list[tuple[int, int, int]]  # (t_ns, addr, delta_bytes): +size alloc, -size free; in recorded order
    windows: list[Window]
    probes: dict[int, dict[str, list[int]]]  # probe index -> identity key -> storage data pointers
    recorder_totals: list[int] | None = None  # the recorder's own running total per event (CPU profiler)


@dataclass(frozen=True)
class PeakBreakdown:
    allocated_bytes: int
    t_ns: int  # relative to the recording's start
    step: int | None
    micro_batch: int | None
    phase: str
    by_category: dict[str, int]
    detail: dict[str, int]  # "category/origin" -> bytes

    def to_dict(self) -> dict:
        return {
            "allocated_bytes": self.allocated_bytes,
            "t_ns": self.t_ns,
            "step": self.step,
            "micro_batch": self.micro_batch,
            "phase": self.phase,
            "by_category": dict(self.by_category),
            "detail": dict(sorted(self.detail.items())),
        }


@dataclass
class Attribution:
    peak: PeakBreakdown | None  # steady-state allocated peak (after step 0 when there was a step 1)
    steady_state: bool  # False when fewer than two steps completed: the peak then includes step 0
    phase_peaks: dict[str, PeakBreakdown]  # the same window, per phase name
    step_windows: list[dict]  # per (step, micro-batch, phase): times and bytes at start / end / peak
    timeline: dict[str, list]  # columns of the event table
    num_allocations: int
    num_unmatched_frees: int
    recorder_peak_bytes: int | None  # the recorder's own maximum over the same window (cross-check)
    identity_bytes: dict[str, int] = field(default_factory=dict)  # identified bytes alive at the last probe


@dataclass
class _Alloc:
    addr: int
    size: int
    t_alloc: int
    t_free: int | None = None
    key: str = ""  # "category/origin"


@dataclass(frozen=True)
class _StepWindow:
    start: int
    end: int
    step: int
    mb: int
    phase: str


def parse_windows(windows: list[Window]):
    """Split marked windows into step phases, recomputation windows, setup windows and probes."""
    steps: list[_StepWindow] = []
    recompute: list[tuple[int, int]] = []
    setup: list[tuple[int, int, str]] = []
    probes: dict[int, int] = {}
    for w in windows:
        parts = w.name.split("::")
        if parts[0] == "step" and len(parts) == 4 and parts[3] in STEP_PHASES:
            steps.append(_StepWindow(w.start_ns, w.end_ns, int(parts[1]), int(parts[2]), parts[3]))
        elif parts[0] == "recompute":
            recompute.append((w.start_ns, w.end_ns))
        elif parts[0] == "setup" and len(parts) == 2:
            setup.append((w.start_ns, w.end_ns, parts[1]))
        elif parts[0] == "probe" and len(parts) == 2:
            probes[int(parts[1])] = w.start_ns
    steps.sort(key=lambda s: (s.start, s.end))
    recompute.sort()
    setup.sort()
    return steps, recompute, setup, probes


def _find(starts: list[int], items: list, t: int):
    """The item whose [start, end] holds t (items sorted by start, disjoint), else None."""
    i = bisect.bisect_right(starts, t) - 1
    if i < 0:
        return None
    item = items[i]
    end = item[1] if isinstance(item, tuple) else item.end
    return item if end >= t else None


def _build_allocations(events: list[tuple[int, int, int]]):
    order = sorted(range(len(events)), key=lambda i: (events[i][0], i))
    allocs: list[_Alloc] = []
    live: dict[int, int] = {}
    event_alloc: list[int] = [-1] * len(events)
    unmatched = 0
    for i in order:
        t, addr, delta = events[i]
        if delta > 0:
            if addr in live:  # a free we never saw: close the old allocation here
                allocs[live[addr]].t_free = t
            live[addr] = len(allocs)
            event_alloc[i] = len(allocs)
            allocs.append(_Alloc(addr, delta, t))
        elif delta < 0:
            idx = live.pop(addr, None)
            if idx is None:
                unmatched += 1
                continue
            allocs[idx].t_free = t
            event_alloc[i] = idx
    return order, allocs, event_alloc, unmatched


def _apply_probes(allocs: list[_Alloc], probes: dict[int, dict[str, list[int]]], probe_times: dict[int, int]):
    by_addr: dict[int, list[tuple[int, int]]] = {}
    for idx, a in enumerate(allocs):
        by_addr.setdefault(a.addr, []).append((a.t_alloc, idx))
    rank = {k: i for i, k in enumerate(IDENTITY_PRIORITY)}
    last_probe_bytes: dict[str, int] = {}
    for k in sorted(probes):
        t = probe_times.get(k)
        if t is None:
            continue
        seen: set[int] = set()
        found = {key: 0 for key in probes[k]}
        for key, ptrs in probes[k].items():
            for ptr in ptrs:
                lst = by_addr.get(ptr)
                if not lst:
                    continue
                j = bisect.bisect_right(lst, (t, len(allocs))) - 1
                if j < 0:
                    continue
                idx = lst[j][1]
                a = allocs[idx]
                if a.t_free is not None and a.t_free < t:
                    continue
                if not a.key or rank.get(key, 99) < rank.get(a.key, 99):
                    a.key = key
                if idx not in seen and a.key == key:
                    seen.add(idx)
                    found[key] += a.size
        last_probe_bytes = found
    return last_probe_bytes


def _lifetime_key(a: _Alloc, steps, step_starts, bwd_start, recompute, rec_starts, setup, setup_starts) -> str:
    w = _find(step_starts, steps, a.t_alloc)
    if w is not None:
        if w.phase in ("forward", "loss"):
            b = bwd_start.get((w.step, w.mb))
            if b is not None and (a.t_free is None or a.t_free > b):
                return f"activations/{w.phase}"
            return f"temporaries/{w.phase}"
        if w.phase == "backward":
            r = _find(rec_starts, recompute, a.t_alloc)
            if r is not None and (a.t_free is None or a.t_free > r[1]):
                return "activations/recompute"
            return "temporaries/backward"
        if w.phase == "inputs":
            return "other/inputs"
        return f"temporaries/{w.phase}"
    s = _find(setup_starts, setup, a.t_alloc)
    if s is not None and s[2] == "wrap":
        return "temporaries/engine"
    return "other/setup"


def _category(key: str) -> str:
    return key.split("/", 1)[0]


def attribute(rec: Recording) -> Attribution:
    steps, recompute, setup, probe_times = parse_windows(rec.windows)
    order, allocs, event_alloc, unmatched = _build_allocations(rec.events)
    identity_bytes = _apply_probes(allocs, rec.probes, probe_times)

    step_starts = [s.start for s in steps]
    rec_starts = [r[0] for r in recompute]
    setup_starts = [s[0] for s in setup]
    bwd_start = {}
    for s in steps:
        if s.phase == "backward":
            bwd_start.setdefault((s.step, s.mb), s.start)
    for a in allocs:
        if not a.key:
            a.key = _lifetime_key(a, steps, step_starts, bwd_start, recompute, rec_starts, setup, setup_starts)
        elif "/" not in a.key:
            a.key = f"{a.key}/identity"

    # The steady state starts with step 1 (step 0 creates optimizer states and lazy buffers).
    completed = sorted({s.step for s in steps if s.phase == "optimizer_step"})
    step_ids = sorted({s.step for s in steps})
    steady = len(completed) >= 2
    first = 1 if steady else (step_ids[0] if step_ids else None)
    win = [s for s in steps if first is not None and s.step >= first]
    t0_win = min((s.start for s in win), default=None)
    t1_win = max((s.end for s in win), default=None)
    t_origin = min([e[0] for e in rec.events[:1]] + [w.start_ns for w in rec.windows[:1]] or [0])
    if rec.events:
        t_origin = min(t_origin, min(e[0] for e in rec.events))

    cols: dict[str, list] = {k: [] for k in ("t_ns", "step", "micro_batch", "phase", "alloc_id", "delta_bytes",
                                             "category", "origin", "allocated_bytes")}
    running: dict[str, int] = {}
    total = 0
    peak: tuple[int, int, dict] | None = None  # (bytes, t, detail)
    phase_peak: dict[str, tuple[int, int, dict, _StepWindow]] = {}
    win_stats: dict[tuple[int, int, str], dict] = {}
    rec_peak = None
    for i in order:
        idx = event_alloc[i]
        if idx < 0:
            continue
        t, _, delta = rec.events[i]
        a = allocs[idx]
        running[a.key] = running.get(a.key, 0) + delta
        total += delta
        w = _find(step_starts, steps, t)
        cat, origin = a.key.split("/", 1)
        cols["t_ns"].append(t - t_origin)
        cols["step"].append(w.step if w else -1)
        cols["micro_batch"].append(w.mb if w else -1)
        cols["phase"].append(w.phase if w else ("setup" if _find(setup_starts, setup, t) else "between"))
        cols["alloc_id"].append(idx)
        cols["delta_bytes"].append(delta)
        cols["category"].append(cat)
        cols["origin"].append(origin)
        cols["allocated_bytes"].append(total)
        if w is not None:
            st = win_stats.setdefault((w.step, w.mb, w.phase), {"peak_bytes": total})
            st["peak_bytes"] = max(st["peak_bytes"], total)
        in_window = t0_win is not None and t0_win <= t <= t1_win
        if in_window:
            if rec.recorder_totals is not None:
                rec_peak = max(rec_peak or 0, rec.recorder_totals[i])
            if peak is None or total > peak[0]:
                peak = (total, t, dict(running))
            if w is not None and (w.phase not in phase_peak or total > phase_peak[w.phase][0]):
                phase_peak[w.phase] = (total, t, dict(running), w)

    def breakdown(p) -> PeakBreakdown:
        bytes_, t, detail, *rest = p
        w = rest[0] if rest else _find(step_starts, steps, t)
        by_cat = {c: 0 for c in CATEGORIES}
        for k, v in detail.items():
            by_cat[_category(k)] += v
        return PeakBreakdown(
            allocated_bytes=bytes_,
            t_ns=t - t_origin,
            step=w.step if w else None,
            micro_batch=w.mb if w else None,
            phase=w.phase if w else "between",
            by_category=by_cat,
            detail={k: v for k, v in detail.items() if v},
        )

    step_windows = _window_table(steps, allocs, order, event_alloc, rec.events, win_stats, t_origin)
    return Attribution(
        peak=breakdown(peak) if peak else None,
        steady_state=steady,
        phase_peaks={ph: breakdown(p) for ph, p in sorted(phase_peak.items())},
        step_windows=step_windows,
        timeline=cols,
        num_allocations=len(allocs),
        num_unmatched_frees=unmatched,
        recorder_peak_bytes=rec_peak,
        identity_bytes=identity_bytes,
    )


def _window_table(steps, allocs, order, event_alloc, events, win_stats, t_origin) -> list[dict]:
    """Per step window: start and end times (relative), live bytes at its start and end, and its peak."""
    times = []
    totals = []
    total = 0
    for i in order:
        if event_alloc[i] < 0:
            continue
        total += events[i][2]
        times.append(events[i][0])
        totals.append(total)

    def live_at(t: int) -> int:
        j = bisect.bisect_right(times, t) - 1
        return totals[j] if j >= 0 else 0

    rows = []
    for s in steps:
        start_b, end_b = live_at(s.start), live_at(s.end)
        st = win_stats.get((s.step, s.mb, s.phase), {})
        rows.append(
            {
                "step": s.step,
                "micro_batch": s.mb,
                "phase": s.phase,
                "start_ns": s.start - t_origin,
                "end_ns": s.end - t_origin,
                "start_bytes": start_b,
                "end_bytes": end_b,
                "peak_bytes": max(st.get("peak_bytes", 0), start_b, end_b),
            }
        )
    return rows
