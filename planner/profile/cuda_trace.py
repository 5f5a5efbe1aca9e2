"""A CUDA memory snapshot (``torch.cuda.memory._snapshot()``) as alloc/free events and marked windows.

Pure Python over the documented snapshot dict (torch/cuda/memory.py ``_snapshot``): ``device_traces[d]``
holds TraceEntry dicts (``action``, ``addr``, ``size``, ``time_us``); with ``global_record_annotations`` the
``record_function`` markers come back as ``external_annotations`` (``name``, ``stage`` START/END,
``time_us``). An allocation counts from ``alloc`` to ``free_completed`` (the block is reusable then), the
same convention as pytorch.org/memory_viz's active-memory timeline. Segment events give reserved memory.
"""

from __future__ import annotations

from typing import Any

from planner.profile.attribution import MARKER_PREFIX, Window


def trace_events(snapshot: dict[str, Any], device: int) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]], int]:
    """(alloc/free events, reserved-bytes series, number of OOM entries) of one device, times in ns."""
    traces = snapshot.get("device_traces") or []
    entries = traces[device] if device < len(traces) else []
    events: list[tuple[int, int, int]] = []
    reserved: list[tuple[int, int]] = []
    # Recording starts before the run allocates anything, so every segment shows up in the trace.
    total_reserved = 0
    num_oom = 0
    for e in entries:
        action = e.get("action")
        t = int(e.get("time_us", 0)) * 1000
        size = int(e.get("size", 0))
        if action == "alloc":
            events.append((t, int(e["addr"]), size))
        elif action == "free_completed":
            events.append((t, int(e["addr"]), -size))
        elif action in ("segment_alloc", "segment_map"):
            total_reserved += size
            reserved.append((t, total_reserved))
        elif action in ("segment_free", "segment_unmap"):
            total_reserved -= size
            reserved.append((t, total_reserved))
        elif action == "oom":
            num_oom += 1
    return events, reserved, num_oom


def annotation_windows(snapshot: dict[str, Any], device: int | None = None) -> list[Window]:
    """Pair START/END annotations of planner markers into windows (times in ns)."""
    open_: dict[str, list[int]] = {}
    windows: list[Window] = []
    for a in snapshot.get("external_annotations") or []:
        name = a.get("name", "")
        if not isinstance(name, str) or not name.startswith(MARKER_PREFIX):
            continue
        if device is not None and "device" in a and int(a["device"]) not in (device, -1):
            continue
        t = int(a.get("time_us", 0)) * 1000
        stage = str(a.get("stage", "")).upper()
        if stage == "START":
            open_.setdefault(name, []).append(t)
        elif stage == "END" and open_.get(name):
            windows.append(Window(name[len(MARKER_PREFIX) :], open_[name].pop(), t))
    windows.sort(key=lambda w: (w.start_ns, w.end_ns))
    return windows
