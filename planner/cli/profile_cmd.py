"""`planner profile`: train a real model for a few steps and record every rank's memory timeline."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from planner.cli import deepspeed_options, fsdp_options
from planner.cli import from_options as fo
from planner.cli import options as o
from planner.errors import PlannerError

StepsOpt = Annotated[int, typer.Option("--steps", help="Optimizer steps to run (the peak is taken after step 0).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
OutOpt = Annotated[
    Path | None, typer.Option("--out", help="Profile directory (default: profiles/<model>-<method>-...).")
]
WeightsOpt = Annotated[
    str | None, typer.Option("--weights", help="Directory with real weights (from_pretrained); default: random.")
]
DataOpt = Annotated[
    str | None, typer.Option("--data", help="JSONL file with a 'text' field per line; default: random tokens.")
]
TokenizerOpt = Annotated[
    str | None, typer.Option("--tokenizer", help="Local tokenizer directory for --data (default: random ids).")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing profile directory.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the random weights and tokens.")]
FailAtOpt = Annotated[
    str | None,
    typer.Option("--fail-at", hidden=True, help="RANK:STEP:PHASE: raise an injected error there (testing)."),
]
TorchCatOpt = Annotated[
    bool,
    typer.Option(
        "--torch-categories",
        help="Also categorise with torch.profiler._memory_profiler (private API; CPU only; slower).",
    ),
]
CommandArg = Annotated[
    list[str] | None,
    typer.Argument(help="After '--': your own training command (python, torchrun, accelerate launch or deepspeed) "
                   "to record instead of planner's workload, e.g. -- torchrun --nproc_per_node 2 train.py. Give the "
                   "run it makes with --from FILE or flags; every rank records --steps optimizer steps.",
                   show_default=False),
]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar on stderr.")]
RamCheckOpt = Annotated[
    bool,
    typer.Option("--ram-check/--no-ram-check", help="Refuse a run whose estimated host RAM exceeds MemAvailable."),
]


@o.training_options(
    omit=(*o.HOST_OPTIONS, *o.PLAN_OPTIONS),  # the local machine, one real run: no time, cost or fit
    method=o.Variant(o.MethodOneOpt, "full"), zero=o.Variant(o.ZeroOneOpt, 0),
    offload=o.Variant(o.OffloadOneOpt, "none"), seq_len=512,
)
def profile(
    *,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Catalog name, config.json path or dir, hub id.")] = None,
    flags: o.TrainingFlags,
    steps: StepsOpt = 3,
    device: DeviceOpt = "auto",
    out: OutOpt = None,
    weights: WeightsOpt = None,
    data: DataOpt = None,
    tokenizer: TokenizerOpt = None,
    force: ForceOpt = False,
    seed: SeedOpt = 0,
    torch_categories: TorchCatOpt = False,
    progress: ProgressOpt = True,
    ram_check: RamCheckOpt = True,
    fail_at: FailAtOpt = None,
    trust_remote_code: o.TrustRemoteCodeOpt = False,
    as_json: o.JsonOpt = False,
    from_config: fo.FromOpt = None,
    accelerate_config: fo.AccelerateConfigOpt = None,
    command: CommandArg = None,
) -> None:
    """Train MODEL for a few steps under exactly this configuration and record every rank's memory; or, after
    '--', record your own training command."""
    # Before torch loads: C++ warnings about blocks allocated before recording began are expected.
    if "torch" not in sys.modules:
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    from planner.models import load_model
    from planner.profile.launcher import default_slug, resolve_device, run_profile

    fc, model = fo.read_from(from_config, accelerate_config, model)
    if fc is not None and not command:
        raise PlannerError("--from goes with a command to record: planner profile --from FILE -- COMMAND.")
    if model is None and weights is None:
        raise PlannerError("--model is required (or --weights DIR with a config.json).")
    spec = load_model(model or weights, trust_remote_code=trust_remote_code)
    if fc is not None:
        train, flags = fo.from_config_run(fc, flags, spec)
    else:
        train = o.build_train_spec(flags, model=spec)
    fsdp_options.check_one_run(flags, train)
    deepspeed_options.echo_notes(flags)
    o.build_cluster(flags)  # validates --gpus and --nodes with the cluster's messages
    resolved = resolve_device(device, flags.gpus)
    if out is None:
        out = Path("profiles") / (default_slug(spec, train, flags.gpus, resolved) + ("-command" if command else ""))
    gpu_name = None
    if resolved == "cuda":  # the catalog GPU this is, so that compare estimates for the same card
        from planner.nvml import local_gpu

        try:
            gpu_name = local_gpu().name
        except PlannerError:
            gpu_name = None
    if command:
        from planner.profile.command import run_command_profile

        status, message, path = run_command_profile(
            spec, train, list(command), num_gpus=flags.gpus, num_nodes=flags.nodes, steps=steps, device=resolved,
            out=out, force=force, gpu=gpu_name,
        )  # fmt: skip
    else:
        status, message, path = run_profile(
            spec, train, num_gpus=flags.gpus, num_nodes=flags.nodes, steps=steps, device=resolved, out=out,
            force=force, seed=seed, weights=weights, data=data, tokenizer=tokenizer, fail_at=fail_at,
            torch_categories=torch_categories, gpu=gpu_name, show_progress=progress, ram_check=ram_check,
        )  # fmt: skip
    from planner.profile import load_profile

    prof = load_profile(path)
    if as_json:
        typer.echo(json.dumps(prof.summary, indent=2, sort_keys=True))
    else:
        _render(prof)
    if status != "ok":
        typer.echo(f"error: {message}", err=True)
        raise SystemExit(130 if status == "interrupted" else 1)


def _render(prof) -> None:
    """The status on a line of its own, then the peak table of the ranks that recorded one (none after a
    failure in setup or step 0, e.g. out of memory: then no table at all). Rank messages other than the
    run's own (the ``error:`` line) go to stderr."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from planner.cli.render import fmt_bytes
    from planner.profile.attribution import CATEGORIES

    console = Console()
    ranks = [r for r in prof.ranks if r.peak is not None]
    console.print(escape(f"{prof.path}: status {prof.status}, device {prof.device}"), highlight=False, soft_wrap=True)
    if not ranks:
        console.print("no rank recorded a steady-state peak, so there is no memory table.", highlight=False)
    else:
        table = Table(title="steady-state allocated peak")
        table.add_column("category")
        for r in ranks:
            table.add_column(f"rank {r.rank}", justify="right")
        table.add_row("peak at", *[f"step {r.peak.step} {r.peak.phase}" for r in ranks])
        for c in CATEGORIES:
            table.add_row(c, *[fmt_bytes(r.peak.by_category[c]) for r in ranks])
        table.add_row("allocated", *[fmt_bytes(r.peak.allocated_bytes) for r in ranks], style="bold")
        if any(r.cuda for r in ranks):
            table.add_row("reserved", *[fmt_bytes(int((r.cuda or {}).get("steady_reserved_peak_bytes", 0))) for r in ranks])
            table.add_row("device (NVML)", *[fmt_bytes(int((r.cuda or {}).get("nvml_steady_peak_used_bytes", 0))) for r in ranks])
        console.print(table)
    for r in prof.ranks:
        if r.status != "ok" and r.message != prof.message:
            typer.echo(f"rank {r.rank}: {r.status}: {r.message}", err=True)
