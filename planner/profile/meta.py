"""What makes a profile reproduce itself: package versions, hardware, the git commit of planner."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from planner.modelled import package_versions
from planner.profile.cpu_kind import cpu_name, local_kernels

PACKAGES = ("torch", "transformers", "deepspeed", "peft", "bitsandbytes", "accelerate", "nvidia-ml-py", "planner")


def versions() -> dict[str, str | None]:
    return {"python": platform.python_version(), **package_versions(PACKAGES)}


def git_commit() -> str | None:
    """The commit of the planner checkout this code runs from (None outside a git work tree)."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    if out.returncode != 0 or len(commit) != 40:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True, timeout=10, check=False,
    ).stdout.strip()  # fmt: skip
    return commit + ("-dirty" if dirty else "")


def _ram_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def hardware(device: str) -> dict[str, Any]:
    hw: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "num_cpus": os.cpu_count(),
        "ram_bytes": _ram_bytes(),
        "device": device,
    }
    if device == "cuda":
        import torch

        props = torch.cuda.get_device_properties(0)
        hw["device_name"] = props.name
        hw["device_memory_bytes"] = int(props.total_memory)
        hw["num_devices"] = torch.cuda.device_count()
        hw["cuda"] = torch.version.cuda
        try:
            from planner.nvml import local_gpus

            hw["nvml_devices"] = [{"name": n, "memory_bytes": b} for n, b in local_gpus()]
        except Exception as exc:  # noqa: BLE001 - NVML is optional for the record
            hw["nvml_devices"] = f"unavailable: {exc}"
    else:
        hw["device_name"] = cpu_name()
        hw["device_memory_bytes"] = _ram_bytes()
        kind = local_kernels()
        hw["cpu_capability"] = kind.capability
        hw["onednn_bf16"] = kind.onednn_bf16
        hw["kernel_path"] = (f"ATen {kind.capability}, bf16 matmuls on "
                             f"{'oneDNN' if kind.onednn_bf16 else 'ATen (no oneDNN bf16)'}")
    return hw


def command_line() -> list[str]:
    return [Path(sys.argv[0]).name, *sys.argv[1:]]
