"""Rich console rendering of estimates (tables to stdout). Numbers come in computed; this only formats."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from planner.estimate.result import Estimate
from planner.specs import Cluster, ModelSpec, TrainSpec
from planner.units import fmt_count, fmt_gib

PAPER_NOTE = (
    "Model states follow the ZeRO paper (16 bytes per trainable parameter with mixed-precision AdamW: "
    "stage 1 4P+12P/N, stage 2 2P+14P/N, stage 3 16P/N). DeepSpeed adds to stages 1-2 a gradient buffer of "
    "the whole tensors across each rank's partition edges (the rank shown is the highest), a flat copy of the "
    "partition and, for 16-bit training, its fp32 copy at the optimizer step; to stage 3 the gathered largest "
    "module (+4 bytes x its parameters) and per-sub-group fp32 gradients. planner counts the copies as "
    "temporaries."
)


_PHASE_SHORT = {"optimizer_step": "optim step"}


def _gib(n: int) -> str:
    return f"{n / 2**30:,.2f}"


def render_estimate_table(model: ModelSpec, cluster: Cluster, base: TrainSpec, rows: list[Estimate]) -> None:
    console = Console(soft_wrap=False, width=max(Console().width, 172))
    num_params = rows[0].num_params
    lines = [
        f"[bold]{model.name}[/] ({model.model_type}, {fmt_count(num_params)} parameters) on "
        f"{cluster.num_gpus} x {cluster.gpu.name} ({fmt_gib(cluster.gpu.memory_bytes, 0)} each, "
        f"{cluster.num_nodes} node{'s' if cluster.num_nodes > 1 else ''})",
        f"precision {base.precision.value}, optimizer {base.optimizer.value}, micro-batch {base.micro_batch}, "
        f"sequence {base.seq_len}, attention {base.attn_impl.value}, checkpointing "
        f"{'on' if base.grad_checkpointing else 'off'}, margin {rows[0].margin:.0%}",
    ]
    for line in lines:
        console.print(line)
    table = Table(title="Per-GPU memory (GiB) at the peak moment", show_lines=False, header_style="bold")
    for col in (
        "method",
        "ZeRO",
        "offload",
        "trainable",
        "params",
        "grads",
        "optim",
        "activ",
        "temp",
        "alloc",
        "device",
        "peak at",
        "CPU/node",
        "max mb/seq",
        "fits (headroom)",
    ):
        justify = "left" if col in ("method", "offload", "peak at", "fits (headroom)") else "right"
        table.add_column(col, justify=justify, no_wrap=True)
    for est in rows:
        b = est.per_gpu
        fit = est.fit
        verdict = "[green]yes[/]" if est.fits else "[red]no[/]"
        table.add_row(
            est.train.method.value,
            str(est.train.zero_stage),
            est.train.offload.value,
            fmt_count(est.num_trainable_params),
            _gib(b.params_bytes),
            _gib(b.grads_bytes),
            _gib(b.optimizer_states_bytes),
            _gib(b.activations_bytes),
            _gib(b.temporaries_bytes),
            _gib(b.total_bytes),
            _gib(est.device_bytes),
            _PHASE_SHORT.get(est.peak_phase, est.peak_phase),
            _gib(est.cpu_bytes_per_node),
            f"{fit.max_micro_batch}/{fit.max_seq_len}" if fit else "-",
            f"{verdict} ({_gib(est.headroom_bytes)})",
        )
    console.print(table)
    tput = [r for r in rows if r.throughput is not None and r.throughput.num_tokens]
    if tput:
        t = Table(title="Throughput, time and cost (rows that fit)", header_style="bold")
        for col in ("method", "ZeRO", "offload", "tokens/s/GPU", "step s", "time h", "cost"):
            t.add_column(col, justify="right" if col not in ("method", "offload") else "left")
        for est in tput:
            if not est.fits:
                continue
            th = est.throughput
            t.add_row(
                est.train.method.value,
                str(est.train.zero_stage),
                est.train.offload.value,
                f"{th.tokens_per_s_per_gpu:,.0f}",
                f"{th.step_time_s:.2f}",
                f"{th.total_time_s / 3600:,.1f}",
                f"{th.cost:,.0f}" if th.price_per_gpu_hour else "-",
            )
        console.print(t)
    console.print(f"[dim]{PAPER_NOTE}[/]")
    console.print(
        "[dim]allocated = tensors at the peak moment; device = what nvidia-smi would show (allocator "
        "reserve + CUDA context); fits compares device with capacity minus the margin. 1 GiB = 2^30 bytes.[/]"
    )


def render_compare_gpus(model: ModelSpec, rows: list) -> None:
    console = Console(width=max(Console().width, 140))
    table = Table(
        title=f"{model.name}: fewest GPUs that fit, by accelerator (sorted by cost)", header_style="bold"
    )
    for col in ("gpu", "method", "GPUs", "ZeRO", "offload", "tokens/s/GPU", "time h", "cost"):
        table.add_column(col)
    for r in rows:
        d = r.to_dict()
        fits = d.get("fits")
        table.add_row(
            d["gpu"],
            d["method"],
            str(d.get("num_gpus") or "-") if fits else "-",
            str(d.get("zero_stage")) if fits else "-",
            str(d.get("offload")) if fits else "-",
            f"{d.get('tokens_per_s_per_gpu', 0):,.0f}" if fits else "-",
            f"{d['time_s'] / 3600:,.1f}" if fits and d.get("time_s") else "-",
            (f"{d['cost']:,.0f}" if d.get("cost") else "-") if fits else "does not fit",
        )
    console.print(table)
