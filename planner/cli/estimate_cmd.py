"""`planner estimate`: per-GPU memory for every method x ZeRO stage x offload, as a table, JSON or CSV."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from planner.cli import deepspeed_options, gpu_precision
from planner.cli import from_options as fo
from planner.cli import options as o
from planner.cli.fsdp_options import fsdp_config, parse_engine, search_space
from planner.errors import PlannerError
from planner.estimate.core import estimate as run_estimate
from planner.estimate.result import Estimate
from planner.modelled import modelled_block
from planner.models import load_model
from planner.plan.fits import estimate_with_fit
from planner.specs import Cluster, Engine, Method, ModelSpec, Offload, TrainSpec


def table_base(flags: o.TrainingFlags, spec: ModelSpec, fc=None, *, seq_len_from_flags: bool = False):
    """(the TrainSpec every row of the table starts from; the flags with what --from fills in). Without --from
    the flags' recipe on the first row's layout (each row sets its method, stage and offload); with it the
    config's run with every typed flag on top (``from_options.from_config_run``)."""
    if flags.seq_len is None:  # the model's default, or the config's
        in_config = fc is not None and "seq_len" not in fc.unset
        flags = dataclasses.replace(flags, seq_len=fc.train.seq_len if in_config else o.default_seq_len(spec))
    if fc is not None:
        return fo.from_config_run(fc, flags, spec, seq_len_from_flags=seq_len_from_flags)
    # the rows set their own stage and offload; a fixed one (--zero, --deepspeed-config) starts the base, so that
    # the base carries a --deepspeed-config's buckets and thresholds into every row (with_layout keeps them)
    deepspeed = flags.zero is None and parse_engine(flags.engine) is Engine.DEEPSPEED  # rows set stages 1-3
    return o.build_train_spec(flags, model=spec, method=flags.method or "full", zero=1 if deepspeed else flags.zero or 0,
                              offload=flags.offload if flags.zero else "none"), flags


def estimate_rows(
    model: ModelSpec, cluster: Cluster, base: TrainSpec, flags: o.TrainingFlags, *, num_tokens: int,
    with_fit: bool = False,
) -> list[Estimate]:
    """One Estimate (with time and cost) per valid method x stage x offload the flags ask for (None: every one).
    With all three fixed an invalid combination raises; none valid raises too."""
    methods = [o.parse_method(flags.method)] if flags.method else list(Method)
    engine = parse_engine(flags.engine)
    stages = [o.parse_zero(flags.zero)] if flags.zero is not None else \
        {None: [0, 1, 2, 3], Engine.DDP: [0], Engine.DEEPSPEED: [1, 2, 3], Engine.FSDP2: []}[engine]
    offloads = [o.parse_offload(flags.offload)] if flags.offload else list(Offload)
    strict = flags.method is not None and flags.zero is not None and flags.offload is not None
    run = estimate_with_fit if with_fit else run_estimate
    rows = []
    for method in methods:
        for stage in stages:
            for offload in offloads:
                try:
                    train = o.with_layout(base, method, stage, offload)
                except PlannerError:
                    if strict:
                        raise
                    continue
                rows.append(run(model, train, cluster, margin=flags.margin, allow_longer=flags.allow_longer))
        rows += fsdp2_rows(model, cluster, base, flags, method, run)
    if not rows:
        raise PlannerError(
            "no valid combination of the given --method, --zero and --offload (offload needs ZeRO 1-3, "
            "optimizer+params needs ZeRO 3, QLoRA does not offload parameters, FSDP2 full, LoRA and QLoRA)."
        )
    return [with_throughput(r, mfu=flags.mfu, num_tokens=num_tokens, price=flags.price_per_gpu_hour) for r in rows]


def fsdp2_rows(model: ModelSpec, cluster: Cluster, base: TrainSpec, flags: o.TrainingFlags, method: Method,
               run) -> list[Estimate]:
    """FSDP2's rows of one method beside DeepSpeed's (none when --zero, --offload or another --engine is fixed):
    reshard after forward on, and off where it changes the estimate (both fixed by --reshard/--no-reshard)."""
    engine = parse_engine(flags.engine)
    if engine not in (None, Engine.FSDP2) or (engine is None and (flags.zero is not None or
                                                                  flags.offload not in (None, "none"))):
        return []
    # a --from config's FSDP2 keeps its settings, with FSDP2 flags typed beside it on top (from_options)
    from_config = base.uses_fsdp2 and "engine" not in flags.typed
    reshards = [flags.reshard] if flags.reshard is not None else \
        [base.parallelism.fsdp_config.reshard_after_forward] if from_config else [True, False]
    out = []
    for reshard in reshards:
        try:
            cfg = dataclasses.replace(base.parallelism.fsdp_config, reshard_after_forward=reshard) if from_config \
                else fsdp_config(flags, base.precision, reshard=reshard)
            train = o.with_layout(base, method, 0, Offload.NONE, cfg)
        except PlannerError:
            if engine is Engine.FSDP2 and flags.method is not None:
                raise
            continue
        est = run(model, train, cluster, margin=flags.margin, allow_longer=flags.allow_longer)
        if out and flags.reshard is None and (est.device_bytes, est.per_gpu) == (out[0].device_bytes,
                                                                                 out[0].per_gpu):
            continue  # no reshard changes nothing here (one rank): one row says it
        out.append(est)
    return out


def with_throughput(est: Estimate, *, mfu: float | None, num_tokens: int, price: float) -> Estimate:
    from planner.estimate.throughput import throughput

    return dataclasses.replace(
        est, throughput=throughput(est, mfu=mfu, num_tokens=num_tokens, price_per_gpu_hour=price)
    )


@o.training_options()
def estimate(
    *,
    model: o.ModelOpt = None,
    from_config: fo.FromOpt = None,
    accelerate_config: fo.AccelerateConfigOpt = None,
    flags: o.TrainingFlags,
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
    num_tokens = o.check_flags(flags)
    if csv is not None and csv.is_dir():
        raise PlannerError(f"--csv {str(csv)!r} is a directory; give a file path.")
    fc, model = fo.read_from(from_config, accelerate_config, model)
    if model is None:  # a usage error (exit 2), as when --model was a required option
        raise typer.BadParameter("give a catalog name, a config.json or a hub id, or --from a training config.",
                                 param_hint="'--model' / '-m'")
    spec = load_model(model, trust_remote_code=trust_remote_code)
    if csv is not None:
        from planner.safe_write import check_output_file

        check_output_file(csv, flag="--csv", inputs=_inputs(spec))  # before any work
    precision_note = None
    if not compare_gpus:  # --compare-gpus switches precision per GPU itself
        flags, precision_note = gpu_precision.for_gpu(flags, typed="precision" in flags.typed or fc is not None)
    base, flags = table_base(flags, spec, fc)
    if max_hours is not None and not compare_gpus:
        raise PlannerError("--max-hours applies to --compare-gpus only; add --compare-gpus or drop --max-hours.")
    if compare_gpus:
        from planner.plan.compare_gpus import DEFAULT_MAX_HOURS

        max_hours = DEFAULT_MAX_HOURS if max_hours is None else max_hours
        if flags.hsdp != 1:
            raise PlannerError("--compare-gpus searches GPU counts from 1 up, which HSDP's replicate degree must "
                               "divide; drop --hsdp (or --compare-gpus).")
        if flags.gpu != o.TrainingFlags.gpu:
            raise PlannerError(f"--compare-gpus compares every GPU in the catalog, so --gpu {flags.gpu!r} does not "
                               "apply; drop one of them.")
        _compare_gpus(spec, base, flags, num_tokens, as_json, max_hours)
        return
    cluster = o.build_cluster(flags)
    rows = estimate_rows(spec, cluster, base, flags, num_tokens=num_tokens, with_fit=True)
    payload = {
        "model": _model_json(spec),
        "gpu": dataclasses.asdict(cluster.gpu),
        "cluster": {"num_gpus": cluster.num_gpus, "num_nodes": cluster.num_nodes,
                    "host_memory_bytes_per_node": cluster.host_memory_bytes_per_node},
        "train": _train_json(base),
        "margin": flags.margin,
        "rows": [r.row() for r in rows],
        "modelled": modelled_block("cuda"),
    }
    if precision_note:
        payload["modelled"]["notes"] = [*payload["modelled"]["notes"], precision_note]
    if fc is not None:
        payload["from_config"] = fo.from_config_json(fc)
    if flags.deepspeed_config is not None:
        payload["deepspeed_config"] = deepspeed_options.json_block(flags)
    if csv is not None:
        _write_csv(csv, payload["rows"], _inputs(spec))
    if as_json:
        typer.echo(json_text(payload))
        return
    from planner.cli.render import render_estimate_table

    render_estimate_table(spec, cluster, base, rows)
    for note in (fc.notes if fc is not None else ()):
        typer.echo(f"note: {note}", err=True)
    deepspeed_options.echo_notes(flags)
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


def gpu_rows(spec: ModelSpec, base: TrainSpec, flags: o.TrainingFlags, num_tokens: int, **limits) -> list:
    """--compare-gpus: for every catalog GPU and method (--method's only, when given) the cheapest plan that fits;
    ``limits``: compare_gpus' max_hours and host RAM."""
    from planner.plan.compare_gpus import compare_gpus

    method = o.parse_method(flags.method) if flags.method is not None else None
    engines = {}
    if base.uses_fsdp2 or parse_engine(flags.engine) is Engine.FSDP2:
        # FSDP2's layouts as recommend searches them (resharding on and off unless --reshard/--no-reshard fixes
        # it), in place of DDP's and DeepSpeed's; without --engine fsdp2 the search is DDP and DeepSpeed only
        engines = {"fsdp_configs": search_space(dataclasses.replace(flags, engine="fsdp2"),
                                                base.precision)["fsdp_configs"], "zero_layouts": False}
    rows = compare_gpus(spec, base if method is None else dataclasses.replace(base, method=method),
                        num_tokens=num_tokens, mfu=flags.mfu, price_per_gpu_hour=flags.price_per_gpu_hour,
                        margin=flags.margin, **engines, **limits)
    return rows if method is None else [r for r in rows if r.method == method.value]


def _compare_gpus(spec, base, flags, num_tokens, as_json, max_hours) -> None:
    from planner.cli.render import render_compare_gpus

    rows = gpu_rows(spec, base, flags, num_tokens, max_hours=max_hours,
                    host_memory_bytes_per_node=o.host_ram_bytes(flags.host_ram))
    if as_json:
        from planner.plan.compare_gpus import RANKING

        typer.echo(json_text({"model": _model_json(spec), "ranking": RANKING, "max_hours": max_hours,
                              "rows": [r.to_dict() for r in rows]}))  # fmt: skip
        return
    render_compare_gpus(spec, rows, num_tokens=num_tokens, max_hours=max_hours, precision=base.precision.value)
