"""The recommendation part of the report, from a bundle written by `planner recommend --out DIR`.

The bundle's text files (PLAN.md, launch.sh, ds_config.json, accelerate_config.yaml, train.py) are shown
verbatim, escaped. The chosen plan, runners-up and rejected plans (with reasons) come from the
recommendation's JSON (``Recommendation.to_dict()``, what `planner recommend --json` prints): read from
``DIR/plan.json`` when the bundle has one, or given directly as ``--plan FILE.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planner.errors import PlannerError
from planner.report import figures, palette
from planner.report.engine_text import layout_words
from planner.report.html import Code, Figure, KeyValues, Paragraph, Section, Table
from planner.units import gib_value

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
    if path.is_file() and path.suffix == ".json":
        return PlanView(path=str(path), files={}, plan=_read_plan_json(path))
    if not path.is_dir():
        raise PlannerError(f"--plan {str(path)!r} is neither a bundle directory from 'planner recommend --out' nor "
                           "the .json that 'planner recommend --json' prints.")
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
    plan = _read_plan_json(path / PLAN_JSON) if (path / PLAN_JSON).is_file() else None
    if not files and plan is None:
        raise PlannerError(
            f"--plan {str(path)!r} holds none of {', '.join(BUNDLE_FILES)} or {PLAN_JSON}; "
            "give a directory written by 'planner recommend --out'."
        )
    return PlanView(path=str(path), files=files, plan=plan)


def _read_plan_json(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_FILE_BYTES * 10:
        raise PlannerError(f"--plan: {str(path)!r} is over {MAX_FILE_BYTES * 10:,} bytes; it is not a recommendation.")
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlannerError(f"--plan: {str(path)!r} is not valid JSON ({type(exc).__name__}).") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("plan"), dict):
        raise PlannerError(f"--plan: {str(path)!r} is not the JSON of 'planner recommend --json' (no \"plan\" object).")
    return plan


# ------------------------------------------------------------------ plan.json (Recommendation.to_dict())


def _train(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    plan = entry.get("plan") if isinstance(entry.get("plan"), Mapping) else {}
    train = plan.get("train") if isinstance(plan.get("train"), Mapping) else {}
    return train


def describe(entry: Mapping[str, Any]) -> str:
    """A plan entry ({"plan": ..., "estimate": ..., "reason": ...}) in one line, like Plan.label()."""
    plan = entry.get("plan") if isinstance(entry.get("plan"), Mapping) else None
    if plan is None:
        return "(no single plan)"
    t = _train(entry)
    return (f"{t.get('method', '?')}, {layout_words(t)}, micro-batch {t.get('micro_batch', '?')}"
            f" x accumulation {t.get('grad_accum', '?')} x {plan.get('num_gpus', '?')} GPUs, checkpointing "
            f"{'on' if t.get('grad_checkpointing') else 'off'}, {t.get('attn_impl', '?')}")


def _short(entry: Mapping[str, Any]) -> str:
    t = _train(entry)
    plan = entry.get("plan") or {}
    off = {"none": "", "optimizer": " opt-off", "optimizer+params": " opt+par-off"}.get(str(t.get("offload")), "")
    layout = "FSDP2" if t.get("engine") == "fsdp2" else f"Z{t.get('zero_stage', '?')}{off}"
    return (f"{t.get('method', '?')} {layout}\nmb {t.get('micro_batch', '?')} x "
            f"{t.get('grad_accum', '?')} x {plan.get('num_gpus', '?')}{' ckpt' if t.get('grad_checkpointing') else ''}")


def _estimate(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    e = entry.get("estimate")
    return e if isinstance(e, Mapping) else {}


def _gib(value: Any) -> object:
    return gib_value(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _bar(entry: Mapping[str, Any], group: str) -> figures.BarRow | None:
    est = _estimate(entry)
    per_gpu = est.get("per_gpu")
    if not isinstance(per_gpu, Mapping):
        return None
    cats = {c: int(per_gpu.get(f"{c}_bytes", 0) or 0) for c in palette.CATEGORIES}
    return figures.BarRow(
        group=group, label=_short(entry), bytes_by_category=cats,
        device_bytes=int(est.get("device_bytes", sum(cats.values())) or 0),
        headroom_bytes=int(est.get("headroom_bytes", 0) or 0), fits=bool(est.get("fits", True)),
        peak_phase=str(est.get("peak_phase", "")), cpu_bytes_per_node=int(est.get("cpu_bytes_per_node", 0) or 0),
    )


def _throughput(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    th = _estimate(entry).get("throughput")
    return th if isinstance(th, Mapping) else {}


def _chosen(plan: Mapping[str, Any]) -> KeyValues:
    p = plan.get("plan") if isinstance(plan.get("plan"), Mapping) else {}
    t = _train(plan)
    est, th = _estimate(plan), _throughput(plan)
    items = [
        ("model", str(p.get("model", "?"))),
        ("GPUs", f"{p.get('num_gpus', '?')} x {p.get('gpu', '?')} on {p.get('num_nodes', 1)} node(s)"),
        ("method / precision / optimizer", f"{t.get('method')} / {t.get('precision')} / {t.get('optimizer')}"),
        ("engine", layout_words(t)),
        ("batch", f"micro-batch {t.get('micro_batch')} x accumulation {t.get('grad_accum')} x {p.get('num_gpus')} "
                  f"GPUs = global batch {p.get('global_batch_size')}, sequence {t.get('seq_len')}"),
        ("checkpointing / attention", f"{'on' if t.get('grad_checkpointing') else 'off'} / {t.get('attn_impl')}"),
    ]
    if est:
        items.append(("estimated peak", f"device {_gib(est.get('device_bytes'))} GiB, reserved "
                                        f"{_gib(est.get('reserved_bytes'))} GiB at {est.get('peak_phase', '?')}; "
                                        f"headroom {_gib(est.get('headroom_bytes'))} GiB"))
    if th:
        items.append(("throughput", f"{th.get('tokens_per_s_per_gpu', 0):,.0f} tokens/s per GPU, step "
                                    f"{th.get('step_time_s', 0):.2f} s, MFU {th.get('mfu', 0):.0%}"))
        if th.get("num_tokens"):
            items.append(("time / cost", f"{th.get('total_time_s', 0) / 3600:,.1f} h / "
                                         f"{th.get('cost', 0):,.2f} at {th.get('price_per_gpu_hour', 0)} per GPU-hour"))
    return KeyValues(items, caption=f"Chosen plan: {describe(plan)}")


def _entries(plan: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = plan.get(key)
    return [e for e in value if isinstance(e, Mapping)] if isinstance(value, list) else []


def _table(entries: Sequence[Mapping[str, Any]], caption: str) -> Table:
    rows = []
    for e in entries:
        est, th = _estimate(e), _throughput(e)
        rows.append([describe(e), _gib(est.get("device_bytes")), _gib(est.get("headroom_bytes")),
                     round(th["tokens_per_s_per_gpu"]) if "tokens_per_s_per_gpu" in th else "-",
                     round(th["step_time_s"], 3) if "step_time_s" in th else "-", str(e.get("reason", ""))])
    cols = ["plan", "device GiB", "headroom GiB", "tokens/s/GPU", "step s", "reason"]
    return Table(cols, rows, caption=caption)


def plan_section(view: PlanView) -> Section:
    blocks: list[object] = [KeyValues([("bundle", view.path)], caption="Recommendation")]
    plan = view.plan
    if plan is not None and isinstance(plan.get("plan"), Mapping):
        blocks.append(_chosen(plan))
        why = plan.get("why")
        for line in why if isinstance(why, list) else [why] if isinstance(why, str) else []:
            blocks.append(Paragraph(str(line), kind="note"))
        runners = _entries(plan, "runners_up")
        rejected = _entries(plan, "rejected")
        bars = [b for b in [_bar(plan, "chosen")] + [_bar(r, "runners-up") for r in runners] if b is not None]
        gpu_name = str(plan["plan"].get("gpu", ""))
        margin = (plan.get("assumptions") or {}).get("margin", 0.1) if isinstance(plan.get("assumptions"), Mapping) else 0.1
        capacity = _capacity(gpu_name)
        if bars and capacity:
            blocks.append(Figure(
                figures.plan_bars(bars, capacity_bytes=capacity, usable_bytes=int(capacity * (1 - float(margin))),
                                  gpu_name=gpu_name),
                name="plan-bars",
                caption="The chosen plan and its runners-up, per GPU, by category; the number above each bar is "
                        "the headroom beyond the margin.",
            ))
        if runners:
            blocks.append(_table(runners, "Runners-up, best first, and why they rank lower"))
        if rejected:
            blocks.append(_table(rejected, "Rejected plans and the reason each lost"))
    else:
        blocks.append(Paragraph(
            "This bundle has no plan.json, so the runners-up and rejected plans are not shown here (PLAN.md below "
            "has the chosen plan); 'planner recommend --json > DIR/plan.json' adds them.", kind="note"))
    for name, text in view.files.items():
        blocks.append(Code(name, text, open=name == "PLAN.md"))
    return Section("Recommendation", "recommendation", blocks,
                   subtitle="The chosen plan, its alternatives, and the emitted configuration.")


def _capacity(gpu_name: str) -> int | None:
    from planner import catalog

    try:
        return catalog.gpu(gpu_name).capacity_bytes
    except PlannerError:
        return None
