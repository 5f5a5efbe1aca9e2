"""What the symbolic autograd tape is made of, and the live-byte accounting of one simulated step.

``Sim`` counts live, saved (activation) and parameter-gradient bytes and records each phase's peak;
``Storage`` is one allocation (counted on creation, freed by CPython reference counting, as PyTorch frees it);
``Param`` a weight (never live itself, its gradient is); ``Fake`` a tensor of shape and dtype over a storage;
``Node`` one autograd node with the storages it saves. ``tape`` records ops on them and replays backward.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

from planner.units import DTYPE_BITS, dtype_bytes

# dtype_bytes without its checks, for the hot paths (every byte-aligned dtype; others go through dtype_bytes)
_DTYPE_BYTES = {k: v // 8 for k, v in DTYPE_BITS.items() if v % 8 == 0}


def tensor_bytes(shape, dtype: str) -> int:
    n = _DTYPE_BYTES.get(dtype) or dtype_bytes(dtype)
    for d in shape:
        n *= d
    return n


@dataclass
class PhasePeak:
    live_bytes: int = 0
    saved_bytes: int = 0
    grads_bytes: int = 0


class Sim:
    """Live-byte accounting for one simulated step (bytes are exact ints).

    ``peaks[phase]`` keeps each phase's maximum with its category split. With ``record`` set, every local
    maximum of the live bytes (an allocation followed by a free) is also appended to it as
    ``(phase, live, saved, grads)``: the sequence of allocations and frees does not depend on the micro-batch,
    so the same candidates, evaluated at another micro-batch, contain that micro-batch's peak.

    ``trace`` (debugging, activations.trace_step): a list that gets (node name, live bytes) before every
    backward node; with it, ``storages`` keeps a weak reference to every storage (the op that made it in
    ``Storage.tag``).
    """

    def __init__(self, *, record: bool = False, trace: list | None = None) -> None:
        self.live = 0
        self.saved = 0
        self.grads = 0
        self.phase = "forward"
        self.peaks: dict[str, PhasePeak] = {}
        self.marks: dict[str, PhasePeak] = {}
        self._seq = 0
        self.nodes: list[Node] = []
        self.record: list | None = [] if record else None
        self._pending: tuple | None = None
        self.trace = trace
        self.storages: list = []  # debugging: weak references to every storage (only when tracing)
        # Activation offloading (offload.py): bytes of saved tensors packed to host RAM, as requested and as the
        # pinned host allocator takes them (each rounded up to a power of two)
        self.host = 0
        self.host_pinned = 0

    def _touch(self) -> None:
        peak = self.peaks.get(self.phase)
        if peak is None:
            self.peaks[self.phase] = PhasePeak(self.live, self.saved, self.grads)
        elif self.live > peak.live_bytes:
            peak.live_bytes, peak.saved_bytes, peak.grads_bytes = self.live, self.saved, self.grads
        if self.record is not None:
            self._pending = (self.phase, self.live, self.saved, self.grads)

    def touch(self) -> None:
        """Count the present moment in the current phase (a phase that starts with bytes already alive)."""
        self._touch()

    def flush(self) -> None:
        if self._pending is not None:
            self.record.append(self._pending)
            self._pending = None

    def set_phase(self, phase: str) -> None:
        if self.record is not None:
            self.flush()
        self.phase = phase

    def mark(self, name: str) -> PhasePeak:
        if self.record is not None:
            self.flush()
        snap = PhasePeak(self.live, self.saved, self.grads)
        self.marks[name] = snap
        return snap

    def ghost(self, nbytes: int, *, saved: bool = False, grads: bool = False) -> None:
        """Bytes that stand for layers not simulated one by one (identical layers in a block)."""
        if nbytes < 0 and self._pending is not None:
            self.flush()
        self.live += nbytes
        if saved:
            self.saved += nbytes
        if grads:
            self.grads += nbytes
        if nbytes > 0:
            self._touch()


class Storage:
    __slots__ = ("sim", "nbytes", "num_saves", "tag", "__weakref__")

    def __init__(self, sim: Sim, nbytes: int, tag: str = "") -> None:
        self.sim = sim
        self.nbytes = nbytes
        self.num_saves = 0
        self.tag = tag
        # allocation and free are counted here (the hottest path of an estimate): Sim._touch, inlined
        live = sim.live = sim.live + nbytes
        phase = sim.phase
        peak = sim.peaks.get(phase)
        if peak is None:
            sim.peaks[phase] = PhasePeak(live, sim.saved, sim.grads)
        elif live > peak.live_bytes:
            peak.live_bytes, peak.saved_bytes, peak.grads_bytes = live, sim.saved, sim.grads
        if sim.record is not None:
            sim._pending = (phase, live, sim.saved, sim.grads)
        if sim.trace is not None:
            sim.storages.append(weakref.ref(self))

    def __del__(self) -> None:
        sim = self.sim
        pending = sim._pending
        if pending is not None:  # Sim.flush, inlined: the allocation before this free was a local maximum
            sim.record.append(pending)
            sim._pending = None
        sim.live -= self.nbytes


class StopRecompute(Exception):
    """Raised when a recomputation has re-created every tensor the checkpointed region saves."""


class Param:
    """A weight: never counted as live (model states are counted elsewhere); its gradient is."""

    __slots__ = ("shape", "dtype", "trainable", "grad")

    def __init__(self, shape: tuple[int, ...], dtype: str, trainable: bool) -> None:
        self.shape = shape
        self.dtype = dtype
        self.trainable = trainable
        self.grad: Storage | None = None

    @property
    def numel(self) -> int:
        return _prod(self.shape)


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class Fake:
    """A tensor: shape, dtype, storage (shared by views) and the node that made it (None for leaves)."""

    __slots__ = ("shape", "dtype", "st", "node", "out_index")

    def __init__(self, shape, dtype, st: Storage | None, node: Node | None = None, out_index: int = 0):
        self.shape = tuple(shape)
        self.dtype = dtype
        self.st = st
        self.node = node
        self.out_index = out_index

    @property
    def requires_grad(self) -> bool:
        return self.node is not None

    @property
    def numel(self) -> int:
        return _prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtype_bytes(self.dtype)


# An edge from a node to where an input's gradient goes: another node's output slot, or a parameter.
Edge = tuple  # (Node, out_index, shape, dtype) | (Param,)


class Node:
    """One autograd node: saved storages, where its input gradients go, and its backward rule."""

    __slots__ = ("seq", "saved", "edges", "rule", "grad_in", "name", "num_outputs", "extra", "has_saved", "packed")

    def __init__(self, name: str, edges: list, rule: Callable, num_outputs: int = 1, extra=None):
        self.name = name
        self.edges = edges
        self.rule = rule
        self.saved: list[Storage] = []
        self.grad_in: list[Storage | None] = [None] * num_outputs
        self.num_outputs = num_outputs
        self.extra = extra
        self.has_saved = False  # the op saves tensors (even when a checkpoint keeps only placeholders)
        # activation offloading: bytes of each saved tensor packed to the host (negative: held, not unpacked, offload.py)
        self.packed: list[int] | None = None
