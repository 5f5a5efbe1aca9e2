"""Replay a rank's alloc/free events into the estimator's categories, peaks and a timeline (pure Python).

Input (a ``Recording``): the allocator's events, the windows the runner marked with ``record_function``, and
the identity probes: at known moments the runner listed the storage pointers of every parameter, gradient
and optimizer-state tensor. Output (an ``Attribution``): one category per allocation, the running total per
category, the steady-state peak and what was alive at it.

Categories (DESIGN.md §2, the estimator's names):

- by identity, from the probes: ``params`` (parameters incl. bitsandbytes Params4bit and their quant_state
  tensors, DeepSpeed's 16-bit flat partitions), ``grads`` (``.grad``, DeepSpeed's 16-bit gradient
  partitions), ``optimizer_states`` (optimizer state tensors, fp32 master weights / partitions) and
  ``temporaries/allgather`` (ZeRO-3 full parameters gathered at a probe). Identity wins over lifetime.
- by lifetime, for every other allocation: made in a step's ``forward`` or ``loss`` phase, alive when that
  micro-batch's ``backward`` starts and freed by the end of the step -> ``activations`` (saved for
  backward); made inside a recomputation window (a checkpointed layer's forward re-run during backward) and
  alive when it ends -> ``activations/recompute``; made during a step and outliving it -> ``temporaries/
  persistent`` (buffers an engine allocates lazily, e.g. DDP's rebuilt buckets); anything else made during
  a step -> ``temporaries/<phase>``, except the input batch -> ``other/inputs``; made while the data-parallel
  engine was set up -> ``temporaries/engine`` (DDP buckets, DeepSpeed buffers); elsewhere in setup ->
  ``other/setup`` (buffers such as rotary tables).

An allocation keeps one category for its whole life, so the categories add up to the total at every event.

Frees the recorder could not see (a tensor whose last reference a gloo worker thread dropped, see
gloo_settle.py) are inferred: an allocation that a liveness probe found unreachable, or whose address was
reused while it looked alive, is freed at the end of the last collective that used it (``comm`` markers).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from planner.profile.recording import (  # noqa: F401 - re-exported for the recorders and the store
    CATEGORIES,
    IDENTITY_PRIORITY,
    MARKER_PREFIX,
    STEP_PHASES,
    TIMELINE_COLUMNS,
    PeakBreakdown,
    Recording,
    Window,
)


@dataclass
class Attribution:
    peak: PeakBreakdown | None  # steady-state allocated peak (after step 0 when there was a step 1)
    steady_state: bool  # False when fewer than two steps completed: the peak then includes step 0
    phase_peaks: dict[str, PeakBreakdown]  # the same window, per phase name
    step_windows: list[dict]  # per (step, micro-batch, phase): times and bytes at start / end / peak
    timeline: dict[str, list]  # columns of the event table (TIMELINE_COLUMNS)
    num_allocations: int
    num_unmatched_frees: int
    num_inferred_frees: int
    recorder_peak_bytes: int | None  # the recorder's own maximum over the same window (cross-check)
    t_origin_ns: int  # recorder clock time of t_ns == 0
    identity_bytes: dict[str, int] = field(default_factory=dict)  # identified bytes alive at the last probe


@dataclass
class _Alloc:
    addr: int
    size: int
    t_alloc: int
    seq_alloc: int
    t_free: int | None = None
    seq_free: int = 0
    key: str = ""  # "category/origin"
    free_inferred: bool = False


@dataclass(frozen=True)
class _StepWindow:
    start: int
    end: int
    step: int
    mb: int
    phase: str


@dataclass
class _Marks:
    steps: list[_StepWindow] = field(default_factory=list)
    recompute: list[tuple[int, int]] = field(default_factory=list)
    packs: list[tuple[int, int]] = field(default_factory=list)  # save_on_cpu's pack hook (profile/offload.py)
    setup: list[tuple[int, int, str]] = field(default_factory=list)
    probes: dict[int, int] = field(default_factory=dict)
    comm: dict[int, tuple[int, int]] = field(default_factory=dict)  # call index -> (start, end)
    comm_wait: dict[int, int] = field(default_factory=dict)  # call index -> end of its wait
    live: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index()

    def index(self) -> None:
        self.steps.sort(key=lambda s: (s.start, s.end))
        self.recompute.sort()
        self.setup.sort()
        self.step_starts = [s.start for s in self.steps]
        self.rec_starts = [r[0] for r in self.recompute]
        self.packs.sort()
        self.pack_starts = [p[0] for p in self.packs]
        self.setup_starts = [s[0] for s in self.setup]


def parse_windows(windows: list[Window]) -> _Marks:
    m = _Marks()
    for w in windows:
        parts = w.name.split("::")
        kind = parts[0]
        if kind == "step" and len(parts) == 4 and parts[3] in STEP_PHASES:
            m.steps.append(_StepWindow(w.start_ns, w.end_ns, int(parts[1]), int(parts[2]), parts[3]))
        elif kind == "recompute":
            m.recompute.append((w.start_ns, w.end_ns))
        elif kind == "pack":
            m.packs.append((w.start_ns, w.end_ns))
        elif kind == "setup" and len(parts) == 2:
            m.setup.append((w.start_ns, w.end_ns, parts[1]))
        elif kind == "comm" and len(parts) == 2:
            m.comm[int(parts[1])] = (w.start_ns, w.end_ns)
        elif kind == "commwait" and len(parts) == 2:
            m.comm_wait[int(parts[1])] = max(w.end_ns, m.comm_wait.get(int(parts[1]), 0))
        elif kind in ("probe", "live") and len(parts) == 2:
            getattr(m, "probes" if kind == "probe" else "live")[int(parts[1])] = w.start_ns
    m.index()
    return m


def _find(starts: list[int], items: list, t: int):
    """The item whose [start, end] holds t (items sorted by start, not overlapping), else None."""
    i = bisect.bisect_right(starts, t) - 1
    if i < 0:
        return None
    item = items[i]
    end = item[1] if isinstance(item, tuple) else item.end
    return item if end >= t else None


def _build_allocations(events: list[tuple[int, int, int]]) -> tuple[list[_Alloc], list[int]]:
    """Allocations with their lifetimes, and the indices of frees of allocations never seen (made before
    the recording started)."""
    order = sorted(range(len(events)), key=lambda i: (events[i][0], i))
    allocs: list[_Alloc] = []
    live: dict[int, int] = {}
    unmatched: list[int] = []
    for i in order:
        t, addr, delta = events[i]
        if delta > 0:
            if addr in live:  # its free was never seen: it ended when the address was handed out again
                old = allocs[live[addr]]
                old.t_free, old.seq_free, old.free_inferred = t, i, True
            live[addr] = len(allocs)
            allocs.append(_Alloc(addr, delta, t, i))
        elif delta < 0:
            idx = live.pop(addr, None)
            if idx is None:
                unmatched.append(i)
                continue
            allocs[idx].t_free, allocs[idx].seq_free = t, i
    return allocs, unmatched


def _resolve_unseen_frees(allocs: list[_Alloc], marks: _Marks, rec: Recording) -> int:
    """Free allocations that died unseen at the end of the last collective that used or allocated them."""

    def ends(k: int) -> list[int]:
        return [marks.comm[k][1], *([marks.comm_wait[k]] if k in marks.comm_wait else [])]

    by_ptr: dict[int, list[int]] = {}
    for k, ptrs in rec.comm.items():
        if k in marks.comm:
            for p in ptrs:
                by_ptr.setdefault(p, []).extend(ends(k))
    calls = sorted((start, end, k) for k, (start, end) in marks.comm.items())
    call_starts = [c[0] for c in calls]
    live_sets = [(marks.live[k], set(ptrs)) for k, ptrs in rec.live.items() if k in marks.live]
    n = 0
    for a in allocs:
        times = list(by_ptr.get(a.addr, ()))
        call = _find(call_starts, calls, a.t_alloc)
        if call is not None:  # made inside a collective: c10d's own buffer for it
            times.extend(ends(call[2]))
        if not times:
            continue
        unseen = a.free_inferred or any(
            a.t_alloc <= t and (a.t_free is None or a.t_free > t) and a.addr not in ptrs for t, ptrs in live_sets
        )
        if not unseen:
            continue
        limit = a.t_free if a.t_free is not None else max(t for t, _ in live_sets)
        best = max((t for t in times if a.t_alloc <= t <= limit), default=None)
        if best is not None:
            a.t_free, a.seq_free, a.free_inferred = best, -1, True
            n += 1
    return n


def _apply_probes(allocs: list[_Alloc], probes: dict[int, dict[str, list[int]]], times: dict[int, int]):
    by_addr: dict[int, list[tuple[int, int]]] = {}
    for idx, a in enumerate(allocs):
        by_addr.setdefault(a.addr, []).append((a.t_alloc, idx))
    rank = {k: i for i, k in enumerate(IDENTITY_PRIORITY)}
    last_t = None
    for k in sorted(probes):
        t = times.get(k)
        if t is None:
            continue
        last_t = t
        for key, ptrs in probes[k].items():
            for ptr in ptrs:
                lst = by_addr.get(ptr)
                j = bisect.bisect_right(lst, (t, len(allocs))) - 1 if lst else -1
                if j < 0:
                    continue
                a = allocs[lst[j][1]]
                if (a.t_free is None or a.t_free >= t) and (not a.key or rank.get(key, 99) < rank.get(a.key, 99)):
                    a.key = key
    identity: dict[str, int] = {k: 0 for k in IDENTITY_PRIORITY}
    if last_t is not None:
        for a in allocs:
            if a.key and a.t_alloc <= last_t and (a.t_free is None or a.t_free >= last_t):
                identity[a.key] += a.size
    return identity


def _lifetime_key(a: _Alloc, m: _Marks, bwd_start: dict, step_end: dict) -> str:
    w = _find(m.step_starts, m.steps, a.t_alloc)
    if w is not None:
        end = step_end.get(w.step)
        if end is not None and (a.t_free is None or a.t_free > end):
            return "temporaries/persistent"
        if w.phase in ("forward", "loss"):
            b = bwd_start.get((w.step, w.mb))
            if b is not None and (a.t_free is None or a.t_free > b):
                # activation offloading's copies: host RAM on a GPU
                offloaded = m.packs and _find(m.pack_starts, m.packs, a.t_alloc) is not None
                return "activations/offloaded" if offloaded else f"activations/{w.phase}"
            return f"temporaries/{w.phase}"
        if w.phase == "backward":
            r = _find(m.rec_starts, m.recompute, a.t_alloc)
            if r is not None and (a.t_free is None or a.t_free > r[1]):
                return "activations/recompute"
            return "temporaries/backward"
        if w.phase == "inputs":
            return "other/inputs"
        return f"temporaries/{w.phase}"
    s = _find(m.setup_starts, m.setup, a.t_alloc)
    if s is not None and s[2] == "wrap":
        return "temporaries/engine"
    return "other/setup"


def _breakdown(total: int, t: int, running: dict[str, int], m: _Marks, t_origin: int) -> PeakBreakdown:
    w = _find(m.step_starts, m.steps, t)
    by_cat = {c: 0 for c in CATEGORIES}
    for k, v in running.items():
        by_cat[k.split("/", 1)[0]] += v
    return PeakBreakdown(
        allocated_bytes=total,
        t_ns=t - t_origin,
        step=w.step if w else None,
        micro_batch=w.mb if w else None,
        phase=w.phase if w else "between",
        by_category=by_cat,
        detail={k: v for k, v in running.items() if v},
    )


def attribute(rec: Recording) -> Attribution:
    m = parse_windows(rec.windows)
    allocs, unmatched = _build_allocations(rec.events)
    num_inferred = _resolve_unseen_frees(allocs, m, rec)
    identity_bytes = _apply_probes(allocs, rec.probes, m.probes)
    bwd_start: dict[tuple[int, int], int] = {}
    step_end: dict[int, int] = {}
    for s in m.steps:
        if s.phase == "backward":
            bwd_start.setdefault((s.step, s.mb), s.start)
        if s.phase == "optimizer_step":
            step_end[s.step] = s.end
    for a in allocs:
        if not a.key:
            a.key = _lifetime_key(a, m, bwd_start, step_end)
        elif "/" not in a.key:
            a.key = f"{a.key}/identity"

    # The steady state starts with step 1 (step 0 creates optimizer states and lazy buffers).
    steady = len(step_end) >= 2
    first = 1 if steady else min((s.step for s in m.steps), default=None)
    in_win = [s for s in m.steps if first is not None and s.step >= first]
    t0_win = min((s.start for s in in_win), default=None)
    t1_win = max((s.end for s in in_win), default=None)
    t_origin = min([e[0] for e in rec.events] + [w.start_ns for w in rec.windows] or [0])

    flow = []  # (t, seq, alloc index, delta, inferred)
    for idx, a in enumerate(allocs):
        flow.append((a.t_alloc, a.seq_alloc, idx, a.size, False))
        if a.t_free is not None:
            flow.append((a.t_free, a.seq_free, idx, -a.size, a.free_inferred))
    flow.sort(key=lambda f: (f[0], f[1]))

    cols: dict[str, list] = {k: [] for k in TIMELINE_COLUMNS}
    running: dict[str, int] = {}
    total = 0
    peak = None
    phase_peak: dict[str, tuple] = {}
    win_peak: dict[tuple[int, int, str], int] = {}
    for t, _, idx, delta, inferred in flow:
        a = allocs[idx]
        running[a.key] = running.get(a.key, 0) + delta
        total += delta
        w = _find(m.step_starts, m.steps, t)
        cat, origin = a.key.split("/", 1)
        cols["t_ns"].append(t - t_origin)
        cols["step"].append(w.step if w else -1)
        cols["micro_batch"].append(w.mb if w else -1)
        cols["phase"].append(w.phase if w else ("setup" if _find(m.setup_starts, m.setup, t) else "between"))
        cols["alloc_id"].append(idx)
        cols["delta_bytes"].append(delta)
        cols["category"].append(cat)
        cols["origin"].append(origin)
        cols["allocated_bytes"].append(total)
        cols["inferred"].append(inferred)
        if w is not None:
            key = (w.step, w.mb, w.phase)
            win_peak[key] = max(win_peak.get(key, 0), total)
        if t0_win is not None and t0_win <= t <= t1_win:
            if peak is None or total > peak[0]:
                peak = (total, t, dict(running))
            if w is not None and (w.phase not in phase_peak or total > phase_peak[w.phase][0]):
                phase_peak[w.phase] = (total, t, dict(running))

    rec_peak = _recorder_peak(rec, unmatched, t0_win, t1_win)
    return Attribution(
        peak=_breakdown(*peak, m, t_origin) if peak else None,
        steady_state=steady,
        phase_peaks={ph: _breakdown(*p, m, t_origin) for ph, p in sorted(phase_peak.items())},
        step_windows=_window_table(m, cols, win_peak, t_origin),
        timeline=cols,
        num_allocations=len(allocs),
        num_unmatched_frees=len(unmatched),
        num_inferred_frees=num_inferred,
        recorder_peak_bytes=rec_peak,
        t_origin_ns=t_origin,
        identity_bytes=identity_bytes,
    )


def _recorder_peak(rec: Recording, unmatched: list[int], t0: int | None, t1: int | None) -> int | None:
    """The recorder's own running total, over the same window, on the replay's footing.

    The CPU profiler's counter is process-wide: it starts from what earlier recordings in the process left
    and drops by frees of allocations made before this recording, which the replay ignores.
    """
    if not rec.recorder_totals or t0 is None:
        return None
    order = sorted(range(len(rec.events)), key=lambda i: (rec.events[i][0], i))
    base = rec.recorder_totals[order[0]] - rec.events[order[0]][2]
    skipped = set(unmatched)
    correction = 0
    best = None
    for i in order:
        if i in skipped:
            correction -= rec.events[i][2]
        t = rec.events[i][0]
        if t0 <= t <= t1:
            value = rec.recorder_totals[i] - base + correction
            best = value if best is None else max(best, value)
    return best


def _window_table(m: _Marks, cols: dict[str, list], win_peak: dict, t_origin: int) -> list[dict]:
    """Per step window: start and end times (relative), live bytes at its start and end, and its peak."""
    times, totals = cols["t_ns"], cols["allocated_bytes"]

    def live_at(t: int) -> int:
        j = bisect.bisect_right(times, t - t_origin) - 1
        return totals[j] if j >= 0 else 0

    rows = []
    for s in m.steps:
        start_b, end_b = live_at(s.start), live_at(s.end)
        rows.append(
            {
                "step": s.step,
                "micro_batch": s.mb,
                "phase": s.phase,
                "start_ns": s.start - t_origin,
                "end_ns": s.end - t_origin,
                "start_bytes": start_b,
                "end_bytes": end_b,
                "peak_bytes": max(win_peak.get((s.step, s.mb, s.phase), 0), start_b, end_b),
            }
        )
    return rows
