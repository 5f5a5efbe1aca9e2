"""What the CPU kernels of a validation run allocate beyond their outputs: the CPU kind as an estimator input.

planner validates its tape against CPU profiles, and CPU kernels allocate differently on different CPUs. The one
difference found so far (issue 13) is oneDNN's 16-bit matmul:

- PyTorch sends a bf16 ``mm``/``addmm``/``bmm``/``baddbmm`` (so every bf16 ``F.linear`` and ``torch.matmul``) to
  oneDNN when ``use_mkldnn_matmul`` holds (aten/src/ATen/native/LinearAlgebra.cpp ``addmm_impl_cpu_`` and
  ``bmm_out_or_baddbmm_``): both operands bf16, the problem larger than 16 x 16 x 16 elements (``checksize``) and
  ``mkldnn_bf16_device_check()`` true -- oneDNN's effective ISA reaches ``avx512_core``
  (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``; ``ONEDNN_MAX_CPU_ISA=AVX2`` turns it off, while
  ``ATEN_CPU_CAPABILITY`` only picks ATen's own vectorised kernels and changes nothing here). Otherwise bf16
  matmuls run ATen's ``cpublas::gemm`` fallback, which allocates nothing but its output.
- ``mkldnn_matmul`` (aten/src/ATen/native/mkldnn/Matmul.cpp) runs ``ideep::matmul_forward`` with a user-managed
  scratchpad: after the output is allocated, a workspace of the primitive's ``scratchpad_desc().get_size()``
  bytes comes from PyTorch's CPU allocator and is freed when the op returns. Its size is set by oneDNN's brgemm
  blocking heuristics (src/cpu/x64/matmul/brgemm_matmul_utils.cpp ``init_brgemm_matmul_conf`` and
  ``init_scratchpad``: packed B, an fp32 C accumulator, a transposed-A copy, per-thread batch buffers), which
  depend on the ISA, the number of OpenMP threads and the cache sizes. planner does not re-derive those
  heuristics: the size of each call comes from oneDNN itself (``planner.profile.cpu_kind`` runs that one matmul
  on the profiled machine with the rank's thread count and records what it allocated), and the tape places it
  where the op runs, which is what decides whether it meets the peak.

The workspace is a temporary: alive only inside one matmul, so it matters when the peak is a matmul in
backward (gradient checkpointing's recomputation, the lm_head's gradient) -- up to 8% of the peak of the tiny
validation models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

# One matmul as PyTorch calls it: (dtype, batch, m, k, n, a_transposed, b_transposed). ``batch`` is 1 for mm and
# addmm; a transposed operand is a column-major view (``x.t()``), which oneDNN reads as format "ba".
MatmulCall = tuple[str, int, int, int, int, bool, bool]

# 16-bit dtypes oneDNN's matmul takes from PyTorch on CPU (fp16 needs avx512_core_fp16 and is not modelled).
ONEDNN_DTYPES = ("bf16",)


@dataclass(frozen=True)
class CpuKernels:
    """The CPU kind a CPU run was measured on, as far as it changes allocations.

    ``capability``: ``torch.backends.cpu.get_cpu_capability()`` (ATen's vector ISA: DEFAULT, AVX2, AVX512, ...).
    ``onednn_bf16``: PyTorch sends bf16 matmuls to oneDNN. ``num_threads``: the rank's OpenMP threads (the
    workspace is per thread). ``workspaces``: oneDNN's workspace per matmul call, in bytes, measured from the
    library (0: the call allocates nothing beyond its output, e.g. below ``checksize``).
    """

    capability: str = "DEFAULT"
    onednn_bf16: bool = False
    num_threads: int = 1
    cpu_name: str = ""
    workspaces: tuple[tuple[MatmulCall, int], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.num_threads < 1:
            raise ValueError(f"num_threads must be at least 1, got {self.num_threads}")

    def uses_onednn(self, dtype: str) -> bool:
        return self.onednn_bf16 and dtype in ONEDNN_DTYPES

    def workspace_bytes(self, call: MatmulCall) -> int | None:
        """oneDNN's workspace for ``call`` (None: not measured for this kind)."""
        return self._table.get(call)

    @cached_property
    def _table(self) -> dict[MatmulCall, int]:
        return dict(self.workspaces)

    def with_workspaces(self, measured: dict[MatmulCall, int]) -> CpuKernels:
        merged = dict(self.workspaces) | {tuple(k): int(v) for k, v in measured.items()}
        return CpuKernels(self.capability, self.onednn_bf16, self.num_threads, self.cpu_name,
                          tuple(sorted(merged.items())))

    def describe(self) -> str:
        path = "oneDNN bf16 matmuls" if self.onednn_bf16 else "ATen bf16 matmuls (no oneDNN bf16)"
        name = f"{self.cpu_name}, " if self.cpu_name else ""
        return f"CPU {name}ATen {self.capability}, {path}, {self.num_threads} thread(s)"

    def to_dict(self) -> dict:
        return {
            "capability": self.capability,
            "onednn_bf16": self.onednn_bf16,
            "num_threads": self.num_threads,
            "cpu_name": self.cpu_name,
            "matmul_workspaces": [[list(k), v] for k, v in self.workspaces],
        }

    @classmethod
    def from_dict(cls, d: dict) -> CpuKernels:
        rows = d.get("matmul_workspaces") or []
        return cls(
            capability=str(d.get("capability", "DEFAULT")),
            onednn_bf16=bool(d.get("onednn_bf16", False)),
            num_threads=int(d.get("num_threads", 1)),
            cpu_name=str(d.get("cpu_name", "")),
            workspaces=tuple(sorted((_call(k), int(v)) for k, v in rows)),
        )


def _call(k) -> MatmulCall:
    dtype, batch, m, k_, n, at, bt = k
    return (str(dtype), int(batch), int(m), int(k_), int(n), bool(at), bool(bt))


# The CPU kind the validation suite used before the kind was recorded (profiles without ``cpu_kernels``): AMD
# EPYC without avx512 (README's first accuracy table), where bf16 matmuls never reach oneDNN.
LEGACY = CpuKernels(capability="AVX2", onednn_bf16=False)
