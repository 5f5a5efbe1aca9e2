"""`planner report`: one self-contained HTML file from an estimate, profiles, a recommendation bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from planner.cli import options as o
from planner.errors import PlannerError
from planner.estimate.throughput import DEFAULT_MFU
from planner.specs import validate_margin

DEFAULT_ACCURACY = Path("reports") / "accuracy.csv"

ReportModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Estimate this model (catalog name, config.json path or dir, or hub id)."),
]
ProfileOpt = Annotated[
    list[Path] | None, typer.Option("--profile", help="A profile directory from 'planner profile' (repeatable).")
]
PlanOpt = Annotated[
    Path | None,
    typer.Option("--plan", help="A bundle directory from 'planner recommend --out' (its plan.json, when present, adds "
                                "runners-up and rejections), or the .json 'planner recommend --json' prints."),
]
AccuracyOpt = Annotated[
    Path | None,
    typer.Option("--accuracy", help="Add the validation table of this CSV from 'planner validate' (tiny models on "
                                    "CPU; not the accuracy of an estimate)."),
]
ValidationOpt = Annotated[
    bool,
    typer.Option("--validation", help=f"Add how planner was validated: the CPU accuracy table of tiny models, "
                                      f"{DEFAULT_ACCURACY}. Left out by default."),
]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write, e.g. reports/NAME.html.")]


def _estimates(model, *, gpu, gpus, nodes, method, zero, offload, margin, mfu, tokens, price, allow_longer,
               trust_remote_code, compare_gpus, from_config=None, typed=frozenset(), **train_flags):
    """The estimate rows exactly as `planner estimate` enumerates them, plus the GPU comparison rows."""
    import dataclasses

    from planner.cli import estimate_cmd
    from planner.models import load_model
    from planner.specs import Method, Offload

    if zero is not None and zero not in (0, 1, 2, 3):
        raise PlannerError(f"--zero must be 0, 1, 2 or 3, got {zero}.")
    spec = load_model(model, trust_remote_code=trust_remote_code)
    base = o.build_train_spec(method=method or "full", zero=0, offload="none", model=spec, **train_flags)
    if from_config is not None:  # the config's run (one row), with every typed flag on top, as `estimate --from`
        fc = from_config
        unset_seq = {"seq_len"} if "seq_len" in fc.unset else set()
        flags_base = dataclasses.replace(base, zero_stage=zero or 0, offload=o.parse_offload(offload or "none"))
        base = o.merge_from_config(fc.train, flags_base, set(typed) | unset_seq)
        method, zero, offload = method or base.method.value, base.zero_stage if zero is None else zero, (
            offload or base.offload.value)
        gpus, nodes = o.from_cluster(fc, typed, gpus, nodes)
    cluster = o.build_cluster(gpu, gpus, nodes)
    methods = [o.parse_method(method)] if method else list(Method)
    stages = [zero] if zero is not None else [0, 1, 2, 3]
    offloads = [o.parse_offload(offload)] if offload else list(Offload)
    strict = method is not None and zero is not None and offload is not None
    rows = estimate_cmd.enumerate_rows(
        spec, cluster, base, methods, stages, offloads, margin=margin, allow_longer=allow_longer, strict=strict
    )
    if not rows:
        raise PlannerError(
            "no valid combination of the given --method, --zero and --offload (offload needs ZeRO 1-3, "
            "optimizer+params needs ZeRO 3, QLoRA supports ZeRO 0-2)."
        )
    rows = [estimate_cmd.with_throughput(r, mfu=mfu, num_tokens=tokens, price=price) for r in rows]
    gpu_rows = []
    if compare_gpus:
        from planner.plan.compare_gpus import compare_gpus as run_compare

        one = dataclasses.replace(base, method=o.parse_method(method)) if method else base
        gpu_rows = run_compare(spec, one, num_tokens=tokens, mfu=mfu, price_per_gpu_hour=price, margin=margin)
        if method is not None:
            gpu_rows = [r for r in gpu_rows if r.method == o.parse_method(method).value]
    return rows, gpu_rows, method is None


def _inputs(model: str | None, plan: Path | None, accuracy: Path | None) -> dict:
    """Files the report reads, which -o must never replace."""
    config = Path(model).expanduser() if model else None
    if config is not None and config.is_dir():
        config = config / "config.json"
    return {
        "the model config": config if config is not None and config.is_file() else None,
        "the plan": plan if plan is not None and plan.is_file() else None,
        "the accuracy CSV": accuracy,
    }


def report(
    ctx: typer.Context,
    output: OutputOpt,
    model: ReportModelOpt = None,
    from_config: o.FromOpt = None,
    accelerate_config: o.AccelerateConfigOpt = None,
    profile: ProfileOpt = None,
    plan: PlanOpt = None,
    accuracy: AccuracyOpt = None,
    validation: ValidationOpt = False,
    no_accuracy: Annotated[
        bool, typer.Option("--no-accuracy", help="Leave the validation table out even with --accuracy/--validation.")
    ] = False,
    title: Annotated[str | None, typer.Option("--title", help="Title of the report (default: from the inputs).")] = None,
    max_points: Annotated[
        int, typer.Option("--max-points", help="Timeline samples drawn per rank (every peak is kept beyond these).")
    ] = 1200,
    gpus: o.GpusOpt = 1,
    gpu: o.GpuOpt = "h100-sxm-80gb",
    nodes: o.NodesOpt = 1,
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
    seq_len: o.SeqLenOpt = 2048,
    grad_accum: o.GradAccumOpt = 1,
    grad_checkpointing: o.CheckpointingOpt = False,
    attn: o.AttnOpt = "sdpa",
    dropout: o.DropoutOpt = None,
    allow_longer: o.AllowLongerOpt = False,
    margin: Annotated[float, typer.Option("--margin", help="Safety margin: keep this share of GPU memory free.")] = 0.1,
    mfu: o.MfuOpt = DEFAULT_MFU,
    tokens: o.TokensOpt = "0",
    price_per_gpu_hour: Annotated[float, typer.Option("--price-per-gpu-hour", help="Price of one GPU-hour, for cost.")] = 0.0,
    compare_gpus: Annotated[
        bool, typer.Option("--compare-gpus", help="Add the table of every catalog GPU: the cheapest plan that fits, time, cost.")
    ] = False,
    trust_remote_code: o.TrustRemoteCodeOpt = False,
) -> None:
    """Write one self-contained HTML report (opens offline) from an estimate, profiles and/or a plan."""
    profiles = list(profile or [])
    fc, model = o.read_from(from_config, accelerate_config, model)
    if model is None and not profiles and plan is None:
        raise PlannerError("nothing to report: give --model (an estimate), --profile DIR or --plan DIR.")
    if output.suffix.lower() not in (".html", ".htm") or output.is_dir():
        raise PlannerError(f"-o {str(output)!r} must be an HTML file path such as reports/NAME.html.")
    if max_points < 100:
        raise PlannerError(f"--max-points must be at least 100, got {max_points}.")
    validate_margin(margin)
    from planner.estimate.throughput import validate_mfu, validate_price

    validate_mfu(mfu)
    validate_price(price_per_gpu_hour)
    num_tokens = o.parse_tokens(tokens)
    if compare_gpus and model is None:
        raise PlannerError("--compare-gpus needs --model (it compares GPUs for the estimated model).")
    inputs = _inputs(model, plan, accuracy)
    from planner.safe_write import check_output_file

    check_output_file(output, flag="-o", inputs=inputs)  # before any work
    from planner.report import html as report_html
    from planner.report.accuracy_section import read_accuracy
    from planner.report.build import build_report
    from planner.report.plan_section import read_bundle
    from planner.report.profile_source import load_profile_view

    estimates, gpu_rows, all_methods = [], [], True
    if model is not None:
        estimates, gpu_rows, all_methods = _estimates(
            model, gpu=gpu, gpus=gpus, nodes=nodes, method=method, zero=zero, offload=offload, margin=margin,
            mfu=mfu, tokens=num_tokens, price=price_per_gpu_hour, allow_longer=allow_longer,
            trust_remote_code=trust_remote_code, compare_gpus=compare_gpus,
            precision=precision, optimizer=optimizer, lora_rank=lora_rank, lora_alpha=lora_alpha,
            lora_dropout=lora_dropout, lora_targets=lora_targets, modules_to_save=modules_to_save,
            quant_type=quant_type, double_quant=double_quant, micro_batch=micro_batch, seq_len=seq_len,
            grad_accum=grad_accum, grad_checkpointing=grad_checkpointing, attn=attn, dropout=dropout,
            from_config=fc, typed=o.typed_flags(ctx),
        )
    views = [load_profile_view(p) for p in profiles]
    bundle = read_bundle(plan) if plan is not None else None
    acc_frame, acc_source = None, ""
    if not no_accuracy:
        # The validation table (tiny models on CPU) only when asked: in an estimate's report a reader took it for
        # that estimate's accuracy (issue 14 item 17).
        acc_path = accuracy if accuracy is not None else (DEFAULT_ACCURACY if validation else None)
        if acc_path is not None:
            if validation and accuracy is None and not DEFAULT_ACCURACY.is_file():
                raise PlannerError(
                    f"--validation reads {str(DEFAULT_ACCURACY)!r}, which is not here; run from the planner "
                    "repository, or give --accuracy PATH."
                )
            acc_frame, acc_source = read_accuracy(acc_path), str(acc_path)
    doc = build_report(
        estimates=estimates, all_methods=all_methods, gpu_rows=gpu_rows, profiles=views, plan=bundle,
        accuracy=acc_frame, accuracy_source=acc_source, title=title, max_points=max_points,
    )
    size = report_html.write(doc, output, inputs=inputs)
    typer.echo(f"wrote {output} ({size / 2**20:.1f} MiB)", err=True)
