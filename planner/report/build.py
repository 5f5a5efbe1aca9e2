"""Assemble a Report from what the user asked for: estimate rows, profiles, a plan bundle, accuracy."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata

import pandas as pd

from planner.estimate.result import Estimate
from planner.report.accuracy_section import accuracy_section
from planner.report.estimate_section import estimate_section
from planner.report.html import KeyValues, Report, Section
from planner.report.plan_section import PlanView, plan_section
from planner.report.profile_section import ProfileView, profile_section
from planner.report.timeline import DEFAULT_MAX_POINTS

LIBRARIES = ("planner", "plotly", "pandas", "numpy", "torch", "transformers", "accelerate", "peft", "deepspeed",
             "bitsandbytes")


def library_versions() -> dict[str, str]:
    """Installed versions, read from package metadata (nothing is imported, so no torch here)."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def generated_at() -> str:
    """UTC time of generation; SOURCE_DATE_EPOCH (reproducible builds) pins it for golden files."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    when = datetime.fromtimestamp(int(epoch), tz=timezone.utc) if epoch.isdigit() else datetime.now(timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M UTC")


def default_title(estimates: Sequence[Estimate], profiles: Sequence[ProfileView], plan: PlanView | None) -> str:
    if estimates:
        e = estimates[0]
        return f"Memory plan: {e.model.name} on {e.cluster.num_gpus} x {e.cluster.gpu.name}"
    if profiles:
        return f"Memory profile: {', '.join(p.name for p in profiles)}"
    if plan is not None:
        chosen = (plan.plan or {}).get("plan") or {}
        if chosen.get("model"):
            return f"Recommendation: {chosen['model']} on {chosen.get('num_gpus', '?')} x {chosen.get('gpu', '?')}"
        return f"Recommendation: {plan.path}"
    return "planner report"


def build_report(
    *,
    estimates: Sequence[Estimate] = (),
    all_methods: bool = True,
    gpu_rows: Sequence[object] = (),
    profiles: Sequence[ProfileView] = (),
    plan: PlanView | None = None,
    accuracy: pd.DataFrame | None = None,
    accuracy_source: str = "",
    title: str | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
) -> Report:
    sections: list[Section] = []
    parts = []
    if estimates:
        sections.append(estimate_section(estimates, all_methods=all_methods, gpu_rows=gpu_rows))
        fit = sum(e.fits for e in estimates)
        parts.append(f"{len(estimates)} configurations estimated, {fit} fit")
    for i, view in enumerate(profiles):
        sections.append(profile_section(view, i, max_points=max_points))
    if profiles:
        parts.append(f"{len(profiles)} profile{'s' if len(profiles) != 1 else ''} "
                     f"({', '.join(f'{p.name}: {p.status}' for p in profiles)})")
    if plan is not None:
        sections.append(plan_section(plan))
        parts.append("a recommendation")
    if accuracy is not None:
        sections.append(accuracy_section(accuracy, accuracy_source))
        parts.append(f"how planner was validated (tiny models on CPU, {len(accuracy)} cells)")
    sections.append(Section(
        "Versions", "versions",
        [KeyValues(sorted(library_versions().items()), caption="Tool and library versions used for this report")],
        subtitle="Profiles list the versions they were recorded with in their own section.",
    ))
    return Report(
        title=title or default_title(estimates, profiles, plan),
        sections=sections,
        generated=f"Generated {generated_at()} by planner {library_versions()['planner']}",
        summary="; ".join(parts) + "." if parts else "",
    )
