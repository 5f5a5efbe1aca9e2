"""Catalog data: published model configs and accelerator specs, shipped inside the package.

Lookup by name, with the closest names suggested when a name is unknown.
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib import resources
from typing import Any

from planner.errors import PlannerError
from planner.specs import GpuSpec

DEFAULT_GPU = "h100-sxm-80gb"


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name.lower(), choices, n=3, cutoff=0.4)
    return f" Did you mean {', '.join(close)}?" if close else ""


@cache
def model_names() -> tuple[str, ...]:
    folder = resources.files("planner.catalog") / "models"
    return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json")))


def model_config(name: str) -> dict[str, Any]:
    """The published config.json of a catalog model, as a dict."""
    if name not in model_names():
        raise PlannerError(
            f"unknown model {name!r}: not in the catalog, not a config.json path, and not a cached hub id."
            f"{_suggest(name, list(model_names()))} Run 'planner models' for the catalog."
        )
    text = (resources.files("planner.catalog") / "models" / f"{name}.json").read_text()
    return json.loads(text)


def _gpu_from_record(rec: dict[str, Any]) -> GpuSpec:
    ic = rec.get("interconnect") or {}
    # Vendor link figures are bidirectional; a collective's bus bandwidth is the unidirectional half.
    link_bidir = (
        ic.get("nvlink_bandwidth_bytes_per_s_bidirectional")
        or ic.get("infinity_fabric_bandwidth_bytes_per_s_bidirectional")
        or ic.get("pcie_x16_bandwidth_bytes_per_s_bidirectional")
        or 32_000_000_000
    )
    pcie_bidir = ic.get("pcie_x16_bandwidth_bytes_per_s_bidirectional") or 32_000_000_000
    bf16 = rec.get("bf16_dense_flops") or 0
    fp16 = rec.get("fp16_dense_flops") or bf16
    return GpuSpec(
        name=rec["name"],
        vendor=rec.get("vendor", ""),
        memory_bytes=int(rec["memory_bytes"]),
        memory_bandwidth_bytes_per_s=int(rec.get("memory_bandwidth_bytes_per_s") or 0),
        bf16_dense_flops=int(bf16 or fp16),
        fp16_dense_flops=int(fp16),
        supports_bf16=bool(rec.get("supports_bf16", True)),
        intra_node_bytes_per_s=int(link_bidir) // 2,
        host_bytes_per_s=int(pcie_bidir) // 2,
        memory_stated=rec.get("memory_stated", ""),
        unconfirmed=bool(rec.get("unconfirmed", False)),
        price_per_gpu_hour_usd=rec.get("price_per_gpu_hour_usd"),
        price_date=rec.get("price_date") or "",
        price_source=rec.get("price_source") or "",
        usable_memory_bytes=int(rec["usable_memory_bytes"]) if rec.get("usable_memory_bytes") else None,
        usable_memory_source=rec.get("usable_memory_source") or "",
    )


@cache
def gpu_records() -> tuple[dict[str, Any], ...]:
    text = (resources.files("planner.catalog") / "gpus.json").read_text()
    return tuple(json.loads(text))


@cache
def kernel_efficiencies() -> tuple[tuple[str, float, float, str], ...]:
    """(GPU name, matmul share of the dense 16-bit peak, attention share, provenance) of every catalog GPU whose
    record states its kernel efficiencies (gpus.json ``kernel_efficiency``), in catalog order."""
    out = []
    for rec in gpu_records():
        eff = rec.get("kernel_efficiency")
        if eff:
            out.append((rec["name"], float(eff["matmul"]), float(eff["attention"]), str(eff["source"])))
    return tuple(out)


@cache
def gpus() -> tuple[GpuSpec, ...]:
    return tuple(_gpu_from_record(r) for r in gpu_records())


def gpu(name: str) -> GpuSpec:
    for spec in gpus():
        if spec.name == name.lower():
            return spec
    names = [g.name for g in gpus()]
    raise PlannerError(f"unknown GPU {name!r}.{_suggest(name, names)} Run 'planner gpus' for the catalog.")
