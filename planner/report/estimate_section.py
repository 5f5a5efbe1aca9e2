"""The estimate part of the report: inputs, the method x ZeRO x offload bars, the table, throughput, GPUs."""

from __future__ import annotations

from collections.abc import Sequence

from planner.estimate.result import Estimate
from planner.report import figures, palette
from planner.report.engine_text import fsdp2_words, zero_column
from planner.report.html import Figure, KeyValues, Paragraph, Section, Table
from planner.units import fmt_count, gib_value

OFFLOAD_SHORT = {"none": "", "optimizer": " + opt offload", "optimizer+params": " + opt+param offload"}
# Two-line tick labels for the bars: "Z2" over what is offloaded ("opt", "opt+par").
OFFLOAD_TICK = {"none": "", "optimizer": "\nopt", "optimizer+params": "\nopt+par"}


def _offload(e: Estimate) -> str:
    if e.train.uses_fsdp2:
        return "CPU (FSDP2)" if e.train.parallelism.fsdp_config.cpu_offload else "none"
    return e.train.offload.value.replace("+", " + ")


def gib(num_bytes: float) -> float:
    return gib_value(num_bytes)


def config_label(est: Estimate) -> str:
    if est.train.uses_fsdp2:
        return f"{est.train.method.value}, {fsdp2_words(est.train.parallelism.fsdp_config.to_dict())}"
    return f"{est.train.method.value}, ZeRO {est.train.zero_stage}{OFFLOAD_SHORT[est.train.offload.value]}"


def bar_row(est: Estimate) -> figures.BarRow:
    cats = est.per_gpu.by_category()
    return figures.BarRow(
        group=est.train.method.value,
        label=zero_column(est.train).replace(" ", "\n") if est.train.uses_fsdp2 else
        f"Z{est.train.zero_stage}{OFFLOAD_TICK[est.train.offload.value]}",
        bytes_by_category=cats,
        device_bytes=est.device_bytes,
        headroom_bytes=est.headroom_bytes,
        fits=est.fits,
        peak_phase=est.peak_phase,
        cpu_bytes_per_node=est.cpu_bytes_per_node,
    )


def inputs(est: Estimate, *, all_methods: bool) -> KeyValues:
    """The inputs shared by every row (method, ZeRO and offload vary across rows unless fixed)."""
    m, t, c = est.model, est.train, est.cluster
    items = [
        ("model", f"{m.name} ({m.model_type}, source: {m.source})"),
        ("parameters", f"{fmt_count(est.num_params)} ({est.num_params:,})"),
        ("shape", f"{m.num_layers} layers, hidden {m.hidden_size}, heads {m.num_heads}/{m.num_kv_heads} (q/kv), "
                  f"vocabulary {m.vocab_size:,}"),
        ("GPUs", f"{c.num_gpus} x {c.gpu.name} ({gib(c.gpu.memory_bytes):,.1f} GiB each) on {c.num_nodes} "
                 f"node{'s' if c.num_nodes != 1 else ''}"),
        ("precision / optimizer", f"{t.precision.value} / {t.optimizer.value}"),
        ("batch", f"micro-batch {t.micro_batch} x sequence {t.seq_len} tokens, gradient accumulation {t.grad_accum}"),
        ("attention / checkpointing", f"{t.attn_impl.value} / "
         f"{'selective ' + t.selective_ac if t.selective_ac else 'on' if t.grad_checkpointing else 'off'}"),
        ("safety margin", f"{est.margin:.0%} of GPU memory kept free"),
    ]
    if all_methods or t.method.value != "full":
        items.append(("LoRA", f"rank {t.lora.rank}, alpha {t.lora.alpha}, dropout {t.lora.dropout}, "
                              f"targets {','.join(t.lora.targets)}"
                              + (f", modules to save {','.join(t.lora.modules_to_save)}" if t.lora.modules_to_save else "")))
    if all_methods or t.method.value == "qlora":
        items.append(("QLoRA", f"{t.quant.quant_type.value}, double quantization "
                               f"{'on' if t.quant.double_quant else 'off'}, block size {t.quant.blocksize}"))
    return KeyValues(items, caption="Inputs")


def rows_table(rows: Sequence[Estimate]) -> Table:
    cols = ["method", "ZeRO", "offload", "trainable", "params GiB", "grads GiB", "optimizer GiB", "activations GiB",
            "temporaries GiB", "overhead GiB", "allocated GiB", "reserved GiB", "device GiB", "peak at",
            "CPU/node GiB", "fits", "headroom GiB", "max micro-batch", "max seq"]
    out, classes = [], []
    for e in rows:
        b = e.per_gpu
        out.append([
            e.train.method.value, zero_column(e.train), _offload(e),
            fmt_count(e.num_trainable_params),
            gib(b.params_bytes), gib(b.grads_bytes), gib(b.optimizer_states_bytes), gib(b.activations_bytes),
            gib(b.temporaries_bytes), gib(b.overhead_bytes), gib(b.total_bytes), gib(e.reserved_bytes),
            gib(e.device_bytes), e.peak_phase.replace("_", " "), gib(e.cpu_bytes_per_node), "yes" if e.fits else "no",
            gib(e.headroom_bytes),
            e.fit.max_micro_batch if e.fit else "-", e.fit.max_seq_len if e.fit else "-",
        ])
        classes.append("fits" if e.fits else "nofit")
    return Table(cols, out, caption="Per-GPU memory at the peak, every configuration", row_classes=classes)


def throughput_table(rows: Sequence[Estimate]) -> Table | None:
    rows = [r for r in rows if r.throughput is not None]
    if not rows:
        return None
    cols = ["method", "ZeRO", "offload", "fits", "FLOPs/token", "tokens/s/GPU", "step s", "compute s",
            "exposed comm s", "optimizer s", "offload s", "MFU", "tokens", "time h", "cost (your currency)"]
    out, classes = [], []
    for e in rows:
        th = e.throughput
        out.append([
            e.train.method.value, zero_column(e.train), _offload(e), "yes" if e.fits else "no",
            f"{th.flops_per_token:.3g}", round(th.tokens_per_s_per_gpu, 1), round(th.step_time_s, 3),
            round(th.step.compute_s, 3) if th.step else "-",
            round(th.step.exposed_communication_s, 3) if th.step else "-",
            round(th.step.optimizer_s, 3) if th.step else "-",
            round(th.step.host_s, 3) if th.step else "-", f"{th.mfu:.0%}", fmt_count(th.num_tokens) if th.num_tokens else "-",
            round(th.total_time_s / 3600, 2) if th.num_tokens else "-",
            round(th.cost, 2) if th.price_per_gpu_hour and th.num_tokens else "-",
        ])
        classes.append("fits" if e.fits else "nofit")
    return Table(cols, out, caption="Throughput, time and cost (step = compute: matmuls, attention, elementwise + exposed "
                 "communication: what compute does not hide + the GPU optimizer step + offload: host copies and "
                 "CPU Adam; the per-phase time model, or one utilisation for all GPU work with --mfu)", row_classes=classes)


GPU_COLUMNS = (
    ("gpu", "gpu"), ("method", "method"), ("fits", "fits"), ("num_gpus", "GPUs"), ("min_gpus", "fewest GPUs that fit"),
    ("num_nodes", "nodes"), ("zero_stage", "ZeRO"), ("offload", "offload"), ("precision", "precision"),
    ("grad_checkpointing", "checkpointing"), ("device_bytes", "device GiB"), ("headroom_bytes", "headroom GiB"),
    ("tokens_per_s_per_gpu", "tokens/s per GPU"), ("tokens_per_s", "tokens/s (all GPUs)"),
    ("step_time_s", "step s"), ("step_compute_s", "compute s"), ("step_exposed_communication_s", "exposed comm s"),
    ("step_optimizer_s", "optimizer s"), ("step_offload_s", "offload s"), ("time_s", "time h"),
    ("gpu_hours", "GPU-hours"), ("price_per_gpu_hour", "price per GPU-hour"), ("price_currency", "currency"),
    ("cost", "cost"), ("note", "note"),
)


def _gpu_cell(key: str, value: object) -> object:
    if value is None:
        return "-"
    if key.endswith("_bytes") and isinstance(value, (int, float)):
        return gib(value)
    if key == "time_s" and isinstance(value, (int, float)):
        return round(value / 3600, 1)
    if key == "price_currency":
        return "your currency" if value == "user" else value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return round(value, 1) if value >= 100 else round(value, 3)
    return value


def _with_step_parts(d: dict) -> dict:
    """The chosen plan's step breakdown (``step``) as columns: compute, exposed communication, optimizer, offload."""
    step = d.get("step")
    if not step:
        return d
    return d | {
        "step_compute_s": step["matmul_s"] + step["attention_s"] + step["elementwise_s"] + step["dequant_s"],
        "step_exposed_communication_s": step["exposed_communication_s"], "step_optimizer_s": step["optimizer_s"],
        "step_offload_s": step["offload_transfer_s"] + step["cpu_optimizer_s"],
    }


def gpu_table(rows: Sequence[object]) -> Table | None:
    """The --compare-gpus rows (GpuOption objects or their dicts), cheapest first as given."""
    dicts = [_with_step_parts(r.to_dict() if hasattr(r, "to_dict") else dict(r)) for r in rows]
    if not dicts:
        return None
    cols = [(k, label) for k, label in GPU_COLUMNS if any(k in d for d in dicts)]
    out = [[_gpu_cell(k, d.get(k)) for k, _ in cols] for d in dicts]
    classes = ["fits" if d.get("fits") else "nofit" for d in dicts]
    from planner.plan.compare_gpus import RANKING

    return Table([label for _, label in cols], out, row_classes=classes, collapsible=True,
                 caption=f"GPU comparison: for each of {len({d.get('gpu') for d in dicts})} accelerators and each "
                         f"method, the cheapest plan that fits (within 720 h for the tokens given), its layout, "
                         f"precision, time and cost; {RANKING}. Prices: the catalog's indicative USD on-demand list "
                         "prices unless --price-per-gpu-hour (your currency) was given.")


def estimate_section(rows: Sequence[Estimate], *, all_methods: bool, gpu_rows: Sequence[object] = ()) -> Section:
    first = rows[0]
    cluster = first.cluster
    blocks: list[object] = [inputs(first, all_methods=all_methods)]
    title = (f"{palette.text(first.model.name)} on {cluster.num_gpus} x "
             f"{palette.text(cluster.gpu.name)}: per-GPU memory by category")
    blocks.append(Figure(
        figures.estimate_bars([bar_row(r) for r in rows], capacity_bytes=first.capacity_bytes,
                              usable_bytes=first.usable_bytes, gpu_name=cluster.gpu.name, title=title),
        name="estimate-bars",
        caption="Stacked: the tensors alive at each configuration's peak, by category. The grey tick is the "
                "device figure (what nvidia-smi would show); the number above each bar is the headroom: usable "
                "capacity (after the margin) minus the device figure, negative when it does not fit.",
    ))
    if len(rows) == 1 and first.phases:
        phases = {name: b.by_category() for name, b in first.phases.items()}
        blocks.append(Figure(
            figures.phase_bars(phases, peak_phase=first.peak_phase, title=f"{config_label(first)}: memory by phase"),
            name="estimate-phases",
        ))
    blocks.append(rows_table(rows))
    tput = throughput_table(rows)
    if tput is not None:
        blocks.append(tput)
    gpus = gpu_table(gpu_rows)
    if gpus is not None:
        blocks.append(gpus)
    notes = list(dict.fromkeys(n for r in rows for n in r.notes))
    blocks += [Paragraph(n, kind="note") for n in notes]
    return Section("Estimate", "estimate", blocks,
                   subtitle="Every valid training method x ZeRO stage x offload for the inputs below.")
