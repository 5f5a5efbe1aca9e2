"""GPU-only memory that is not a tensor of the model: runtime constants, each with where it comes from.

None of this exists on CPU (``estimate(device="cpu")``: reserved = device = allocated). These figures were not
measured on this project's GPUs yet; they are the published/observed values below and are to be calibrated
from the GPU reference profiles (issue 8), here and nowhere else.

Three per-GPU figures (DESIGN.md section 2):
- allocated: tensor bytes (``torch.cuda.max_memory_allocated``) -- the estimator's categories, plus the
  cuBLAS workspaces, which PyTorch allocates through its caching allocator;
- reserved: the caching allocator's segments (``max_memory_reserved``) = allocated rounded to blocks and
  segments, plus fragmentation;
- device: what NVML / nvidia-smi shows = reserved + CUDA context + NCCL and other library buffers.
"""

from __future__ import annotations

import math

from planner.units import MIB

# ---------------------------------------------------------------- outside the caching allocator (device only)

# CUDA context of a PyTorch process on Hopper with lazy module loading (CUDA_MODULE_LOADING=LAZY, the default
# since CUDA 11.7 / torch 1.13): about 0.5 GiB seen by NVML before any tensor exists; 1-2 GiB without lazy
# loading (pytorch/pytorch issues 28113, 107667). Calibrate with issue 8's NVML samples.
CUDA_CONTEXT_BYTES = 512 * MIB

# NCCL communicators: per-peer channel buffers (NCCL_BUFFSIZE 4 MiB x channels) and proxy state, allocated by
# NCCL with cudaMalloc outside PyTorch's allocator, once a process group talks to other GPUs (NCCL docs,
# "Environment variables": NCCL_BUFFSIZE; typically 200-600 MiB per rank on 8-GPU NVLink nodes).
NCCL_BYTES_PER_RANK = 384 * MIB

# ---------------------------------------------------------------- inside the caching allocator

# cuBLAS / cuBLASLt workspaces: PyTorch sizes them per handle and stream; on Hopper the default cuBLAS
# workspace config is ":4096:8" (8 x 4096 KiB = 32 MiB, aten/src/ATen/cuda/CublasHandlePool.cpp
# getChosenWorkspaceSize) and cuBLASLt takes 32 MiB more on sm90 (CUBLASLT_WORKSPACE_SIZE). Forward and
# backward run on one stream, so one set.
CUBLAS_WORKSPACE_BYTES = 64 * MIB

# Caching allocator rounding (c10/cuda/CUDACachingAllocator.cpp): every block is rounded up to 512 bytes
# (kMinBlockSize); requests up to 1 MiB (kSmallSize) come from 2 MiB segments (kSmallBuffer), requests up to
# 10 MiB from 20 MiB segments (kLargeBuffer), larger ones from segments rounded up to 2 MiB (kRoundLarge).
BLOCK_ROUND_BYTES = 512
SMALL_SEGMENT_BYTES = 2 * MIB
LARGE_SEGMENT_BYTES = 20 * MIB
LARGE_ROUND_BYTES = 2 * MIB

# Fragmentation: blocks of freed activations that cannot be reused for the next, differently sized request
# stay reserved. Reported max_memory_reserved / max_memory_allocated for transformer training without
# expandable segments is typically 1.02-1.15 (pytorch issues 35901, 29554); planner assumes the middle of the
# common range until issue 8 calibrates it.
FRAGMENTATION_FRACTION = 0.06
# A floor: at least a few partially used 20 MiB and 2 MiB segments are always held.
MIN_RESERVED_SLACK_BYTES = 3 * LARGE_SEGMENT_BYTES + 4 * SMALL_SEGMENT_BYTES


def round_block(num_bytes: int) -> int:
    """A tensor's size as the caching allocator hands it out (512-byte blocks)."""
    return BLOCK_ROUND_BYTES * math.ceil(num_bytes / BLOCK_ROUND_BYTES) if num_bytes > 0 else 0


def segment_bytes(num_bytes: int) -> int:
    """The segment a single request of ``num_bytes`` would create on an empty allocator."""
    size = round_block(num_bytes)
    if size <= 1 * MIB:
        return SMALL_SEGMENT_BYTES
    if size <= 10 * MIB:
        return LARGE_SEGMENT_BYTES
    return LARGE_ROUND_BYTES * math.ceil(size / LARGE_ROUND_BYTES)


def allocated_overhead_bytes(device: str) -> int:
    """Bytes the allocator hands out that are not model tensors (cuBLAS workspaces)."""
    return CUBLAS_WORKSPACE_BYTES if device == "cuda" else 0


def reserved_bytes(allocated_peak_bytes: int, device: str) -> int:
    """Caching-allocator reserved memory at the allocated peak."""
    if device != "cuda":
        return allocated_peak_bytes
    slack = max(int(allocated_peak_bytes * FRAGMENTATION_FRACTION), MIN_RESERVED_SLACK_BYTES)
    reserved = allocated_peak_bytes + slack
    return LARGE_ROUND_BYTES * math.ceil(reserved / LARGE_ROUND_BYTES)


def device_bytes(reserved: int, device: str, num_gpus: int) -> int:
    """What NVML reports for the process: reserved + context + communication libraries."""
    if device != "cuda":
        return reserved
    return reserved + CUDA_CONTEXT_BYTES + (NCCL_BYTES_PER_RANK if num_gpus > 1 else 0)
