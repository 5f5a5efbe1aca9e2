"""`planner recommend`: choose the training plan (and with --out, write the bundle that runs it)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from planner.cli import deepspeed_options, fsdp_options, gpu_precision
from planner.cli import from_options as fo
from planner.cli import options as o
from planner.errors import PlannerError
from planner.specs import Method
from planner.units import fmt_gib

MethodAutoOpt = Annotated[
    str, typer.Option("--method", help="auto (prefer full, then LoRA, then QLoRA, whichever fits first), full, lora or qlora.")
]
GlobalBatchOpt = Annotated[
    int | None,
    typer.Option("--global-batch-size", "-g", help="Sequences per optimizer step = micro-batch x accumulation x GPUs."),
]
MaxGpusOpt = Annotated[
    int | None, typer.Option("--max-gpus", help="Also search GPU counts from --gpus up to this many (powers of two).")
]
AttnSearchOpt = Annotated[
    str | None, typer.Option("--attn", help="Fix the attention implementation (default: search sdpa and flash_attention_2).")
]
CkptSearchOpt = Annotated[
    bool | None,
    typer.Option("--grad-checkpointing/--no-grad-checkpointing", help="Fix activation checkpointing (default: search both)."),
]


@o.training_options(
    omit=("micro_batch", "grad_accum"),  # the layout recommend chooses
    method=o.Variant(MethodAutoOpt, "auto"), attn=o.Variant(AttnSearchOpt, None),
    grad_checkpointing=o.Variant(CkptSearchOpt, None), seq_len=o.DEFAULT_SEQ_LEN,
)
def recommend(
    *,
    model: o.ModelOpt = None,
    global_batch_size: GlobalBatchOpt = None,
    from_config: fo.FromOpt = None,
    accelerate_config: fo.AccelerateConfigOpt = None,
    flags: o.TrainingFlags,
    max_gpus: MaxGpusOpt = None,
    runners_up: Annotated[int, typer.Option("--runners-up", help="How many runners-up to show (0-20).")] = 4,
    trust_remote_code: o.TrustRemoteCodeOpt = False,
    as_json: o.JsonOpt = False,
    out: Annotated[Path | None, typer.Option("--out", help="Write the training bundle (train.py, configs, launch.sh, PLAN.md) here.")] = None,
    recipes: Annotated[bool, typer.Option("--recipes/--no-recipes", help="When nothing fits with the recipe asked "
                       "for, try the memory-saving knobs not typed: --loss chunked-ce, --activation-offload, "
                       "--optimizer adamw-8bit, --optimizer-in-backward, then combinations (activation offload only "
                       "with --host-ram); when a plan fits, take --loss chunked-ce or fused-linear-ce where it frees "
                       "the memory for a layout at least 1% faster; the output says which and why (default: on; "
                       "never with --from, whose recipe is the config's).")] = True,
    force: Annotated[bool, typer.Option("--force", help="With --out: write the bundle's files into a directory planner did not "
                                        "create, or over files changed since planner wrote them (nothing else is touched).")] = False,
) -> None:
    """Choose method, engine (ZeRO stage and offload, or FSDP2), checkpointing, attention and batch layout for
    MODEL."""
    from planner.models import load_model
    from planner.plan.recommend import NoPlanFits
    from planner.plan.recommend import recommend as run_recommend
    from planner.specs import Offload

    if not 0 <= runners_up <= 20:
        raise PlannerError(f"--runners-up must be from 0 to 20, got {runners_up}.")
    num_tokens = o.check_flags(flags)
    if out is not None and out.exists() and not out.is_dir():
        raise PlannerError(f"--out {str(out)!r} is a file; give a directory.")
    fc, model = fo.read_from(from_config, accelerate_config, model)
    if fc is not None:
        flags = fo.from_cluster(fc, flags)
        if "method" not in flags.typed:
            flags = replace(flags, method=fc.train.method.value)
        if global_batch_size is None:  # the config's own: micro-batch x accumulation x data-parallel ranks
            global_batch_size = fc.train.micro_batch * fc.train.grad_accum * flags.gpus
    if model is None:
        raise typer.BadParameter("give a catalog name, a config.json or a hub id, or --from a training config.",
                                 param_hint="'--model' / '-m'")
    if global_batch_size is None:
        raise typer.BadParameter("sequences per optimizer step (micro-batch x accumulation x GPUs) are needed to "
                                 "plan, or --from a training config that states them.",
                                 param_hint="'--global-batch-size' / '-g'")
    flags, precision_note = gpu_precision.for_gpu(flags, typed="precision" in flags.typed or fc is not None)
    spec = load_model(model, trust_remote_code=trust_remote_code)
    # the recipe; the layout (method, ZeRO stage, offload, checkpointing, attention, micro-batch) is searched
    # (a fixed stage and offload start the base, so that it carries a --deepspeed-config's buckets into the search)
    base = o.build_train_spec(flags, model=spec, method=None, zero=flags.zero, offload=flags.offload if flags.zero
                              else None, grad_checkpointing=None, attn=None)
    if fc is not None:
        # the config's recipe (precision, optimizer, LoRA, quantization, sequence length) with typed flags on top
        base = fo.merge_from_config(fc.train, base, flags.typed | ({"seq_len"} if "seq_len" in fc.unset else set()))
        base = o.with_layout(replace(base, micro_batch=1, grad_accum=1), Method.FULL, 0, Offload.NONE)
        for note in fc.notes:
            typer.echo(f"note: {note}", err=True)
    deepspeed_options.echo_notes(flags)
    cluster = o.build_cluster(flags)
    kwargs = {}
    if flags.zero is not None:
        kwargs["zero_stages"] = (flags.zero,)
    if flags.offload is not None:
        kwargs["offloads"] = (o.parse_offload(flags.offload),)
        if kwargs["offloads"] != (Offload.NONE,) and flags.zero == 0:
            raise PlannerError(f"--offload {flags.offload!r} needs ZeRO stage 1, 2 or 3, not --zero 0.")
    if flags.grad_checkpointing is not None:
        kwargs["checkpointing"] = (flags.grad_checkpointing,)
    if flags.attn is not None:
        kwargs["attn_impls"] = (o.parse_attn(flags.attn),)
    config_fsdp = fc.train.parallelism.fsdp_config if fc is not None and fc.train.uses_fsdp2 else None
    kwargs.update(fsdp_options.search_space(flags, base.precision, config_fsdp))
    try:
        rec = run_recommend(
            spec, base, cluster, global_batch_size=global_batch_size, method=flags.method.lower(),
            max_gpus=max_gpus, margin=flags.margin, mfu=flags.mfu, num_tokens=num_tokens,
            price_per_gpu_hour=flags.price_per_gpu_hour, num_runners_up=runners_up,
            allow_longer=flags.allow_longer, recipes=recipes and fc is None, fixed_knobs=frozenset(flags.typed),
            **kwargs,
        )
    except NoPlanFits as exc:
        if as_json:
            typer.echo(json.dumps(exc.to_dict(), indent=2, sort_keys=True))
        else:
            _render_no_fit(exc)
        raise
    if precision_note:
        rec = replace(rec, why=(*rec.why, precision_note),
                      estimate=replace(rec.estimate, notes=(*rec.estimate.notes, precision_note)))
    if out is not None:
        _write_bundle(rec, out, force)
    if as_json:
        payload = rec.to_dict()
        if out is not None:
            payload["bundle"] = str(out)
        typer.echo(json.dumps(payload, indent=2, sort_keys=True))
        return
    _render(rec)
    if out is not None:
        typer.echo(f"bundle written to {out}", err=True)


def _write_bundle(rec, out: Path, force: bool) -> None:
    try:
        from planner.emit import write_bundle
    except ImportError:
        raise PlannerError("--out needs the bundle writer (planner.emit), which this installation lacks.") from None
    write_bundle(rec, out, force=force)


# ------------------------------------------------------------------------------------------ rendering


def _gib(n: int) -> str:
    """A figure in a column headed GiB."""
    return fmt_gib(n, 1, unit=False)


def _console():
    from rich.console import Console

    return Console(width=max(Console().width, 160), soft_wrap=False)


def _render(rec) -> None:
    from rich.table import Table

    console = _console()
    plan, est, t = rec.plan, rec.estimate, rec.plan.train
    tp = est.throughput
    console.print(f"[bold]Recommended plan for {plan.model.name}[/] on {plan.cluster.num_gpus} x {plan.cluster.gpu.name} "
                  f"({plan.cluster.num_nodes} node{'s' if plan.cluster.num_nodes > 1 else ''})")
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("method", t.method.value + (f" (rank {t.lora.rank}, {', '.join(t.lora.targets)})" if t.method.value != "full" else "")),
        *((("engine", t.parallelism.label),) if t.uses_fsdp2 else
          (("ZeRO stage", str(t.zero_stage)), ("offload", t.offload.value))),
        ("precision", t.precision.value),
        ("micro-batch", str(t.micro_batch)),
        ("gradient accumulation", str(t.grad_accum)),
        ("global batch", f"{plan.global_batch_size} sequences x {t.seq_len} tokens"),
        ("checkpointing", "on" if t.grad_checkpointing else "off"),
        ("attention", t.attn_impl.value),
        ("peak per GPU", f"{fmt_gib(est.device_bytes, 1)} device, {fmt_gib(est.reserved_bytes, 1)} reserved at "
                         f"{est.peak_phase} (capacity {fmt_gib(est.capacity_bytes, 1)}, margin {est.margin:.0%})"),
        ("tokens/s", f"{tp.tokens_per_s_per_gpu:,.0f} per GPU, step {tp.step_time_s:.2f} s (MFU {tp.mfu:.0%})"),
    ]
    if est.cpu_bytes_per_node:
        limit = est.cluster.host_memory_bytes_per_node
        rows.append(("host RAM", f"{fmt_gib(est.cpu_bytes_per_node, 1)} per node (offload) "
                     + ("[yellow]not checked: pass --host-ram GIB[/]" if limit is None else f"of {fmt_gib(limit, 1)}")))
    if tp.num_tokens:
        rows.append(("time", f"{tp.total_time_s / 3600:,.1f} h for {tp.num_tokens:,} tokens"))
        if tp.price_per_gpu_hour:
            rows.append(("cost", f"{tp.cost:,.2f} at {tp.price_per_gpu_hour:g} per GPU-hour"))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    console.print("[bold]Why[/]")
    for line in rec.why:
        console.print(f" - {line}")
    if rec.runners_up:
        ru = Table(title="Runners-up", header_style="bold")
        for col in ("plan", "tokens/s/GPU", "peak GiB", "lost because"):
            ru.add_column(col, overflow="fold")
        for a in rec.runners_up:
            ru.add_row(a.plan.label(), f"{a.estimate.throughput.tokens_per_s_per_gpu:,.0f}",
                       _gib(a.estimate.device_bytes), a.reason)
        console.print(ru)
    _render_rejected(console, rec.rejected, "Rejected (best first)")


def _render_rejected(console, rejected, title: str) -> None:
    from rich.table import Table

    if not rejected:
        return
    rj = Table(title=title, header_style="bold")
    for col in ("plan", "peak GiB", "reason"):
        rj.add_column(col, overflow="fold")
    for r in rejected:
        rj.add_row(r.plan.label() if r.plan else "-", _gib(r.estimate.device_bytes) if r.estimate else "-", r.reason)
    console.print(rj)


def _render_no_fit(exc) -> None:
    console = _console()
    console.print("[bold red]No plan fits[/] (the reason is on stderr).")
    console.print("[bold]What would fit[/]")
    for s in exc.suggestions:
        console.print(f" - {s}")
    _render_rejected(console, exc.rejected, "Closest tries")

