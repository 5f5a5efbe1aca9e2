"""What the estimator models: the library releases whose code its memory rules follow, and the device kinds its
accuracy was measured on (issue 13). Pure: reads installed versions from package metadata, imports nothing heavy.

The releases are those of ``requirements/lock.txt``, with which the README's accuracy table was measured; the
rules cite code from these releases. Where a rule differs between two releases of the same library, both are
listed (``transformers``) and the estimator follows the installed one (``planner.estimate`` takes the version
as an input).
"""

from __future__ import annotations

import re
from importlib import metadata

# library -> the releases (major.minor) whose allocation behaviour the estimator's rules follow
LIBRARIES: dict[str, tuple[str, ...]] = {
    "torch": ("2.13",),
    # 5.24 renames past_key_values to cache, drops @torch.no_grad() from every RotaryEmbedding.forward and makes
    # GradientCheckpointingLayer checkpoint only under torch.is_grad_enabled(): none of it changes what a training
    # step allocates (the rotary tables come from position_ids and the inv_freq buffer, which need no gradient,
    # so autograd records nothing either way; a training forward always has gradients enabled). Checked: the 48
    # CPU measurements of tests/test_activations.py and tests/test_peak.py measure and estimate the same bytes
    # with 5.23.0 and 5.24.0, and so does the CI validation matrix (scripts/drift.sh, 2026-12-02).
    "transformers": ("5.23", "5.24"),
    "peft": ("0.21",),
    "bitsandbytes": ("0.50",),
    "deepspeed": ("0.19",),
    "accelerate": ("1.15", "1.16"),
}

# The device kinds the allocated-memory model was measured against (README "Accuracy"); the GPU-only terms
# (context, cuBLAS workspace, NCCL, allocator slack: estimate/overhead.py) are not calibrated on a GPU yet.
MEASURED_ON = (
    "CPU, ATen AVX2 kernels, bf16 matmuls on ATen (AMD EPYC without avx512; any CPU with ONEDNN_MAX_CPU_ISA=AVX2)",
    "CPU, ATen AVX512 kernels, bf16 matmuls on oneDNN (AMD EPYC with avx512_bf16)",
)
GPU_NOTE = ("GPU-only terms (CUDA context, cuBLAS workspace, NCCL buffers, allocator slack) are published figures, "
            "not yet calibrated against GPU profiles.")


def minor(version: str | None) -> str | None:
    """'5.24.0' -> '5.24'; None for a missing or unparsable version."""
    if not version:
        return None
    m = re.match(r"(\d+)\.(\d+)", version)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def package_versions(names) -> dict[str, str | None]:
    """Installed version of each distribution in ``names`` (None: not installed), from package metadata."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def installed_versions() -> dict[str, str | None]:
    return package_versions(LIBRARIES)


def version_notes(installed: dict[str, str | None] | None = None) -> list[str]:
    """One note per installed library whose minor release the estimator does not follow (absent ones: none;
    an estimate does not need them)."""
    installed = installed_versions() if installed is None else installed
    notes = []
    for name, releases in LIBRARIES.items():
        have = minor(installed.get(name))
        if have is not None and have not in releases:
            notes.append(f"installed {name} {installed[name]} is not a release planner models ({', '.join(releases)}): "
                         f"its memory rules follow {name} {releases[-1]}; a newer release can allocate differently "
                         "(scripts/drift.sh shows what moves).")
    return notes


def modelled_block(device: str = "cuda") -> dict:
    """The ``modelled`` block of ``planner estimate --json``."""
    installed = installed_versions()
    return {
        "libraries": {name: list(releases) for name, releases in LIBRARIES.items()},
        "installed": installed,
        "device": device,
        "measured_on": list(MEASURED_ON),
        "notes": version_notes(installed) + ([GPU_NOTE] if device == "cuda" else []),
    }
