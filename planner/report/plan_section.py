"""The recommendation part of the report, read from a bundle written by `planner recommend --out DIR`.

The bundle's text files (PLAN.md, ds_config.json, accelerate_config.yaml, launch.sh, train.py) are shown
verbatim, escaped. When the bundle has a machine-readable ``plan.json`` its chosen plan, runners-up and
rejected plans (with reasons) become tables, and the plans' per-GPU breakdowns a figure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planner.errors import PlannerError
from planner.report import figures, palette
from planner.report.html import Code, Figure, KeyValues, Paragraph, Section, Table
from planner.units import GIB

BUNDLE_FILES = ("PLAN.md", "launch.sh", "ds_config.json", "accelerate_config.yaml", "train.py")
PLAN_JSON = "plan.json"
MAX_FILE_BYTES = 2_000_000


@dataclass(frozen=True)
class PlanView:
    path: str
    files: Mapping[str, str]  # file name -> text, in BUNDLE_FILES order
    plan: Mapping[str, Any] | None = None  # plan.json, when present
    notes: Sequence[str] = field(default_factory=tuple)


def read_bundle(path: Path) -> PlanView:
    path = Path(path)
    if not path.exists():
        raise PlannerError(f"--plan {str(path)!r} does not exist; give a directory written by 'planner recommend --out'.")
    if not path.is_dir():
        raise PlannerError(f"--plan {str(path)!r} is not a directory; give the bundle written by 'planner recommend --out'.")
    files: dict[str, str] = {}
    for name in BUNDLE_FILES:
        f = path / name
        if f.is_file():
            if f.stat().st_size > MAX_FILE_BYTES:
                raise PlannerError(f"--plan: {str(f)!r} is over {MAX_FILE_BYTES:,} bytes; it is not a planner bundle file.")
            try:
                files[name] = f.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise PlannerError(f"--plan: cannot read {str(f)!r} ({type(exc).__name__}).") from None
    plan = None
    pj = path / PLAN_JSON
    if pj.is_file():
        try:
            plan = json.loads(pj.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PlannerError(f"--plan: {str(pj)!r} is not valid JSON ({type(exc).__name__}).") from None
        if not isinstance(plan, dict):
            raise PlannerError(f"--plan: {str(pj)!r} must hold a JSON object, not {type(plan).__name__}.")
    if not files and plan is None:
        raise PlannerError(
            f"--plan {str(path)!r} holds none of {', '.join(BUNDLE_FILES)} or {PLAN_JSON}; "
            "give a directory written by 'planner recommend --out'."
        )
    return PlanView(path=str(path), files=files, plan=plan)


# ------------------------------------------------------------------ plan.json, read defensively

_PLAN_KEYS = ("method", "num_gpus", "gpu", "zero_stage", "offload", "micro_batch", "grad_accum",
              "global_batch_size", "seq_len", "grad_checkpointing", "attn_impl", "precision", "optimizer")


def _flat(d: Mapping[str, Any]) -> dict[str, Any]:
    """A plan entry flattened one level: {"plan": {...}, "estimate": {...}} -> one dict."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and k in ("plan", "train", "cluster", "throughput"):
            out.update(_flat(v))
        else:
            out[k] = v
    return out


def _breakdown(d: Mapping[str, Any]) -> dict[str, int] | None:
    for key in ("per_gpu", "breakdown", "memory"):
        b = d.get(key)
        if isinstance(b, Mapping):
            cats = {c: int(b.get(f"{c}_bytes", b.get(c, 0)) or 0) for c in palette.CATEGORIES}
            if any(cats.values()):
                return cats
    for key in ("estimate",):
        if isinstance(d.get(key), Mapping):
            return _breakdown(d[key])
    return None


def _describe(d: Mapping[str, Any]) -> str:
    f = _flat(d)
    parts = [str(f["method"])] if "method" in f else []
    if "num_gpus" in f:
        parts.append(f"{f['num_gpus']} GPUs")
    if "zero_stage" in f:
        parts.append(f"ZeRO {f['zero_stage']}")
    if f.get("offload") not in (None, "none"):
        parts.append(f"offload {f['offload']}")
    if "micro_batch" in f:
        parts.append(f"mb {f['micro_batch']}")
    if "grad_accum" in f:
        parts.append(f"accum {f['grad_accum']}")
    if f.get("grad_checkpointing"):
        parts.append("ckpt")
    return ", ".join(parts) or "plan"


def _entries(plan: Mapping[str, Any], *keys: str) -> list[Mapping[str, Any]]:
    for k in keys:
        v = plan.get(k)
        if isinstance(v, list):
            return [e for e in v if isinstance(e, Mapping)]
    return []


def _plan_table(entries: Sequence[Mapping[str, Any]], caption: str, *, with_reason: bool) -> Table:
    flats = [_flat(e) for e in entries]
    keys = [k for k in _PLAN_KEYS if any(k in f for f in flats)]
    extra = [k for k in ("device_bytes", "headroom_bytes", "tokens_per_s_per_gpu", "step_time_s", "cost")
             if any(k in f for f in flats)]
    cols = keys + [k.replace("_bytes", " GiB") for k in extra] + (["reason"] if with_reason else [])
    rows = []
    for f in flats:
        row: list[object] = [f.get(k, "") for k in keys]
        for k in extra:
            v = f.get(k, "")
            row.append(round(v / GIB, 2) if k.endswith("_bytes") and isinstance(v, (int, float)) else
                       (round(v, 3) if isinstance(v, float) else v))
        if with_reason:
            row.append(f.get("reason", f.get("why", "")))
        rows.append(row)
    return Table([c.replace("_", " ") for c in cols], rows, caption=caption)


def plan_section(view: PlanView) -> Section:
    blocks: list[object] = [KeyValues([("bundle", view.path)], caption="Recommendation bundle")]
    plan = view.plan
    if plan is not None:
        chosen = plan.get("plan") if isinstance(plan.get("plan"), Mapping) else plan.get("chosen")
        if isinstance(chosen, Mapping):
            flat = _flat(chosen)
            blocks.append(KeyValues([(k.replace("_", " "), str(flat[k])) for k in _PLAN_KEYS if k in flat],
                                    caption=f"Chosen plan: {_describe(chosen)}"))
        why = plan.get("why") or plan.get("reason")
        if isinstance(why, str):
            blocks.append(Paragraph(why, kind="note"))
        runners = _entries(plan, "runners_up", "alternatives")
        rejected = _entries(plan, "rejected")
        bars = []
        for entry in ([chosen] if isinstance(chosen, Mapping) else []) + list(runners):
            b = _breakdown(entry)
            f = _flat(entry)
            if b is not None:
                bars.append(figures.BarRow(
                    group="chosen" if entry is chosen else "runner-up", label=_describe(entry),
                    bytes_by_category=b, device_bytes=int(f.get("device_bytes", sum(b.values()))),
                    headroom_bytes=int(f.get("headroom_bytes", 0)), fits=bool(f.get("fits", True)),
                    peak_phase=str(f.get("peak_phase", "")),
                ))
        capacity = plan.get("capacity_bytes") or _flat(chosen or {}).get("capacity_bytes")
        if bars and isinstance(capacity, int):
            margin = float(plan.get("margin", 0.1) or 0.0)
            blocks.append(Figure(
                figures.plan_bars(bars, capacity_bytes=capacity, usable_bytes=int(capacity * (1 - margin)),
                                  gpu_name=str(_flat(chosen or {}).get("gpu", plan.get("gpu", "GPU")))),
                name="plan-bars",
            ))
        if runners:
            blocks.append(_plan_table(runners, "Runners-up, best first", with_reason=False))
        if rejected:
            blocks.append(_plan_table(rejected, "Rejected plans and why", with_reason=True))
    else:
        blocks.append(Paragraph("The bundle has no plan.json: runners-up and rejected plans are in PLAN.md below.",
                                kind="note"))
    for name, text in view.files.items():
        blocks.append(Code(name, text, open=name == "PLAN.md"))
    return Section("Recommendation", "recommendation", blocks,
                   subtitle="The chosen plan, its alternatives, and the emitted configuration.")
