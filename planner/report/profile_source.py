"""Turn a profile directory into the ProfileView the report draws, and estimate its own inputs.

The store (planner/profile) owns the on-disk format; this module only reads it. Until the store's loader
exists, a minimal reader handles: ``meta.json`` (inputs and versions), ``summary.json`` (status, message,
per-rank peaks by category) and a timeline table (``timeline.parquet`` or ``timeline.csv[.gz]``) in the
schema of ``planner.report.timeline``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from planner.errors import PlannerError
from planner.report import palette
from planner.report.profile_section import ProfileView, RankPeak

TIMELINE_FILES = ("timeline.parquet", "timeline.csv.gz", "timeline.csv")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlannerError(f"--profile {str(path.parent)!r} has no {path.name}; it is not a planner profile.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlannerError(f"--profile: {str(path)!r} is not valid JSON ({type(exc).__name__}); the {what} "
                           "is damaged.") from None
    if not isinstance(data, dict):
        raise PlannerError(f"--profile: {str(path)!r} must hold a JSON object, not {type(data).__name__}.")
    return data


def _read_timeline(directory: Path) -> pd.DataFrame | None:
    for name in TIMELINE_FILES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            frame = pd.read_parquet(path) if name.endswith(".parquet") else pd.read_csv(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow/zlib raise many types on a damaged file
            raise PlannerError(f"--profile: {str(path)!r} cannot be read ({type(exc).__name__}); the timeline "
                               "is damaged.") from None
        if "t_s" not in frame:
            raise PlannerError(f"--profile: {str(path)!r} has no 't_s' column; it is not a planner timeline.")
        return frame
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _by_category(d: Mapping[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in d.items():
        cat = palette.canonical(key.removesuffix("_bytes"))
        if cat in palette.CATEGORIES and _int(value) is not None:
            out[cat] = out.get(cat, 0) + int(value)
    return out


def _peaks(summary: Mapping[str, Any]) -> list[RankPeak]:
    ranks = summary.get("ranks", [])
    if isinstance(ranks, Mapping):
        ranks = [{"rank": k, **v} for k, v in ranks.items() if isinstance(v, Mapping)]
    peaks = []
    for i, r in enumerate(r for r in ranks if isinstance(r, Mapping)):
        peak = r.get("peak", r)
        if not isinstance(peak, Mapping):
            continue
        cats = _by_category(peak.get("by_category", {}) if isinstance(peak.get("by_category"), Mapping) else {})
        allocated = _int(peak.get("allocated_bytes")) or sum(cats.values())
        peaks.append(RankPeak(
            rank=_int(r.get("rank")) if _int(r.get("rank")) is not None else i,
            allocated_bytes=allocated,
            by_category=cats,
            step=_int(peak.get("step")),
            phase=str(peak.get("phase", "") or ""),
            reserved_bytes=_int(peak.get("reserved_bytes")),
            device_bytes=_int(peak.get("device_bytes")),
        ))
    return sorted(peaks, key=lambda p: p.rank)


def _inputs(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    items = []
    model = meta.get("model")
    if isinstance(model, Mapping):
        items.append(("model", str(model.get("name", "?"))))
    elif model is not None:
        items.append(("model", str(model)))
    train = meta.get("train")
    if isinstance(train, Mapping):
        for key in ("method", "precision", "optimizer", "zero_stage", "offload", "micro_batch", "seq_len",
                    "grad_accum", "grad_checkpointing", "attn_impl"):
            if key in train:
                items.append((key.replace("_", " "), str(train[key])))
    for key in ("device", "device_name", "num_ranks", "world_size", "steps", "git_commit", "created"):
        if key in meta:
            items.append((key.replace("_", " "), str(meta[key])))
    return items


def estimate_for(meta: Mapping[str, Any], num_ranks: int) -> tuple[dict[str, int] | None, str]:
    """The estimator's breakdown at the peak for the profile's own inputs, or None and why not."""
    from planner import catalog
    from planner.estimate.core import estimate
    from planner.models import spec_from_config
    from planner.specs import Cluster, train_spec_from_dict

    model = meta.get("model")
    train = meta.get("train")
    if not isinstance(model, Mapping) or not isinstance(model.get("config"), Mapping) or not isinstance(train, Mapping):
        return None, "No estimate: the profile's meta.json does not record the model config and training spec."
    try:
        spec = spec_from_config(dict(model["config"]), str(model.get("name", "profile")), source="profile")
        tspec = train_spec_from_dict(dict(train))
        gpu_name = str(meta.get("gpu") or catalog.DEFAULT_GPU)
        gpu = catalog.gpu(gpu_name) if gpu_name in {g.name for g in catalog.gpus()} else catalog.gpu(catalog.DEFAULT_GPU)
        cluster = Cluster(gpu=gpu, num_gpus=max(1, num_ranks))
        device = "cuda" if str(meta.get("device", "cpu")).startswith("cuda") else "cpu"
        est = estimate(spec, tspec, cluster, device=device)
    except PlannerError as exc:
        return None, f"No estimate for this profile's inputs: {exc}"
    return est.per_gpu.by_category(), (
        f"Estimated with planner's estimator for the profile's own inputs (device {device}, {num_ranks} rank"
        f"{'s' if num_ranks != 1 else ''})."
    )


def load_profile_view(path: Path) -> ProfileView:
    path = Path(path)
    if not path.exists():
        raise PlannerError(f"--profile {str(path)!r} does not exist; give a directory written by 'planner profile'.")
    if not path.is_dir():
        raise PlannerError(f"--profile {str(path)!r} is not a directory; give a directory written by 'planner profile'.")
    meta = _read_json(path / "meta.json", "profile's metadata")
    summary = _read_json(path / "summary.json", "profile's summary")
    frame = _read_timeline(path)
    peaks = _peaks(summary)
    num_ranks = len(peaks) or (int(frame["rank"].nunique()) if frame is not None and "rank" in frame else 1)
    estimated, note = estimate_for(meta, num_ranks)
    versions = meta.get("versions")
    return ProfileView(
        name=path.name,
        path=str(path),
        status=str(summary.get("status", "unknown")),
        message=str(summary.get("message", "") or ""),
        inputs=_inputs(meta),
        versions={str(k): str(v) for k, v in versions.items()} if isinstance(versions, Mapping) else {},
        peaks=peaks,
        timeline=frame,
        estimated=estimated,
        estimate_note=note,
    )
