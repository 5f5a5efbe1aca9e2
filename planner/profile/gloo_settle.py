"""Make every free of a tensor used in a gloo collective happen on the main thread, where it is recorded.

The CPU profiler reports allocations and frees only on the thread it profiles (the main thread; with
``profile_all_threads`` torch 2.13 reports no memory events at all). A gloo collective runs on a gloo
worker thread, which keeps a reference to the tensors of the finished work until it gets the GIL back; if
the caller drops its own reference first, the storage is freed on the worker thread and the recording never
sees the free (measured: 60-90% of frees lost for tensors dropped right after ``all_reduce``). The wrapped
collectives wait, yielding the GIL, until the worker has released the tensors (their TensorImpl use count is
back to what it was before the call), so that the caller's own drop frees them, on the main thread. This
changes no tensor's lifetime, only the step's timing by microseconds.

The wait is bounded (a collective may legitimately keep a reference, e.g. through views of its output), and
buffers c10d allocates inside a call (flattened copies) are never seen by the caller, so a few frees can
still go unseen. Every call is therefore marked (``planner::comm::<k>`` around the call with the storage
pointers of its tensors in ``COMM_PTRS``, ``planner::commwait::<k>`` around the wait of an async one), and
the replay frees an allocation that a final liveness probe finds unreachable at the end of the last
collective that used it or allocated it (attribution.py).
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d
from torch.profiler import record_function

from planner.profile.attribution import MARKER_PREFIX

COLLECTIVES = (
    "all_reduce",
    "all_reduce_coalesced",
    "reduce",
    "broadcast",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_coalesced",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "all_to_all",
    "all_to_all_single",
    "gather",
    "scatter",
    "send",
    "recv",
    "isend",
    "irecv",
    "_all_gather_base",
    "_reduce_scatter_base",
    # FSDP2's collectives in torch 2.13 (fsdp/_fully_shard/_fsdp_collectives.py DefaultAllGather,
    # DefaultReduceScatter): they call the process group directly, past the functions above
    "all_gather_single",
    "reduce_scatter_single",
)
# c10d bindings torch.distributed calls directly (not in distributed_c10d): ``_broadcast_coalesced``, through which
# DistributedDataParallel broadcasts rank 0's parameters and buffers at construction and its buffers before every
# forward (torch/distributed/utils.py ``_sync_params_and_buffers``, nn/parallel/distributed.py
# ``_distributed_broadcast_coalesced``). c10d's ``broadcast_coalesced`` (torch/csrc/distributed/c10d/comm.cpp)
# flattens each bucket into a tensor of its own that is freed when the broadcast finishes -- on the gloo worker
# thread when it holds the last reference: measured on the receiving rank, a parameters-sized allocation whose free
# the recording never saw (a 2-rank DDP cell's rank 1 at +1 parameter copy); inside a marked call, the replay
# frees it at the call's end when the final liveness probe finds it unreachable (attribution.py).
DIST_BINDINGS = ("_broadcast_coalesced",)
# Longest wait for one tensor to be released (a tensor the collective legitimately keeps is not waited for
# longer than this).
SETTLE_TIMEOUT_S = 0.005
_installed = False
COMM_PTRS: dict[int, list[int]] = {}  # comm marker index -> storage pointers of the tensors it used


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    out = []
    for v in (*args, *kwargs.values()):
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out.extend(t for t in v if isinstance(t, torch.Tensor))
    return out


def _settle(tensors: list[torch.Tensor], baselines: list[int]) -> None:
    deadline = time.perf_counter() + SETTLE_TIMEOUT_S
    for t, base in zip(tensors, baselines, strict=True):
        while t._use_count() > base and time.perf_counter() < deadline:
            time.sleep(0)  # let the gloo worker take the GIL and drop its references


def _ptrs(tensors: list[torch.Tensor]) -> list[int]:
    from planner.profile.identity import storage_ptr

    return [p for p in (storage_ptr(t) for t in tensors) if p]


class _SettlingWork:
    """An async collective's work handle whose ``wait`` is marked and waits for the tensors' release."""

    def __init__(self, work: Any, tensors: list[torch.Tensor], baselines: list[int], index: int):
        self._work = work
        self._tensors = tensors
        self._baselines = baselines
        self._index = index

    def wait(self, *args, **kwargs):
        with record_function(f"{MARKER_PREFIX}commwait::{self._index}"):
            result = self._work.wait(*args, **kwargs)
            _settle(self._tensors, self._baselines)
        self._tensors, self._baselines = [], []
        return result

    def __getattr__(self, name: str):
        return getattr(self._work, name)


def _wrap(fn):
    def wrapper(*args, **kwargs):
        tensors = _tensors(args, kwargs)
        baselines = [t._use_count() for t in tensors]
        index = len(COMM_PTRS)
        COMM_PTRS[index] = _ptrs(tensors)
        # The window covers the call, so buffers c10d allocates inside it are tied to this collective too.
        with record_function(f"{MARKER_PREFIX}comm::{index}"):
            result = fn(*args, **kwargs)
            if result is None:
                _settle(tensors, baselines)
        if result is None:
            return None
        return _SettlingWork(result, tensors, baselines, index)

    wrapper.__wrapped__ = fn
    wrapper.__name__ = getattr(fn, "__name__", "collective")
    return wrapper


def install() -> None:
    """Wrap torch.distributed's collectives (before DeepSpeed caches references to them)."""
    global _installed
    if _installed:
        return
    for name in COLLECTIVES:
        fn = getattr(c10d, name, None)
        if fn is None:
            continue
        wrapped = _wrap(fn)
        setattr(c10d, name, wrapped)
        if getattr(dist, name, None) is fn:
            setattr(dist, name, wrapped)
    for name in DIST_BINDINGS:
        fn = getattr(dist, name, None)
        if fn is not None:
            setattr(dist, name, _wrap(fn))
    _installed = True
