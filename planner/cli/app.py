"""The one typer app. Every command is registered here; PlannerError becomes one sentence and exit 1."""

from __future__ import annotations

import os
import sys

import typer

from planner.errors import PlannerError, one_sentence

app = typer.Typer(
    name="planner",
    help="GPU memory and resource planner for training large language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from planner.cli import catalog_cmd, estimate_cmd

    app.command("estimate")(estimate_cmd.estimate)
    app.command("models")(catalog_cmd.models)
    app.command("gpus")(catalog_cmd.gpus)
    app.command("report")(__import__("planner.cli.report_cmd", fromlist=["report"]).report)
    app.command("recommend")(__import__("planner.cli.recommend_cmd", fromlist=["recommend"]).recommend)
    app.command("profile")(__import__("planner.cli.profile_cmd", fromlist=["profile"]).profile)
    app.command("compare")(__import__("planner.cli.compare_cmd", fromlist=["compare"]).compare)
    app.command("validate")(__import__("planner.cli.validate_cmd", fromlist=["validate"]).validate)


_register()


def fail(message: str) -> None:
    """Print one sentence (at most planner.errors.MAX_MESSAGE_CHARS) to stderr and exit 1."""
    typer.echo(f"error: {one_sentence(message)}", err=True)
    raise SystemExit(1)


def main() -> None:
    try:
        app(standalone_mode=True)
    except PlannerError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        typer.echo("error: interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - a bug still gets one sentence; PLANNER_DEBUG=1 shows the trace
        if os.environ.get("PLANNER_DEBUG"):
            raise
        fail(f"internal error ({type(exc).__name__}: {exc}); rerun with PLANNER_DEBUG=1 for details and report it.")
