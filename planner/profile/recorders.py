"""Recorders: every allocation and free of one rank, phase windows and identity probes.

- ``CpuRecorder``: ``torch.profiler.profile(profile_memory=True)`` reports each CPU allocation and free
  (pointer, bytes, the allocator's running total); ``record_function`` markers give the phase windows.
  It starts before the model is built, so every tensor of the run is seen allocated.
- ``CudaRecorder``: ``torch.cuda.memory._record_memory_history`` (the trace behind pytorch.org/memory_viz,
  saved as ``snapshot-rank<r>.pickle``) with ``global_record_annotations`` so the same markers land in the
  snapshot; ``torch.cuda.memory_stats()`` at the end of every window (allocated, reserved, active and
  requested peaks, ``num_alloc_retries``, ``num_ooms``), peaks reset per window; an NVML thread sampling the
  device's used memory.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import record_function

from planner.profile.attribution import MARKER_PREFIX, Recording, Window

# Entries of the CUDA allocation history kept (ring buffer); far above what a few steps of a model need.
CUDA_HISTORY_MAX_ENTRIES = 2_000_000
NVML_INTERVAL_S = 0.01


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto prints start/stop lines on file descriptor 2; keep the progress display clean."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class Recorder:
    device = "cpu"

    def __init__(self) -> None:
        self.probes: dict[int, dict[str, list[int]]] = {}
        self.live: dict[int, list[int]] = {}
        self.wall_windows: list[Window] = []
        self.window_stats: list[dict[str, Any]] = []
        self._rf_stack: list[Any] = []

    @contextlib.contextmanager
    def window(self, name: str):
        t0 = time.time_ns()
        try:
            with record_function(MARKER_PREFIX + name):
                yield
        finally:
            self.wall_windows.append(Window(name, t0, time.time_ns()))
            self.on_window_end(name)

    def enter(self, name: str) -> None:
        """Open a window from a hook (closed by ``exit``); used for recomputation inside backward."""
        rf = record_function(MARKER_PREFIX + name)
        rf.__enter__()
        self._rf_stack.append(rf)

    def exit(self) -> None:
        if self._rf_stack:
            self._rf_stack.pop().__exit__(None, None, None)

    def probe(self, index: int, identity: dict[str, list[int]]) -> None:
        with record_function(f"{MARKER_PREFIX}probe::{index}"):
            self.probes[index] = identity

    def liveness(self, index: int, reachable: list[int]) -> None:
        with record_function(f"{MARKER_PREFIX}live::{index}"):
            self.live[index] = reachable

    def on_window_end(self, name: str) -> None:
        pass

    def current_bytes(self) -> int:
        """Resident set size of the process (what a CPU run can cheaply report while it runs)."""
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    def extra(self, steady_windows: list[Window]) -> dict[str, Any] | None:
        return None

    def write_raw(self, rank_dir: Path, rank: int) -> list[str]:
        return []


class CpuRecorder(Recorder):
    device = "cpu"

    def __init__(self, torch_categories: bool = False) -> None:
        super().__init__()
        self.torch_categories = torch_categories
        self.prof: Any = None

    def start(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        self.prof = profile(
            activities=[ProfilerActivity.CPU],
            profile_memory=True,
            record_shapes=self.torch_categories,
            with_stack=self.torch_categories,
        )
        with _quiet_stderr():
            self.prof.start()

    def stop(self) -> Recording:
        from torch._C._profiler import _EventType

        while self._rf_stack:
            self.exit()
        with _quiet_stderr():
            self.prof.stop()
        tree = self.prof.profiler.kineto_results.experimental_event_tree()
        raw: list[tuple[int, int, int, int]] = []
        windows: list[Window] = []
        stack = list(tree)
        while stack:
            e = stack.pop()
            stack.extend(e.children)
            if e.tag == _EventType.Allocation:
                f = e.typed[1]
                if f.device.type == "cpu" and f.alloc_size:
                    raw.append((e.start_time_ns, f.ptr, f.alloc_size, f.total_allocated))
            elif e.tag == _EventType.TorchOp and e.name.startswith(MARKER_PREFIX):
                windows.append(Window(e.name[len(MARKER_PREFIX) :], e.start_time_ns, e.end_time_ns))
        raw.sort(key=lambda r: r[0])
        windows.sort(key=lambda w: (w.start_ns, w.end_ns))
        from planner.profile import gloo_settle

        return Recording(
            events=[(t, ptr, size) for t, ptr, size, _ in raw],
            windows=windows,
            probes=self.probes,
            recorder_totals=[total for *_, total in raw],
            comm=dict(gloo_settle.COMM_PTRS),
            live=self.live,
        )


    def torch_categories_at(self, t_abs_ns: int) -> dict[str, Any] | None:
        """torch's own categorisation at one moment (only with torch_categories=True)."""
        if not self.torch_categories or self.prof is None:
            return None
        from planner.profile.torch_categories import categorise_at

        return categorise_at(self.prof, t_abs_ns)


class NvmlSampler:
    """Device memory as NVML reports it (what nvidia-smi shows), sampled in a background thread."""

    def __init__(self, device_index: int, interval_s: float = NVML_INTERVAL_S) -> None:
        self.device_index = device_index
        self.interval_s = interval_s
        self.samples: list[tuple[int, int]] = []  # (unix ns, used bytes)
        self.error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> NvmlSampler:
        try:
            import pynvml

            pynvml.nvmlInit()
            try:
                # By PCI bus id: CUDA_VISIBLE_DEVICES renumbers CUDA devices but not NVML's.
                self._handle = pynvml.nvmlDeviceGetHandleByPciBusId(_pci_bus_id(self.device_index))
            except (AttributeError, pynvml.NVMLError):
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
        except Exception as exc:  # noqa: BLE001 - NVML missing or unusable: record why, keep running
            self.error = f"NVML unavailable: {exc}"
            return self
        self._thread = threading.Thread(target=self._run, name="planner-nvml", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        import pynvml

        while not self._stop.is_set():
            try:
                used = int(pynvml.nvmlDeviceGetMemoryInfo(self._handle).used)
            except pynvml.NVMLError as exc:
                self.error = f"NVML sampling stopped: {exc}"
                return
            self.samples.append((time.time_ns(), used))
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            import pynvml

            with contextlib.suppress(Exception):
                pynvml.nvmlShutdown()


def _pci_bus_id(device_index: int) -> str:
    props = torch.cuda.get_device_properties(device_index)
    domain = getattr(props, "pci_domain_id", 0)
    return f"{domain:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"


class CudaRecorder(Recorder):
    device = "cuda"

    def __init__(self, device_index: int) -> None:
        super().__init__()
        self.device_index = device_index
        self.snapshot: dict[str, Any] | None = None
        self.nvml = NvmlSampler(device_index)
        self.num_oom_entries = 0
        self.reserved_series: list[tuple[int, int]] = []
        self.history_note = ""

    def start(self) -> None:
        kwargs = {"enabled": "all", "context": "all", "stacks": "python", "max_entries": CUDA_HISTORY_MAX_ENTRIES}
        try:
            # record_function markers land in the snapshot as external_annotations (same clock as the trace).
            torch.cuda.memory._record_memory_history(**kwargs, global_record_annotations=True)
        except TypeError:  # an older torch: markers fall back to wall-clock windows (see stop)
            torch.cuda.memory._record_memory_history(**kwargs)
        torch.cuda.reset_peak_memory_stats(self.device_index)
        self.nvml.start()

    def on_window_end(self, name: str) -> None:
        try:
            torch.cuda.synchronize(self.device_index)
            s = torch.cuda.memory_stats(self.device_index)
        except RuntimeError:  # a broken CUDA context: the failure itself is reported by the runner
            return
        self.window_stats.append(
            {
                "window": name,
                "allocated_peak_bytes": int(s.get("allocated_bytes.all.peak", 0)),
                "allocated_current_bytes": int(s.get("allocated_bytes.all.current", 0)),
                "reserved_peak_bytes": int(s.get("reserved_bytes.all.peak", 0)),
                "reserved_current_bytes": int(s.get("reserved_bytes.all.current", 0)),
                "active_peak_bytes": int(s.get("active_bytes.all.peak", 0)),
                "requested_peak_bytes": int(s.get("requested_bytes.all.peak", 0)),
                "num_alloc_retries": int(s.get("num_alloc_retries", 0)),
                "num_ooms": int(s.get("num_ooms", 0)),
            }
        )
        torch.cuda.reset_peak_memory_stats(self.device_index)

    def current_bytes(self) -> int:
        return int(torch.cuda.memory_allocated(self.device_index))

    def stop(self) -> Recording:
        from planner.profile.cuda_trace import annotation_windows, trace_events

        while self._rf_stack:
            self.exit()
        with contextlib.suppress(RuntimeError):
            torch.cuda.synchronize(self.device_index)
        self.snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        self.nvml.stop()
        events, self.reserved_series, self.num_oom_entries = trace_events(self.snapshot, self.device_index)
        windows = annotation_windows(self.snapshot, self.device_index)
        if not windows:
            # No annotations in this torch build: the trace's time_us and time.time_ns() are both Unix time.
            windows = list(self.wall_windows)
            self.history_note = "phase windows from wall-clock times (no snapshot annotations)"
        traces = self.snapshot.get("device_traces") or []
        n = len(traces[self.device_index]) if self.device_index < len(traces) else 0
        if n >= CUDA_HISTORY_MAX_ENTRIES:
            self.history_note = f"the allocation history overflowed its {CUDA_HISTORY_MAX_ENTRIES} entries"
        return Recording(events=events, windows=windows, probes=self.probes)

    def extra(self, steady_windows: list[Window]) -> dict[str, Any]:
        """memory_stats and NVML figures: overall and over the steady-state windows."""
        steady_names = {w.name for w in steady_windows}
        steady = [s for s in self.window_stats if s["window"] in steady_names]

        def peak(rows, key):
            return max((r[key] for r in rows), default=0)

        t0 = min((w.start_ns for w in steady_windows), default=None)
        t1 = max((w.end_ns for w in steady_windows), default=None)
        nv_all = [u for _, u in self.nvml.samples]
        nv_steady = [u for t, u in self.nvml.samples if t0 is not None and t0 <= t <= t1]
        return {
            "max_allocated_bytes": peak(self.window_stats, "allocated_peak_bytes"),
            "max_reserved_bytes": peak(self.window_stats, "reserved_peak_bytes"),
            "max_active_bytes": peak(self.window_stats, "active_peak_bytes"),
            "steady_allocated_peak_bytes": peak(steady, "allocated_peak_bytes"),
            "steady_reserved_peak_bytes": peak(steady, "reserved_peak_bytes"),
            "steady_active_peak_bytes": peak(steady, "active_peak_bytes"),
            "num_alloc_retries": peak(self.window_stats, "num_alloc_retries"),
            "num_ooms": peak(self.window_stats, "num_ooms"),
            "num_oom_trace_entries": self.num_oom_entries,
            "nvml_peak_used_bytes": max(nv_all, default=0),
            "nvml_steady_peak_used_bytes": max(nv_steady, default=0),
            "nvml_num_samples": len(self.nvml.samples),
            "nvml_note": self.nvml.error,
            "history_note": self.history_note,
            "windows": self.window_stats,
        }

    def write_raw(self, rank_dir: Path, rank: int) -> list[str]:
        import pandas as pd

        names = []
        if self.snapshot is not None:
            name = f"snapshot-rank{rank}.pickle"
            with open(rank_dir / name, "wb") as f:
                pickle.dump(self.snapshot, f)
            names.append(name)
        name = f"nvml-rank{rank}.parquet"
        pd.DataFrame(
            {
                "rank": [rank] * len(self.nvml.samples),
                "t_unix_ns": [t for t, _ in self.nvml.samples],
                "used_bytes": [u for _, u in self.nvml.samples],
            }
        ).to_parquet(rank_dir / name, compression="zstd", index=False)
        names.append(name)
        return names
