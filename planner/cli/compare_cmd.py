"""`planner compare PROFILE`: the estimator on the profile's own inputs vs what the profile measured."""

from __future__ import annotations

import inspect
import json
from typing import Annotated

import typer

from planner.cli import options as o


def compare(
    profile: Annotated[str, typer.Argument(help="A profile directory written by 'planner profile'.")],
    as_json: o.JsonOpt = False,
) -> None:
    """Estimate the profile's configuration and print estimated vs measured bytes per rank and category."""
    from planner import catalog
    from planner.compare import compare as run_compare
    from planner.estimate.core import estimate
    from planner.profile.store import load_profile
    from planner.specs import Cluster

    prof = load_profile(profile)
    model = prof.model_spec()
    train = prof.train_spec()
    cluster_meta = prof.meta.get("cluster") or {}
    gpu_name = cluster_meta.get("gpu") or catalog.DEFAULT_GPU
    cluster = Cluster(
        gpu=catalog.gpu(gpu_name),
        num_gpus=int(cluster_meta.get("num_gpus", prof.num_ranks)),
        num_nodes=int(cluster_meta.get("num_nodes", 1)),
    )
    kwargs = {"device": "cpu" if prof.device == "cpu" else "cuda", "cpu": prof.cpu_kernels()}
    if "allow_longer" in inspect.signature(estimate).parameters:
        kwargs["allow_longer"] = True  # the profile ran this length, whatever the model's position limit
    est = estimate(model, train, cluster, **kwargs)
    result = run_compare(est, prof)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, sort_keys=True))
        return
    _render(result)


def _render(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from planner.cli.render import fmt_bytes

    console = Console()
    for r in result.ranks:
        table = Table(
            title=f"rank {r.rank}: estimated peak at {r.estimated_peak_phase}, "
            f"measured at step {r.measured_peak_step} {r.measured_peak_phase}"
        )
        for col, just in (("category", "left"), ("estimated", "right"), ("measured", "right"),
                          ("error", "right"), ("error / peak", "right")):  # fmt: skip
            table.add_column(col, justify=just)
        for row in r.rows:
            share = f"{row.error_of_peak:+.2%}" if row.error_of_peak is not None else ""
            table.add_row(
                row.name,
                fmt_bytes(row.estimated_bytes),
                fmt_bytes(row.measured_bytes),
                ("+" if row.error_bytes > 0 else "") + fmt_bytes(row.error_bytes),
                share,
            )
        console.print(table)
    for note in result.notes:
        typer.echo(f"note: {note}")
