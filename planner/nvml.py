"""Local GPUs through NVML (pynvml, package nvidia-ml-py). Used by `--gpu auto` and the CUDA profiler."""

from __future__ import annotations

from planner import catalog
from planner.errors import PlannerError
from planner.specs import GpuSpec


def _nvml():
    try:
        import pynvml
    except ImportError:
        raise PlannerError("--gpu auto needs the nvidia-ml-py package (pynvml); install it or name a GPU.") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        raise PlannerError(
            "--gpu auto found no NVIDIA GPU on this machine (NVML could not start); name one with --gpu, "
            "e.g. --gpu h100-sxm-80gb."
        ) from None
    return pynvml


def local_gpus() -> list[tuple[str, int]]:
    """(name, total memory bytes) of every local NVIDIA GPU."""
    pynvml = _nvml()
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):
                name = name.decode()
            out.append((name, int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)))
        return out
    finally:
        pynvml.nvmlShutdown()


def _match_catalog(name: str, total_bytes: int) -> GpuSpec | None:
    """The catalog entry whose family and capacity match an NVML device name (e.g. 'NVIDIA H100 80GB HBM3')."""
    lowered = name.lower().replace("nvidia", "").strip()
    tokens = [t for t in lowered.replace("-", " ").split() if t]
    best: tuple[int, GpuSpec] | None = None
    for spec in catalog.gpus():
        family = spec.name.split("-")[0]
        if not tokens or family not in tokens[0].replace(" ", ""):
            continue
        # Capacities as NVML reports them are a little below the catalog's; take the closest.
        diff = abs(spec.memory_bytes - total_bytes)
        if best is None or diff < best[0]:
            best = (diff, spec)
    return best[1] if best else None


def local_gpu() -> GpuSpec:
    found = local_gpus()
    if not found:
        raise PlannerError("--gpu auto found no NVIDIA GPU on this machine; name one with --gpu.")
    name, total = found[0]
    spec = _match_catalog(name, total)
    if spec is None:
        raise PlannerError(f"--gpu auto found {name!r}, which is not in the catalog; name the closest with --gpu.")
    return spec
