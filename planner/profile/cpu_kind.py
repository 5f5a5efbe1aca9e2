"""The CPU kind of this machine as torch sees it, and oneDNN's matmul workspaces measured from the library.

``local_kernels()`` probes what decides the kernels a CPU run takes -- the way torch decides: ATen's vector ISA
(``torch.backends.cpu.get_cpu_capability()``, which ``ATEN_CPU_CAPABILITY`` can lower) and whether bf16 matmuls go
to oneDNN (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``, which ``ONEDNN_MAX_CPU_ISA=AVX2`` turns off).
``measure_workspaces()`` runs each matmul call once (after a warm-up) under the profiler's memory recorder and
records what it allocated beyond its output: oneDNN's user scratchpad (planner/estimate/step/cpu_kernels.py). Every
profile records the kind with the workspaces of the calls its estimate makes (``kernels_for``), so a profile
compares offline on any machine.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterable
from pathlib import Path

from planner.estimate.step.cpu_kernels import CpuKernels, MatmulCall
from planner.specs import ModelSpec, TrainSpec

_TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def rank_threads(num_ranks: int) -> int:
    """The OpenMP threads each rank of a ``planner profile`` run gets (launcher.py sets them from here):
    ``OMP_NUM_THREADS`` if set, else the CPUs shared out among the ranks (one rank: the CPU count, torch's
    default)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, (os.cpu_count() or 1) // max(1, num_ranks))


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def local_kernels(num_threads: int | None = None) -> CpuKernels:
    """This process's CPU kind (``num_threads``: the threads the measured run uses; default torch's)."""
    import torch

    try:
        onednn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn_bf16 = False
    return CpuKernels(
        capability=str(torch.backends.cpu.get_cpu_capability()),
        onednn_bf16=onednn_bf16 and torch.backends.mkldnn.is_available(),
        num_threads=num_threads or torch.get_num_threads(),
        cpu_name=cpu_name(),
    )


@contextlib.contextmanager
def _threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _operands(call: MatmulCall):
    import torch

    dtype, batch, m, k, n, a_t, b_t = call
    dt = getattr(torch, _TORCH_DTYPES[dtype])
    lead = (batch,) if batch > 1 else ()
    a = torch.randn(*lead, k, m, dtype=dt).transpose(-1, -2) if a_t else torch.randn(*lead, m, k, dtype=dt)
    b = torch.randn(*lead, n, k, dtype=dt).transpose(-1, -2) if b_t else torch.randn(*lead, k, n, dtype=dt)
    return a, b


def measure_workspaces(calls: Iterable[MatmulCall], num_threads: int) -> dict[MatmulCall, int]:
    """Bytes each matmul call allocates beyond its output, at its own peak (0 when it allocates nothing else)."""
    import torch
    from torch._C._profiler import _EventType

    calls = sorted(set(calls))
    if not calls:
        return {}
    out: dict[MatmulCall, int] = {}
    with _threads(num_threads), torch.no_grad():
        ops = []
        for call in calls:
            a, b = _operands(call)
            op = torch.bmm if a.dim() == 3 else torch.mm
            op(a, b)  # warm-up: oneDNN creates (and caches) the primitive
            ops.append((call, op, a, b))
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
        with prof:
            for i, (_, op, a, b) in enumerate(ops):
                with torch.profiler.record_function(f"planner::matmul{i}"):
                    op(a, b)
        by_marker: dict[int, list[int]] = {}

        def walk(node, marker: int | None) -> None:
            if node.tag == _EventType.Allocation and marker is not None:
                by_marker.setdefault(marker, []).append(node.extra_fields.alloc_size)
            elif node.name.startswith("planner::matmul"):
                marker = int(node.name[len("planner::matmul"):])
            for child in node.children:
                walk(child, marker)

        for root in prof.profiler.kineto_results.experimental_event_tree():
            walk(root, None)
        for i, (call, _, a, _b) in enumerate(ops):
            live = peak = 0
            for nbytes in by_marker.get(i, []):
                live += nbytes
                peak = max(peak, live)
            _, batch, m, _, n, _, _ = call
            output = batch * m * n * a.element_size()
            out[call] = max(0, peak - output)
    return out


def kernels_for(model: ModelSpec, train: TrainSpec, kernels: CpuKernels) -> CpuKernels:
    """``kernels`` with the workspace of every matmul call the estimate of (model, train) makes on it."""
    if not kernels.onednn_bf16:
        return kernels
    from planner.estimate.step.simulate import simulate_step

    calls = set(simulate_step(model, train, device="cpu", cpu=kernels).unknown_matmuls)
    if train.uses_fsdp2:
        # FSDP2's estimate simulates the step its MixedPrecisionPolicy computes (fsdp2_step.py ``sim_train``: under
        # bf16 every parameter, LoRA adapters included, is all-gathered in bf16), whose adapter matmuls are bf16
        # and so reach oneDNN where the plain spec's fp32 adapters do not
        from planner.estimate.fsdp2_step import sim_train

        calls |= set(simulate_step(model, sim_train(train), device="cpu", cpu=kernels).unknown_matmuls)
    if not calls:
        return kernels
    return kernels.with_workspaces(measure_workspaces(tuple(sorted(calls)), kernels.num_threads))
