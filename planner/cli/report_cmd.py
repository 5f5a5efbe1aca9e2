"""`planner report`: one self-contained HTML file from an estimate, profiles, a recommendation bundle."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from planner.cli import deepspeed_options
from planner.cli import from_options as fo
from planner.cli import options as o
from planner.cli.render import fmt_mib
from planner.errors import PlannerError

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


def _estimates(model: str, flags: o.TrainingFlags, num_tokens: int, *, trust_remote_code: bool, compare_gpus: bool,
               from_config=None):
    """The estimate rows exactly as `planner estimate` enumerates them, plus the GPU comparison rows."""
    from planner.cli import estimate_cmd, gpu_precision
    from planner.models import load_model

    spec = load_model(model, trust_remote_code=trust_remote_code)
    note = None
    if not compare_gpus:  # the comparison switches precision per GPU itself
        flags, note = gpu_precision.for_gpu(flags, typed="precision" in flags.typed or from_config is not None)
    base, flags = estimate_cmd.table_base(flags, spec, from_config, seq_len_from_flags=True)
    rows = estimate_cmd.estimate_rows(spec, o.build_cluster(flags), base, flags, num_tokens=num_tokens)
    if note:
        rows = [dataclasses.replace(r, notes=(*r.notes, note)) for r in rows]
    gpu_rows = estimate_cmd.gpu_rows(spec, base, flags, num_tokens) if compare_gpus else []
    return rows, gpu_rows, flags.method is None


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


@o.training_options(omit=("host_ram",))
def report(
    *,
    output: OutputOpt,
    model: ReportModelOpt = None,
    from_config: fo.FromOpt = None,
    accelerate_config: fo.AccelerateConfigOpt = None,
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
    flags: o.TrainingFlags,
    compare_gpus: Annotated[
        bool, typer.Option("--compare-gpus", help="Add the table of every catalog GPU: the cheapest plan that fits, time, cost.")
    ] = False,
    trust_remote_code: o.TrustRemoteCodeOpt = False,
) -> None:
    """Write one self-contained HTML report (opens offline) from an estimate, profiles and/or a plan."""
    profiles = list(profile or [])
    fc, model = fo.read_from(from_config, accelerate_config, model)
    if model is None and not profiles and plan is None:
        raise PlannerError("nothing to report: give --model (an estimate), --profile DIR or --plan DIR.")
    if output.suffix.lower() not in (".html", ".htm") or output.is_dir():
        raise PlannerError(f"-o {str(output)!r} must be an HTML file path such as reports/NAME.html.")
    if max_points < 100:
        raise PlannerError(f"--max-points must be at least 100, got {max_points}.")
    num_tokens = o.check_flags(flags)
    deepspeed_options.echo_notes(flags)
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
        estimates, gpu_rows, all_methods = _estimates(model, flags, num_tokens, trust_remote_code=trust_remote_code,
                                                      compare_gpus=compare_gpus, from_config=fc)
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
    typer.echo(f"wrote {output} ({fmt_mib(size)})", err=True)
