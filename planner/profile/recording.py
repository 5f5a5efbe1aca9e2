"""The data a recorder hands to the replay, and the breakdown the replay hands back (pure Python)."""

from __future__ import annotations

from dataclasses import dataclass, field

CATEGORIES = ("params", "grads", "optimizer_states", "activations", "temporaries", "other")
STEP_PHASES = ("inputs", "forward", "loss", "backward", "optimizer_step")
# When one storage is listed under two identities (DeepSpeed views), the first in this order wins.
IDENTITY_PRIORITY = ("params", "optimizer_states", "grads", "temporaries/allgather")
MARKER_PREFIX = "planner::"
TIMELINE_COLUMNS = ("t_ns", "step", "micro_batch", "phase", "alloc_id", "delta_bytes", "category", "origin",
                    "allocated_bytes", "inferred")  # fmt: skip


@dataclass(frozen=True)
class Window:
    """A marked time range; ``name`` is the record_function name without the ``planner::`` prefix."""

    name: str
    start_ns: int
    end_ns: int


@dataclass
class Recording:
    """One rank's raw recording, normalised across the CPU and CUDA recorders."""

    events: list[tuple[int, int, int]]  # (t_ns, addr, delta_bytes): +size alloc, -size free
    windows: list[Window]
    probes: dict[int, dict[str, list[int]]]  # probe index -> identity key -> storage pointers
    recorder_totals: list[int] | None = None  # the recorder's own running total per event (CPU profiler)
    comm: dict[int, list[int]] = field(default_factory=dict)  # comm marker index -> storage pointers used
    live: dict[int, list[int]] = field(default_factory=dict)  # liveness probe index -> reachable pointers


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
