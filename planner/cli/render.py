"""Rich console rendering of estimates (tables to stdout). Numbers come in computed; this only formats."""

from __future__ import annotations

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from planner.cli.engine_cells import _OFFLOAD_SHORT, FSDP2_LEGEND, offload_cell, zero_cell
from planner.estimate.result import Estimate
from planner.specs import Cluster, ModelSpec, TrainSpec
from planner.units import GIB, MIB, fmt_count, fmt_gib

PAPER_NOTE = (
    "Model states follow the ZeRO paper (16 bytes per trainable parameter with mixed-precision AdamW: "
    "stage 1 4P+12P/N, stage 2 2P+14P/N, stage 3 16P/N). DeepSpeed adds to stages 1-2 a gradient buffer of "
    "the whole tensors across each rank's partition edges (the rank shown is the highest), a flat copy of the "
    "partition and, for 16-bit training, its fp32 copy at the optimizer step; to stage 3 the gathered largest "
    "module (+4 bytes x its parameters) and per-sub-group fp32 gradients. planner counts the copies as "
    "temporaries."
)


_PHASE_SHORT = {"optimizer_step": "optim step"}
# Layouts of the estimate table, widest first; the widest that fits the terminal is printed. Each column:
# (key, header, right-aligned). Headers may take two lines.
_ESTIMATE_COLUMNS = {
    "method": ("method", False), "zero": ("ZeRO", True), "offload": ("offload", False),
    "trainable": ("trainable\nparams", True), "params": ("params", True), "grads": ("grads", True),
    "optim": ("optimizer\nstates", True), "states": ("model\nstates", True), "activ": ("activ-\nations", True),
    "temp": ("tempo-\nraries", True), "overhead": ("over-\nhead", True), "alloc": ("allocated\npeak", True),
    "device": ("device\npeak", True), "phase": ("peak in", False), "cpu": ("host RAM\nper node", True),
    "max_mb": ("max micro-\nbatch", True), "max_seq": ("max\nsequence", True), "fits": ("fits", False),
    "headroom": ("head-\nroom", True),
}
_ESTIMATE_LAYOUTS = (
    ("method", "zero", "offload", "trainable", "params", "grads", "optim", "activ", "temp", "overhead", "alloc",
     "device", "phase", "cpu", "max_mb", "max_seq", "fits", "headroom"),
    ("method", "zero", "offload", "params", "grads", "optim", "activ", "temp", "device", "max_mb", "max_seq", "fits",
     "headroom"),
    ("method", "zero", "offload", "states", "activ", "temp", "device", "fits", "headroom"),
)
_TABLE_STYLE = dict(header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)


def _gib(n: int) -> str:
    return fmt_gib(n, 2, unit=False)


def fmt_bytes(num_bytes: int) -> str:
    """Measured or compared bytes: MiB below 1 GiB, GiB above (small test models would read as 0.00 GiB)."""
    return fmt_gib(num_bytes, 3) if abs(num_bytes) >= GIB else fmt_mib(num_bytes, 3)


def fmt_mib(num_bytes: int, digits: int = 1) -> str:
    return f"{num_bytes / MIB:.{digits}f} MiB"


def terminal_width() -> int:
    """The terminal's width (COLUMNS when set, as rich reads it; 80 when output is not a terminal)."""
    return Console().width


def _console() -> Console:
    return Console(soft_wrap=False, width=terminal_width())


def _fits(table: Table, console: Console) -> bool:
    """Whether ``table`` prints within the console's width without squeezing a column."""
    return natural_width(table) <= console.width


def natural_width(table: Table) -> int:
    """The width ``table`` prints at on an unlimited console, what ``Console(width=...).measure(table).maximum``
    gives, computed from its cells: a table of ``_TABLE_STYLE`` (collapsed padding, no edge padding) is each
    column's widest line plus two characters per column (a space of padding and a border or separator). rich's
    measure renders every cell of every candidate layout, a sixth of a cold ``planner estimate``; this reads each
    cell's markup once. tests/test_render_width.py checks it against rich's own measure."""
    if not (table.box is _TABLE_STYLE["box"] and table.collapse_padding and not table.pad_edge
            and table.show_edge and table.padding == (0, 1, 0, 1)):
        return Console(width=100_000).measure(table).maximum
    total = 0
    for column in table.columns:
        lines = str(column.header).split("\n")
        for cell in column.cells:
            if not isinstance(cell, str):
                return Console(width=100_000).measure(table).maximum
            lines += cell.split("\n")
        total += max(_cell_width(line) for line in lines) + 2
    return total


def _cell_width(markup: str) -> int:
    return Text.from_markup(markup).cell_len if "[" in markup else cell_len(markup)


def _row_label(est: Estimate) -> str:
    if est.train.uses_fsdp2:
        return f"{est.train.method.value} {est.train.parallelism.label}"
    offload = est.train.offload.value
    return f"{est.train.method.value} ZeRO-{est.train.zero_stage}" + ("" if offload == "none" else f" + {offload} offload")


def notes_by_row(rows: list[Estimate]) -> list[str]:
    """Every row's notes once each, in first-seen order; a note that holds for some rows only names them."""
    seen: dict[str, list[str]] = {}
    for est in rows:
        for note in est.notes:
            seen.setdefault(note, []).append(_row_label(est))
    out = []
    for note, labels in seen.items():
        if len(labels) == len(rows):
            out.append(note)
        elif len(labels) <= 3:
            out.append(f"{note} ({'; '.join(labels)})")
        else:
            out.append(f"{note} ({len(labels)} of {len(rows)} rows; --json gives each row's notes)")
    return out


def print_notes(console: Console, notes: list[str]) -> None:
    if notes:
        console.print("Notes:")
        for note in notes:
            console.print(f"- {note}", highlight=False)


def _estimate_cells(est: Estimate) -> dict[str, str]:
    b = est.per_gpu
    fit = est.fit
    verdict = "[green]yes[/]" if est.fits else ("[red]no (host)[/]" if est.gpu_fits else "[red]no[/]")
    return {
        "method": est.train.method.value,
        "zero": zero_cell(est.train),
        "offload": offload_cell(est.train),
        "trainable": fmt_count(est.num_trainable_params),
        "params": _gib(b.params_bytes),
        "grads": _gib(b.grads_bytes),
        "optim": _gib(b.optimizer_states_bytes),
        "states": _gib(b.model_states_bytes),
        "activ": _gib(b.activations_bytes),
        "temp": _gib(b.temporaries_bytes),
        "overhead": _gib(b.overhead_bytes),
        "alloc": _gib(b.total_bytes),
        "device": _gib(est.device_bytes),
        "phase": _PHASE_SHORT.get(est.peak_phase, est.peak_phase),
        "cpu": _gib(est.cpu_bytes_per_node),
        "max_mb": str(fit.max_micro_batch) if fit else "-",
        "max_seq": str(fit.max_seq_len) if fit else "-",
        "fits": verdict,
        "headroom": _gib(est.headroom_bytes),
    }


def _estimate_table(rows: list[Estimate], layout: tuple[str, ...]) -> Table:
    table = Table(title="Per-GPU memory (GiB) at the peak moment", **_TABLE_STYLE)
    for key in layout:
        header, right = _ESTIMATE_COLUMNS[key]
        table.add_column(header, justify="right" if right else "left", no_wrap=True)
    for est in rows:
        cells = _estimate_cells(est)
        table.add_row(*(cells[k] for k in layout))
    return table


def _pick(console: Console, tables: list[Table]) -> Table:
    return next((t for t in tables if _fits(t, console)), tables[-1])


_THROUGHPUT_COLUMNS = {  # key: (header, right-aligned, cell)
    "method": ("method", False, lambda e: e.train.method.value),
    "zero": ("ZeRO", True, lambda e: zero_cell(e.train)),
    "offload": ("offload", False, lambda e: offload_cell(e.train)),
    "tps": ("tokens/s\nper GPU", True, lambda e: f"{e.throughput.tokens_per_s_per_gpu:,.0f}"),
    "step": ("step\n(s)", True, lambda e: f"{e.throughput.step_time_s:.2f}"),
    "compute": ("compute\n(s)", True, lambda e: _step_part(e, "compute_s")),
    "comm": ("exposed\ncomm (s)", True, lambda e: _step_part(e, "exposed_communication_s")),
    "optim": ("optim-\nizer (s)", True, lambda e: _step_part(e, "optimizer_s")),
    "host": ("offload\n(s)", True, lambda e: _step_part(e, "host_s")),
    "time": ("time\n(h)", True,
             lambda e: f"{e.throughput.total_time_s / 3600:,.1f}" if e.throughput.num_tokens else "-"),
    "cost": ("cost (your\ncurrency)", True,
             lambda e: f"{e.throughput.cost:,.0f}" if e.throughput.price_per_gpu_hour and e.throughput.num_tokens
             else "-"),
}
# One table where the terminal is wide enough; else time and cost, then the step's breakdown under them.
_THROUGHPUT_WIDE = ("method", "zero", "offload", "tps", "step", "compute", "comm", "optim", "host", "time", "cost")
_THROUGHPUT_SPLIT = (("method", "zero", "offload", "tps", "step", "time", "cost"),
                     ("method", "zero", "offload", "step", "compute", "comm", "optim", "host"))


def _step_part(est: Estimate, name: str) -> str:
    step = est.throughput.step
    return f"{getattr(step, name):.2f}" if step else "-"


def _throughput_table(rows: list[Estimate], cols: tuple[str, ...], title: str) -> Table:
    t = Table(title=title, **_TABLE_STYLE)
    for key in cols:
        header, right, _ = _THROUGHPUT_COLUMNS[key]
        t.add_column(header, justify="right" if right else "left", no_wrap=True)
    for est in rows:
        t.add_row(*(_THROUGHPUT_COLUMNS[key][2](est) for key in cols))
    return t


def render_estimate_table(model: ModelSpec, cluster: Cluster, base: TrainSpec, rows: list[Estimate]) -> None:
    console = _console()
    num_params = rows[0].num_params
    lines = [
        f"[bold]{model.name}[/] ({model.model_type}, {fmt_count(num_params)} parameters) on "
        f"{cluster.num_gpus} x {cluster.gpu.name} ({fmt_gib(cluster.gpu.memory_bytes, 0)} each, "
        f"{fmt_gib(cluster.gpu.capacity_bytes, 2)} CUDA-visible; {cluster.num_nodes} node{'s' if cluster.num_nodes > 1 else ''}"
        + (f", {fmt_gib(cluster.host_memory_bytes_per_node, 0)} host RAM each)" if cluster.host_memory_bytes_per_node
           is not None else ")"),
        f"precision {base.precision.value}, optimizer {base.optimizer.value}, micro-batch {base.micro_batch}, "
        f"sequence {base.seq_len}, attention {base.attn_impl.value}, checkpointing "
        f"{'on' if base.grad_checkpointing else 'off'}, margin {rows[0].margin:.0%}",
    ]
    for line in lines:
        console.print(line)
    layouts = [_estimate_table(rows, layout) for layout in _ESTIMATE_LAYOUTS]
    table = _pick(console, layouts)
    console.print(table)
    if table is not layouts[0]:
        console.print(f"[dim]Some columns left out to fit {console.width} columns; a wider terminal (COLUMNS=200) "
                      "or --json shows them all.[/]")  # fmt: skip
    tput = [r for r in rows if r.throughput is not None and r.fits]
    if tput:
        priced = any(r.throughput.price_per_gpu_hour for r in tput)
        wide = _throughput_table(tput, _THROUGHPUT_WIDE, "Throughput, time and cost (rows that fit)")
        if _fits(wide, console):
            console.print(wide)
        else:
            console.print(_throughput_table(tput, _THROUGHPUT_SPLIT[0], "Throughput, time and cost (rows that fit)"))
            console.print(_throughput_table(tput, _THROUGHPUT_SPLIT[1], "Where each step's time goes (seconds)"))
        if not tput[0].throughput.num_tokens:
            console.print("[dim]time and cost: give --tokens (and --price-per-gpu-hour for a cost).[/]")
        elif priced:
            price = tput[0].throughput.price_per_gpu_hour
            console.print(f"[dim]cost = GPU-hours x --price-per-gpu-hour {price:g}, in the currency you gave it.[/]")
        console.print("[dim]step = compute (matmuls, attention, elementwise) + exposed communication (what compute "
                      "does not hide) + GPU optimizer step + offload (host copies, CPU Adam); --json has every "
                      "part. --mfu X replaces the per-phase time model with one utilisation for all GPU work.[/]")
    host_reasons = [f"{_row_label(r)} does not fit: {r.fit_reason}." for r in rows if r.host_fits is False]
    print_notes(console, host_reasons + notes_by_row(rows))
    if any(r.train.uses_fsdp2 for r in rows):
        console.print(f"[dim]{FSDP2_LEGEND}[/]")
    console.print(f"[dim]{PAPER_NOTE}[/]")
    console.print(
        "[dim]allocated = tensors at the peak moment; device = what nvidia-smi would show (allocator "
        "reserve + CUDA context); fits compares device with the CUDA-visible capacity minus the margin and, with "
        "--host-ram, host RAM per node (offload) with it; max micro-batch and max sequence are the largest that "
        "fit with the margin. 1 GiB = 2^30 bytes.[/]"
    )


_COMPARE_COLUMNS = (
    ("rank", "#", True), ("gpu", "gpu", False), ("method", "method", False), ("gpus", "GPUs", True),
    ("zero", "ZeRO", True), ("offload", "offload", False), ("precision", "precision", False),
    ("ckpt", "check-\npointing", False), ("tps", "tokens/s\nper GPU", True), ("step", "step\n(s)", True),
    ("comm", "exposed\ncomm (s)", True), ("host", "offload\n(s)", True), ("time", "time\n(h)", True),
    ("price", "{cur}\nper GPU-h", True), ("cost", "cost\n({cur})", True),
)


def _compare_currency(rows: list[dict]) -> str:
    currencies = {d.get("price_currency") for d in rows if d.get("price_currency")}
    return "your currency" if currencies == {"user"} else "USD"


def _compare_cells(i: int, d: dict, tokens: bool) -> dict[str, str]:
    fits = d.get("fits")
    price = d.get("price_per_gpu_hour")
    step = d.get("step")
    if tokens:
        cost = f"{d['cost']:,.0f}" if fits and price else "-"
    else:
        per_m = d.get("cost_per_million_tokens")
        cost = f"{per_m:,.2f}" if fits and per_m else "-"
    return {
        "rank": str(i),
        "gpu": d["gpu"],
        "method": d["method"],
        "gpus": str(d.get("num_gpus")) if fits else "-",
        "zero": ("-" if not fits else str(d.get("zero_stage")) if not d.get("fsdp") else
                 "FSDP2" + ("" if d["fsdp"]["reshard_after_forward"] else "-nr")),
        "offload": ("-" if not fits else _OFFLOAD_SHORT.get(d.get("offload"), d.get("offload")) if not d.get("fsdp")
                    else "cpu" if d["fsdp"]["cpu_offload"] else "none"),
        "precision": d.get("precision", ""),
        "ckpt": ("on" if d.get("grad_checkpointing") else "off") if fits else "-",
        "tps": f"{d.get('tokens_per_s_per_gpu', 0):,.0f}" if fits else "-",
        "step": f"{d['step_time_s']:.2f}" if fits and d.get("step_time_s") is not None else "-",
        "comm": f"{step['exposed_communication_s']:.2f}" if fits and step else "-",
        "host": f"{step['offload_transfer_s'] + step['cpu_optimizer_s']:.2f}" if fits and step else "-",
        "time": (f"{d['time_s'] / 3600:,.1f}" if d.get("time_s") else "-") if fits else "-",
        "price": f"{price:.2f}" if price else "-",
        "cost": cost if fits else "does not fit",
    }


def _step_words(step_time_s: float, step: dict) -> str:
    """One step's time in words: compute, exposed communication, the optimizer step, offload."""
    compute = step["matmul_s"] + step["attention_s"] + step["elementwise_s"] + step["dequant_s"]
    return (f"step {step_time_s:.2f} s = compute {compute:.2f} + exposed communication "
            f"{step['exposed_communication_s']:.2f} + optimizer {step['optimizer_s']:.2f} + offload "
            f"{step['offload_transfer_s'] + step['cpu_optimizer_s']:.2f}")


def _stacked_compare(console: Console, dicts: list[dict], tokens: bool, cur: str) -> None:
    """One entry of two lines per row, for terminals too narrow for the table."""
    for i, d in enumerate(dicts, 1):
        c = _compare_cells(i, d, tokens)
        if not d.get("fits"):
            console.print(f"{i:>3}. [bold]{d['gpu']}[/] {d['method']}: does not fit ({d.get('note', '')})",
                          highlight=False)  # fmt: skip
            continue
        offload = "no offload" if d.get("offload") == "none" else f"{d.get('offload')} offload"
        gpus = f"{c['gpus']} GPU" + ("" if c["gpus"] == "1" else "s")
        console.print(f"{i:>3}. [bold]{d['gpu']}[/] {d['method']} on {gpus}: {'' if d.get('fsdp') else 'ZeRO-'}{c['zero']}, {offload}, "
                      f"{c['precision']}, checkpointing {c['ckpt']}", highlight=False)  # fmt: skip
        money = ""
        if c["price"] != "-":
            what = "cost" if tokens else "cost per 1M tokens"
            money = f", {what} {c['cost']} ({cur}) at {c['price']} per GPU-hour"
        time = f", {c['time']} h" if tokens else ""
        console.print(f"     {c['tps']} tokens/s per GPU{time}{money}", highlight=False)
        if d.get("step"):
            console.print(f"     {_step_words(d['step_time_s'], d['step'])}", highlight=False)


def _precision_notes(dicts: list[dict], asked: str | None) -> tuple[list[str], set[str]]:
    """One note naming every GPU that trains in another precision than asked, and the row notes it replaces."""
    switched = {d["gpu"]: d.get("precision") for d in dicts if asked and d.get("precision") not in (None, asked)}
    if not switched:
        return [], set()
    by_precision: dict[str, list[str]] = {}
    for gpu, precision in switched.items():
        by_precision.setdefault(precision, []).append(gpu)
    notes = [f"{', '.join(gpus)} have no bf16: they train in {precision} instead of {asked} (the precision column)."
             for precision, gpus in by_precision.items()]
    return notes, {f"{gpu} has no bf16: {precision} instead" for gpu, precision in switched.items()}


def render_compare_gpus(model: ModelSpec, rows: list, *, num_tokens: int = 0, max_hours: float = 0.0,
                        precision: str | None = None) -> None:
    from planner.plan.compare_gpus import RANKING

    console = _console()
    dicts = [r.to_dict() if hasattr(r, "to_dict") else dict(r) for r in rows]
    tokens = bool(num_tokens)
    cur = _compare_currency(dicts)
    title = f"{model.name}: the cheapest plan per accelerator and method" + (
        f", {fmt_count(num_tokens)} tokens" if tokens else "")
    table = Table(title=title, **_TABLE_STYLE)
    for key, header, right in _COMPARE_COLUMNS:
        if key == "time" and not tokens:
            continue
        if key == "cost" and not tokens:
            header = "{cur} per\n1M tokens"
        table.add_column(header.format(cur=cur), justify="right" if right else "left", no_wrap=True)
    for i, d in enumerate(dicts, 1):
        cells = _compare_cells(i, d, tokens)
        table.add_row(*(cells[k] for k, _, _ in _COMPARE_COLUMNS if tokens or k != "time"))
    if _fits(table, console):
        console.print(table)
    else:
        console.print(f"[bold]{title}[/]", highlight=False)
        _stacked_compare(console, dicts, tokens, cur)
    notes = [f"Rows are {RANKING}.", "step = compute + exposed communication + GPU optimizer step + offload (host "
             "copies, CPU Adam), per optimizer step on one GPU; --json gives every part (step)."]
    if cur == "USD":
        notes.append("Prices are the catalog's indicative on-demand list prices in USD per GPU-hour (provider and "
                     "date: planner gpus --json, price_source); GPUs without one show '-'. --price-per-gpu-hour "
                     "prices every GPU alike, in your currency.")  # fmt: skip
    else:
        notes.append("Cost is GPU-hours x --price-per-gpu-hour, the same price for every GPU, in your currency.")
    if tokens and max_hours:
        notes.append(f"Only plans that finish within {max_hours:,.0f} h (--max-hours) compete on cost; within 2% "
                     "of the cheapest, the fewest GPUs.")  # fmt: skip
    elif not tokens:
        notes.append("Without --tokens the cheapest per token wins whatever its time; give --tokens to keep only "
                     "plans that finish within --max-hours.")  # fmt: skip
    precision_notes, replaced = _precision_notes(dicts, precision)
    notes += precision_notes
    for d in dicts:
        for part in (d.get("note") or "").split("; "):
            if part and part not in replaced and d.get("fits") and part not in notes:
                notes.append(part)
    print_notes(console, notes)
