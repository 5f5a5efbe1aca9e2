"""The one typer app. Every command is registered here; PlannerError becomes one sentence and exit 1."""

from __future__ import annotations

import importlib
import os
import sys

import typer

from planner.errors import PlannerError, one_sentence

HELP = "GPU memory and resource planner for training large language models."
# Each command: (its module under planner.cli, the function). A command's module is imported only when it runs
# (or when the whole app is asked for: --help, a typo, the tests' `app`), so a cold `planner estimate` does not
# import the recommender, the profiler, the validator and the report (a fifth of its imports).
COMMANDS = {
    "estimate": ("estimate_cmd", "estimate"),
    "models": ("catalog_cmd", "models"),
    "gpus": ("catalog_cmd", "gpus"),
    "report": ("report_cmd", "report"),
    "recommend": ("recommend_cmd", "recommend"),
    "profile": ("profile_cmd", "profile"),
    "compare": ("compare_cmd", "compare"),
    "validate": ("validate_cmd", "validate"),
}


def _help() -> None:
    """GPU memory and resource planner for training large language models."""


def build_app(names=None) -> typer.Typer:
    """The typer app with the commands ``names`` (None: every one), in COMMANDS' order. The callback keeps it a
    group of commands even with one (typer would otherwise run a lone command without its name)."""
    new = typer.Typer(name="planner", help=HELP, no_args_is_help=True, add_completion=False,
                      pretty_exceptions_enable=False)
    new.callback()(_help)
    for name, (module, function) in COMMANDS.items():
        if names is None or name in names:
            mod = importlib.import_module(f"planner.cli.{module}")
            new.command(name)(getattr(mod, function))
    return new


def __getattr__(name: str):
    """``planner.cli.app.app``: the whole app, built on first use (PEP 562)."""
    if name == "app":
        globals()["app"] = whole = build_app()
        return whole
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _app_for(argv: list[str]) -> typer.Typer:
    """Only the command ``argv`` names, when its first word is one; else the whole app (help, errors)."""
    first = argv[0] if argv else None
    if first in COMMANDS:
        return build_app([first])
    return __getattr__("app")


def fail(message: str) -> None:
    """Print one sentence (at most planner.errors.MAX_MESSAGE_CHARS) to stderr and exit 1."""
    typer.echo(f"error: {one_sentence(message)}", err=True)
    raise SystemExit(1)


def main() -> None:
    try:
        _app_for(sys.argv[1:])(standalone_mode=True)
    except PlannerError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        typer.echo("error: interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - a bug still gets one sentence; PLANNER_DEBUG=1 shows the trace
        if os.environ.get("PLANNER_DEBUG"):
            raise
        fail(f"internal error ({type(exc).__name__}: {exc}); rerun with PLANNER_DEBUG=1 for details and report it.")
