"""`planner models` and `planner gpus`: the shipped catalogs."""

from __future__ import annotations

import dataclasses
import json

import typer
from rich.console import Console
from rich.table import Table

from planner import catalog
from planner.cli import options as o
from planner.estimate.count.params import count_params
from planner.models import spec_from_config
from planner.units import fmt_count, fmt_gib


def models(as_json: o.JsonOpt = False) -> None:
    """List the model catalog: name, family, parameters, layers, hidden size, heads, vocabulary."""
    rows = []
    for name in catalog.model_names():
        spec = spec_from_config(catalog.model_config(name), name)
        rows.append(
            {
                "name": name,
                "family": spec.model_type,
                "num_params": count_params(spec).num_params,
                "num_layers": spec.num_layers,
                "hidden_size": spec.hidden_size,
                "num_heads": spec.num_heads,
                "num_kv_heads": spec.num_kv_heads,
                "vocab_size": spec.vocab_size,
                "num_experts": spec.num_experts,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="Model catalog", header_style="bold")
    for col in ("name", "family", "parameters", "layers", "hidden", "heads/kv", "vocab", "experts"):
        table.add_column(col, justify="left" if col in ("name", "family") else "right")
    for r in rows:
        table.add_row(
            r["name"],
            r["family"],
            fmt_count(r["num_params"]),
            str(r["num_layers"]),
            str(r["hidden_size"]),
            f"{r['num_heads']}/{r['num_kv_heads']}",
            f"{r['vocab_size']:,}",
            str(r["num_experts"] or "-"),
        )
    Console().print(table)


def gpus(as_json: o.JsonOpt = False) -> None:
    """List the accelerator catalog: memory, bandwidth, dense 16-bit FLOP/s, interconnect."""
    specs = catalog.gpus()
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(g) for g in specs], indent=2))
        return
    table = Table(title="Accelerator catalog", header_style="bold")
    for col in ("name", "vendor", "memory", "CUDA-visible", "stated", "HBM TB/s", "bf16 TFLOP/s", "GPU-GPU GB/s", "bf16",
                "USD/GPU-h"):
        table.add_column(col, justify="left" if col in ("name", "vendor", "stated") else "right")
    for g in specs:
        table.add_row(
            g.name + (" *" if g.unconfirmed else ""),
            g.vendor,
            fmt_gib(g.memory_bytes, 0),
            fmt_gib(g.capacity_bytes, 2) + (" ~" if g.usable_memory_source.startswith("derived") else ""),
            g.memory_stated,
            f"{g.memory_bandwidth_bytes_per_s / 1e12:.2f}",
            f"{g.bf16_dense_flops / 1e12:,.0f}",
            f"{g.intra_node_bytes_per_s / 1e9:,.0f}",
            "yes" if g.supports_bf16 else "no",
            f"{g.price_per_gpu_hour_usd:.2f}" if g.price_per_gpu_hour_usd else "-",
        )
    Console().print(table)
    Console().print("[dim]* some fields unconfirmed by a second source (see the catalog's source notes).[/]")
    Console().print("[dim]CUDA-visible: the total a CUDA/ROCm process sees (torch's total_memory), what fits is "
                    "checked against (minus --margin); ~ derived from a sibling board, not measured. Sources: "
                    "planner gpus --json, usable_memory_source.[/]")
    Console().print("[dim]USD/GPU-h: an indicative on-demand list price (provider and date in each entry's "
                    "price_source, planner gpus --json); - where the catalog has none.[/]")
