"""On what: GpuSpec (one accelerator) and Cluster (how many, on how many nodes, with what host RAM)."""

from __future__ import annotations

from dataclasses import dataclass

from planner.config_fields import MAX_GPUS
from planner.errors import PlannerError


@dataclass(frozen=True)
class GpuSpec:
    name: str
    vendor: str
    memory_bytes: int
    memory_bandwidth_bytes_per_s: int
    bf16_dense_flops: int
    fp16_dense_flops: int
    supports_bf16: bool
    # Per-GPU unidirectional bandwidth between GPUs of one node (NVLink/Infinity Fabric or PCIe).
    intra_node_bytes_per_s: int
    # Host-device bandwidth, unidirectional (PCIe).
    host_bytes_per_s: int
    memory_stated: str = ""
    unconfirmed: bool = False
    # An indicative on-demand list price in USD per GPU-hour (None: the catalog has none), the date it was
    # read and where (planner/catalog/gpus.json). --price-per-gpu-hour overrides it.
    price_per_gpu_hour_usd: float | None = None
    price_date: str = ""
    price_source: str = ""
    # What a CUDA (ROCm) process sees as the device's total (cudaMemGetInfo, torch's total_memory), below the
    # nominal memory_bytes (driver, ECC and firmware reservations); None: not known, the nominal size stands in.
    # Where the figure comes from: planner/catalog/gpus.json (usable_memory_source).
    usable_memory_bytes: int | None = None
    usable_memory_source: str = ""

    @property
    def capacity_bytes(self) -> int:
        """The memory ``fits`` compares against (before the margin): the CUDA-visible total where known."""
        return self.usable_memory_bytes or self.memory_bytes

    def dense_flops(self, dtype: str) -> int:
        if dtype == "fp16":
            return self.fp16_dense_flops
        if dtype == "bf16":
            return self.bf16_dense_flops
        # fp32 matmuls run as TF32 on tensor cores at about half the 16-bit rate (vendor datasheets).
        return self.bf16_dense_flops // 2


@dataclass(frozen=True)
class Cluster:
    gpu: GpuSpec
    num_gpus: int = 1
    num_nodes: int = 1
    # Inter-node bandwidth per node, unidirectional (default: 8 x 400 Gb/s InfiniBand, a common H100 fabric).
    inter_node_bytes_per_s: int = 400_000_000_000
    # Host RAM per node for offloaded states and pinned buffers (--host-ram); None: not known, not checked.
    host_memory_bytes_per_node: int | None = None

    def __post_init__(self) -> None:
        if self.host_memory_bytes_per_node is not None and self.host_memory_bytes_per_node < 0:
            raise PlannerError(f"--host-ram must not be negative, got {self.host_memory_bytes_per_node} bytes.")
        if self.num_gpus < 1:
            raise PlannerError(f"--gpus must be at least 1, got {self.num_gpus}.")
        if self.num_gpus > MAX_GPUS:  # planner/config_fields.py says why
            raise PlannerError(f"--gpus must be at most {MAX_GPUS:,} (beyond any GPU cluster), got {self.num_gpus:,}.")
        if self.num_nodes < 1:
            raise PlannerError(f"--nodes must be at least 1, got {self.num_nodes}.")
        if self.num_gpus % self.num_nodes:
            raise PlannerError(
                f"--gpus ({self.num_gpus}) must be divisible by --nodes ({self.num_nodes}) so every node has the same number of GPUs."
            )

    @property
    def num_gpus_per_node(self) -> int:
        return self.num_gpus // self.num_nodes
