"""`planner estimate`: per-GPU memory for every method x ZeRO stage x offload, as a table, JSON or CSV."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from planner.cli import options as o
from planner.errors import PlannerError
from planner.estimate.core import estimate as run_estimate
from planner.estimate.result import Estimate
from planner.estimate.throughput import DEFAULT_MFU
from planner.modelled import modelled_block
from planner.models import load_model
from planner.plan.fits import estimate_with_fit
from planner.specs import Cluster, Method, ModelSpec, Offload, TrainSpec, validate_margin


def enumerate_rows(
    model: ModelSpec,
    cluster: Cluster,
    base: TrainSpec,
    methods: list[Method],
    stages: list[int],
    offloads: list[Offload],
    *,
    margin: float,
    allow_longer: bool = False,
    strict: bool = False,
    with_fit: bool = False,
) -> list[Estimate]:
    """One Estimate per valid method x stage x offload. With ``strict`` an invalid combination raises."""
    rows = []
    for method in methods:
        for stage in stages:
            for offload in offloads:
                try:
                    train = dataclasses.replace(base, method=method, zero_stage=stage, offload=offload)
                except PlannerError:
                    if strict:
                        raise
                    continue
                run = estimate_with_fit if with_fit else run_estimate
                rows.append(run(model, train, cluster, margin=margin, allow_longer=allow_longer))
    return rows


def with_throughput(est: Estimate, *, mfu: float | None, num_tokens: int, price: float) -> Estimate:
    from planner.estimate.throughput import throughput

    return dataclasses.replace(
        est, throughput=throughput(est, mfu=mfu, num_tokens=num_tokens, price_per_gpu_hour=price)
    )


def estimate(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Catalog name, path to config.json or model "
                                              "dir, or hub id (with --from: instead of the config's model).")] = None,
    from_config: o.FromOpt = None,
    accelerate_config: o.AccelerateConfigOpt = None,
    gpus: o.GpusOpt = 1,
    gpu: o.GpuOpt = "h100-sxm-80gb",
    nodes: o.NodesOpt = 1,
    host_ram: o.HostRamOpt = None,
    method: o.MethodOpt = None,
    zero: o.ZeroOpt = None,
    offload: o.OffloadOpt = None,
    precision: o.PrecisionOpt = "bf16-mixed",
    optimizer: o.OptimizerOpt = "adamw",
    lora_rank: o.LoraRankOpt = 16,
    lora_alpha: o.LoraAlphaOpt = 32,
    lora_dropout: o.LoraDropoutOpt = None,
    lora_targets: o.LoraTargetsOpt = "all-linear",
    modules_to_save: o.ModulesToSaveOpt = "",
    quant_type: o.QuantTypeOpt = "nf4",
    double_quant: o.DoubleQuantOpt = True,
    micro_batch: o.MicroBatchOpt = 1,
    seq_len: o.SeqLenOpt = None,
    grad_accum: o.GradAccumOpt = 1,
    grad_checkpointing: o.CheckpointingOpt = False,
    attn: o.AttnOpt = "sdpa",
    dropout: o.DropoutOpt = None,
    allow_longer: o.AllowLongerOpt = False,
    margin: Annotated[float, typer.Option("--margin", help="Safety margin: keep this share of GPU memory free.")] = 0.1,
    mfu: o.MfuOpt = DEFAULT_MFU,
    tokens: o.TokensOpt = "0",
    price_per_gpu_hour: Annotated[
        float, typer.Option("--price-per-gpu-hour", help="Price of one GPU-hour, for cost.")
    ] = 0.0,
    compare_gpus: Annotated[
        bool,
        typer.Option("--compare-gpus", help="For every catalog GPU and method: the cheapest plan that fits, its time "
                     "and cost (catalog USD prices unless --price-per-gpu-hour)."),
    ] = False,
    max_hours: Annotated[
        float | None,
        typer.Option("--max-hours", help="With --compare-gpus and --tokens: only plans finishing within this many "
                     "hours compete on cost (default 720)."),
    ] = None,
    trust_remote_code: o.TrustRemoteCodeOpt = False,
    as_json: o.JsonOpt = False,
    csv: Annotated[Path | None, typer.Option("--csv", help="Also write the rows to this CSV file.")] = None,
) -> None:
    """Estimate per-GPU memory (and time and cost) for training MODEL on GPUS accelerators."""
    from planner.estimate.throughput import validate_mfu, validate_price

    validate_mfu(mfu)
    validate_price(price_per_gpu_hour)
    tokens = o.parse_tokens(tokens)
    validate_margin(margin)
    if zero is not None and zero not in (0, 1, 2, 3):
        raise PlannerError(f"--zero must be 0, 1, 2 or 3, got {zero}.")
    if csv is not None and csv.is_dir():
        raise PlannerError(f"--csv {str(csv)!r} is a directory; give a file path.")
    fc, model = o.read_from(from_config, accelerate_config, model)
    if model is None:  # a usage error (exit 2), as when --model was a required option
        raise typer.BadParameter("give a catalog name, a config.json or a hub id, or --from a training config.",
                                 param_hint="'--model' / '-m'")
    typed = o.typed_flags(ctx)
    spec = load_model(model, trust_remote_code=trust_remote_code)
    if csv is not None:
        from planner.safe_write import check_output_file

        check_output_file(csv, flag="--csv", inputs=_inputs(spec))  # before any work
    if seq_len is None:
        seq_len = o.default_seq_len(spec)
        if fc is not None and "seq_len" not in fc.unset:
            seq_len = fc.train.seq_len
    base = o.build_train_spec(
        model=spec,
        method=method or "full",
        precision=precision,
        optimizer=optimizer,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        lora_targets=lora_targets,
        modules_to_save=modules_to_save,
        quant_type=quant_type,
        double_quant=double_quant,
        zero=0,
        offload="none",
        micro_batch=micro_batch,
        seq_len=seq_len,
        grad_accum=grad_accum,
        grad_checkpointing=grad_checkpointing,
        attn=attn,
        dropout=dropout,
    )
    if fc is not None:
        # the config's run, with every flag typed beside --from taken from the flags
        flags_base = dataclasses.replace(base, zero_stage=zero or 0, offload=o.parse_offload(offload or "none"))
        base = o.merge_from_config(fc.train, flags_base, typed)
        method = method or base.method.value
        zero = base.zero_stage if zero is None else zero
        offload = offload or base.offload.value
        gpus, nodes = o.from_cluster(fc, typed, gpus, nodes)
    if max_hours is not None and not compare_gpus:
        raise PlannerError("--max-hours applies to --compare-gpus only; add --compare-gpus or drop --max-hours.")
    if compare_gpus:
        from planner.plan.compare_gpus import DEFAULT_MAX_HOURS

        max_hours = DEFAULT_MAX_HOURS if max_hours is None else max_hours
        if gpu != "h100-sxm-80gb":
            raise PlannerError(
                f"--compare-gpus compares every GPU in the catalog, so --gpu {gpu!r} does not apply; drop one of them."
            )
        _compare_gpus(spec, base, method, tokens, mfu, price_per_gpu_hour, margin, as_json, max_hours,
                      o.host_ram_bytes(host_ram))
        return
    cluster = o.build_cluster(gpu, gpus, nodes, host_ram)
    methods = [o.parse_method(method)] if method else list(Method)
    stages = [zero] if zero is not None else [0, 1, 2, 3]
    offloads = [o.parse_offload(offload)] if offload else list(Offload)
    strict = method is not None and zero is not None and offload is not None
    rows = enumerate_rows(
        spec,
        cluster,
        base,
        methods,
        stages,
        offloads,
        margin=margin,
        allow_longer=allow_longer,
        strict=strict,
        with_fit=True,
    )
    if not rows:
        raise PlannerError(
            "no valid combination of the given --method, --zero and --offload (offload needs ZeRO 1-3, "
            "optimizer+params needs ZeRO 3, QLoRA supports ZeRO 0-2)."
        )
    rows = [with_throughput(r, mfu=mfu, num_tokens=tokens, price=price_per_gpu_hour) for r in rows]
    payload = {
        "model": _model_json(spec),
        "gpu": dataclasses.asdict(cluster.gpu),
        "cluster": {"num_gpus": cluster.num_gpus, "num_nodes": cluster.num_nodes,
                    "host_memory_bytes_per_node": cluster.host_memory_bytes_per_node},
        "train": _train_json(base),
        "margin": margin,
        "rows": [r.row() for r in rows],
        "modelled": modelled_block("cuda"),
    }
    if fc is not None:
        payload["from_config"] = o.from_config_json(fc)
    if csv is not None:
        _write_csv(csv, payload["rows"], _inputs(spec))
    if as_json:
        typer.echo(json_text(payload))
        return
    from planner.cli.render import render_estimate_table

    render_estimate_table(spec, cluster, base, rows)
    for note in (fc.notes if fc is not None else ()):
        typer.echo(f"note: {note}", err=True)
    for note in payload["modelled"]["notes"]:
        typer.echo(f"note: {note}", err=True)


def json_text(payload: dict) -> str:
    """Sorted, indented JSON that is valid JSON: a NaN or Infinity (a bug; inputs are bounded) is an error,
    never printed."""
    try:
        return json.dumps(payload, indent=2, sort_keys=True, allow_nan=False)
    except ValueError:
        raise PlannerError(
            "the estimate holds a number that is not finite (NaN or Infinity); check --mfu, --tokens and "
            "--price-per-gpu-hour, and report it if they are ordinary."
        ) from None


def _model_json(spec: ModelSpec) -> dict:
    from planner.estimate.count.params import count_params

    counts = count_params(spec)
    return {
        "name": spec.name,
        "model_type": spec.model_type,
        "source": spec.source,
        "num_params": counts.num_params,
        "num_layers": spec.num_layers,
        "hidden_size": spec.hidden_size,
        "num_heads": spec.num_heads,
        "num_kv_heads": spec.num_kv_heads,
        "vocab_size": spec.vocab_size,
        "tie_word_embeddings": spec.tie_word_embeddings,
    }


def _train_json(train: TrainSpec) -> dict:
    from planner.specs import train_spec_to_dict

    d = train_spec_to_dict(train)
    for key in ("method", "zero_stage", "offload"):
        d.pop(key)
    return d


def _write_csv(path: Path, rows: list[dict], inputs: dict) -> None:
    """Flatten rows with pandas and write them with planner.safe_write (atomic, never over an input)."""
    import pandas as pd

    from planner.safe_write import write_atomic

    frame = pd.json_normalize(rows, sep=".")
    if "notes" in frame:
        frame["notes"] = frame["notes"].map(lambda n: " | ".join(n))
    write_atomic(path, frame.to_csv(index=False), flag="--csv", inputs=inputs)


def _inputs(spec) -> dict:
    """Files this command read, which --csv must never replace."""
    return {"the model config": None if spec.source == "catalog" or spec.source.startswith("hub:") else spec.source}


def _compare_gpus(spec, base, method, tokens, mfu, price, margin, as_json, max_hours, host_ram) -> None:
    from planner.cli.render import render_compare_gpus
    from planner.plan.compare_gpus import compare_gpus

    rows = compare_gpus(
        spec,
        base if method is None else dataclasses.replace(base, method=o.parse_method(method)),
        num_tokens=tokens,
        mfu=mfu,
        price_per_gpu_hour=price,
        margin=margin,
        max_hours=max_hours,
        host_memory_bytes_per_node=host_ram,
    )
    if method is not None:
        rows = [r for r in rows if r.method == o.parse_method(method).value]
    if as_json:
        from planner.plan.compare_gpus import RANKING

        typer.echo(json_text({"model": _model_json(spec), "ranking": RANKING, "max_hours": max_hours,
                              "rows": [r.to_dict() for r in rows]}))  # fmt: skip
        return
    render_compare_gpus(spec, rows, num_tokens=tokens, max_hours=max_hours, precision=base.precision.value)
