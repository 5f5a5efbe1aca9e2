"""The replay that turns alloc/free events into categories and peaks (pure Python, fast).

The recordings here are written by hand so every expected byte count follows from the events listed.
"""

from __future__ import annotations

import pytest

from planner.profile.attribution import CATEGORIES, Recording, Window, attribute
from planner.profile.cuda_trace import annotation_windows, trace_events


def _step_windows(step: int, t0: int) -> list[Window]:
    """inputs [t0, t0+10], forward [+10, +100], loss [+100, +150], backward [+150, +300], step [+300, +400]."""
    w = f"step::{step}::0::"
    return [
        Window(w + "inputs", t0, t0 + 10),
        Window(w + "forward", t0 + 10, t0 + 100),
        Window(w + "loss", t0 + 100, t0 + 150),
        Window(w + "backward", t0 + 150, t0 + 300),
        Window(w + "optimizer_step", t0 + 300, t0 + 400),
    ]


def _two_step_recording() -> Recording:
    events = [
        (1, 0x1000, 400),  # parameter, made during setup
        (2, 0x9000, 16),  # a buffer, made during setup
    ]
    windows = [Window("setup::build", 0, 5)]
    for step, t0 in ((0, 1000), (1, 2000)):
        base = 0x2000 + step * 0x100
        events += [
            (t0 + 5, base + 0x10, 8),  # input ids
            (t0 + 20, base + 0x20, 100),  # saved for backward: alive at backward start, freed in backward
            (t0 + 30, base + 0x30, 50),  # forward scratch, freed inside forward
            (t0 + 40, base + 0x30, -50),
            (t0 + 110, base + 0x40, 70),  # loss output kept for backward
            (t0 + 160, base + 0x50, 400),  # the gradient (identified by the probe after backward)
            (t0 + 170, base + 0x20, -100),
            (t0 + 180, base + 0x40, -70),
            (t0 + 310, base + 0x60, 40),  # optimizer-step scratch
            (t0 + 320, base + 0x60, -40),
            (t0 + 390, base + 0x50, -400),  # zero_grad(set_to_none=True)
            (t0 + 395, base + 0x10, -8),
        ]
        windows += _step_windows(step, t0)
        windows.append(Window(f"probe::{step}", t0 + 305, t0 + 305))
    events.append((1305, 0x7000, 800))  # optimizer state, created in step 0's optimizer step
    probes = {
        0: {"params": [0x1000], "grads": [0x2050], "optimizer_states": []},
        1: {"params": [0x1000], "grads": [0x2150], "optimizer_states": [0x7000]},
    }
    # Probe 0 runs at t=1305, the same instant the state is allocated: identity also covers it via probe 1.
    return Recording(events=events, windows=windows, probes=probes)


def test_categories_identity_and_lifetime():
    att = attribute(_two_step_recording())
    assert att.steady_state
    peak = att.peak
    # Steady state is step 1 only: its highest point is after the gradient (400) is made while the saved
    # tensors (100 + 70) are still alive: 400 params + 16 buffer + 800 state + 8 inputs + 170 + 400.
    assert peak.allocated_bytes == 400 + 16 + 800 + 8 + 100 + 70 + 400
    assert peak.step == 1 and peak.phase == "backward"
    assert peak.by_category == {
        "params": 400,
        "grads": 400,
        "optimizer_states": 800,
        "activations": 170,
        "temporaries": 0,
        "other": 24,
    }
    assert peak.detail["activations/forward"] == 100
    assert peak.detail["activations/loss"] == 70
    assert peak.detail["other/inputs"] == 8 and peak.detail["other/setup"] == 16
    assert sum(peak.by_category.values()) == peak.allocated_bytes
    assert set(peak.by_category) == set(CATEGORIES)


def test_phase_peaks_and_timeline_totals():
    att = attribute(_two_step_recording())
    fwd = att.phase_peaks["forward"]
    assert fwd.allocated_bytes == 400 + 16 + 800 + 8 + 100 + 50
    assert fwd.by_category["temporaries"] == 50
    step = att.phase_peaks["optimizer_step"]
    assert step.by_category["temporaries"] == 40 and step.by_category["grads"] == 400
    # The running total of the event table ends where the allocations left it.
    assert att.timeline["allocated_bytes"][-1] == 400 + 16 + 800
    assert sum(att.timeline["delta_bytes"]) == 400 + 16 + 800
    rows = {(r["step"], r["phase"]): r for r in att.step_windows}
    assert rows[(1, "backward")]["start_bytes"] == 400 + 16 + 800 + 8 + 170
    assert rows[(1, "backward")]["peak_bytes"] == peak_total(att)


def peak_total(att) -> int:
    return att.peak.allocated_bytes


def test_single_step_is_not_steady_state():
    rec = _two_step_recording()
    rec.windows = [w for w in rec.windows if not w.name.startswith("step::1")]
    att = attribute(rec)
    assert not att.steady_state
    assert att.peak.step == 0


def test_recompute_window_makes_activations():
    windows = [*_step_windows(0, 0), *_step_windows(1, 1000), Window("recompute", 1160, 1200)]
    events = [
        (1170, 0x10, 64),  # recomputed and saved for this layer's backward: alive after the window
        (1175, 0x20, 32),  # recomputation scratch
        (1180, 0x20, -32),
        (1250, 0x10, -64),
    ]
    att = attribute(Recording(events=events, windows=windows, probes={}))
    assert att.peak.detail == {"activations/recompute": 64, "temporaries/backward": 32}


def test_persistent_buffer_made_in_a_step_is_not_an_activation():
    windows = [*_step_windows(0, 0), *_step_windows(1, 1000), *_step_windows(2, 2000)]
    events = [(1020, 0x10, 256)]  # allocated in forward, never freed (e.g. DDP's rebuilt buckets)
    att = attribute(Recording(events=events, windows=windows, probes={}))
    assert att.peak.detail == {"temporaries/persistent": 256}


def test_unseen_free_is_inferred_from_the_last_collective():
    windows = [*_step_windows(0, 0), *_step_windows(1, 1000), Window("comm::0", 1200, 1210),
               Window("live::0", 1500, 1500)]  # fmt: skip
    events = [(1160, 0x10, 1000), (1180, 0x20, 10)]  # 0x10 goes into an all-reduce, its free is never seen
    rec = Recording(events=events, windows=windows, probes={}, comm={0: [0x10]}, live={0: [0x20]})
    att = attribute(rec)
    assert att.num_inferred_frees == 1
    assert att.timeline["inferred"].count(True) == 1
    assert att.timeline["allocated_bytes"][-1] == 10
    assert att.peak.detail["temporaries/backward"] == 1000  # lived from 1160 to 1210 only


def test_a_buffer_made_inside_an_async_collective_dies_at_its_wait():
    windows = [*_step_windows(0, 0), *_step_windows(1, 1000), Window("comm::0", 1200, 1210),
               Window("commwait::0", 1250, 1260), Window("live::0", 1500, 1500)]  # fmt: skip
    events = [(1205, 0x30, 500)]  # c10d's flattened copy: not an argument, freed by the gloo thread
    att = attribute(Recording(events=events, windows=windows, probes={}, comm={0: [0x10]}, live={0: []}))
    assert att.num_inferred_frees == 1
    assert att.timeline["t_ns"][-1] == 1260 and att.timeline["delta_bytes"][-1] == -500


def test_reachable_allocations_are_not_freed_by_inference():
    windows = [*_step_windows(0, 0), *_step_windows(1, 1000), Window("comm::0", 1200, 1210),
               Window("live::0", 1500, 1500)]  # fmt: skip
    events = [(1160, 0x10, 1000)]  # a persistent bucket used by a collective and still referenced
    att = attribute(Recording(events=events, windows=windows, probes={}, comm={0: [0x10]}, live={0: [0x10]}))
    assert att.num_inferred_frees == 0 and att.timeline["allocated_bytes"][-1] == 1000


def test_address_reuse_closes_an_allocation_whose_free_was_not_seen():
    windows = [*_step_windows(0, 0), *_step_windows(1, 1000)]
    events = [(1160, 0x10, 100), (1200, 0x10, 100), (1250, 0x10, -100)]
    att = attribute(Recording(events=events, windows=windows, probes={}))
    assert att.num_allocations == 2
    assert att.timeline["allocated_bytes"][-1] == 0


def test_recorder_cross_check_is_reported():
    rec = _two_step_recording()
    order = sorted(range(len(rec.events)), key=lambda i: (rec.events[i][0], i))
    totals = [0] * len(rec.events)
    running = 0
    for i in order:
        running += rec.events[i][2]
        totals[i] = running
    rec.recorder_totals = totals
    att = attribute(rec)
    assert att.recorder_peak_bytes == att.peak.allocated_bytes


def test_cuda_snapshot_trace_and_annotations():
    # The TraceEntry / annotation format documented in torch/cuda/memory.py _snapshot.
    snapshot = {
        "segments": [],
        "device_traces": [
            [
                {"action": "segment_alloc", "addr": 0, "size": 2097152, "time_us": 1},
                {"action": "alloc", "addr": 512, "size": 1024, "time_us": 2},
                {"action": "alloc", "addr": 2048, "size": 512, "time_us": 3},
                {"action": "free_requested", "addr": 512, "size": 1024, "time_us": 4},
                {"action": "free_completed", "addr": 512, "size": 1024, "time_us": 5},
                {"action": "oom", "addr": 0, "size": 1 << 40, "time_us": 6},
            ]
        ],
        "external_annotations": [
            {"name": "planner::step::0::0::forward", "stage": "START", "device": 0, "time_us": 1},
            {"name": "aten::mm", "stage": "START", "device": 0, "time_us": 2},
            {"name": "planner::step::0::0::forward", "stage": "END", "device": 0, "time_us": 7},
        ],
    }
    events, reserved, num_oom = trace_events(snapshot, 0)
    assert events == [(2000, 512, 1024), (3000, 2048, 512), (5000, 512, -1024)]
    assert reserved == [(1000, 2097152)]
    assert num_oom == 1
    assert annotation_windows(snapshot, 0) == [Window("step::0::0::forward", 1000, 7000)]


@pytest.mark.parametrize("bad_device", [1, 5])
def test_cuda_trace_of_a_device_without_entries(bad_device):
    events, reserved, num_oom = trace_events({"device_traces": [[]]}, bad_device)
    assert events == [] and reserved == [] and num_oom == 0


def test_reachable_ptrs_skips_dead_proxies_and_storageless_tensors():
    """The liveness probe walks every object the garbage collector knows: a weakref.proxy whose referent is gone
    raises ReferenceError on isinstance, and a FakeTensor has no data pointer; neither may fail a run (found by
    a random validation cell: QLoRA, ZeRO-1, two ranks)."""
    import weakref

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from planner.profile.identity import reachable_ptrs

    class Thing:
        pass

    thing = Thing()
    proxy = weakref.proxy(thing)
    del thing
    with FakeTensorMode():
        fake = torch.empty(4)
    real = torch.ones(3)
    ptrs = reachable_ptrs()
    assert real.untyped_storage().data_ptr() in ptrs
    del proxy, fake
