"""Turn a profile directory (``planner.profile.load_profile``) into the ProfileView the report draws.

The store owns the format and its checks; this module only reads. Its timeline is an event table (one
row per allocation or free: ``t_ns``, ``rank``, ``step``, ``phase``, ``category``, ``delta_bytes``, ...);
the report's figures want the bytes alive per category at each event, so ``wide_timeline`` accumulates
each category's deltas per rank (an allocation keeps one category for life, so the sum of the columns
is the rank's allocated total at every event).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from planner.errors import PlannerError
from planner.report import palette
from planner.report.engine_text import layout_words
from planner.report.profile_section import ProfileView, RankPeak

PROFILE_CATEGORIES = ("params", "grads", "optimizer_states", "activations", "temporaries", "other")
EVENT_COLUMNS = ("t_ns", "rank", "step", "phase", "category", "delta_bytes")
TRAIN_KEYS = ("method", "precision", "optimizer", "zero_stage", "offload", "micro_batch", "seq_len", "grad_accum",
              "grad_checkpointing", "attn_impl")


def wide_timeline(events: pd.DataFrame) -> pd.DataFrame:
    """Event table -> one row per event with the bytes alive in each category (report.timeline schema)."""
    missing = [c for c in EVENT_COLUMNS if c not in events]
    if missing:
        raise PlannerError(f"the profile's timeline lacks the column(s) {', '.join(missing)}; it is not a planner timeline.")
    rank = events["rank"].to_numpy()
    category = events["category"].astype("category")  # a no-op for the store's categorical column
    codes = category.cat.codes.to_numpy()
    delta = events["delta_bytes"].to_numpy(dtype=np.int64)
    out = pd.DataFrame({
        "rank": rank,
        "t_s": events["t_ns"].to_numpy(dtype=np.float64) / 1e9,
        "phase": events["phase"].astype("category"),
        "step": events["step"].to_numpy(),
    })
    names = list(category.cat.categories.astype(str))
    for cat in PROFILE_CATEGORIES:
        if cat not in names:
            out[cat] = np.zeros(len(out), dtype=np.int64)
            continue
        mine = np.where(codes == names.index(cat), delta, 0)
        out[cat] = pd.Series(mine).groupby(rank).cumsum().to_numpy()
    # Series the store may add on CUDA: the caching allocator's reserved bytes and NVML's, per event.
    for src, dst in (("reserved_bytes", "reserved"), ("nvml_bytes", "nvml")):
        if src in events:
            out[dst] = events[src].to_numpy(dtype=np.float64)
    return out


def _peak(rank: int, peak: Any, cuda: Mapping[str, Any] | None) -> RankPeak | None:
    if peak is None:
        return None
    by_cat = {palette.canonical(k): int(v) for k, v in dict(peak.by_category).items()}
    cuda = cuda or {}
    reserved = cuda.get("steady_reserved_peak_bytes") or cuda.get("max_reserved_bytes")
    device = cuda.get("nvml_steady_peak_used_bytes") or cuda.get("nvml_peak_used_bytes")
    return RankPeak(
        rank=rank,
        allocated_bytes=int(peak.allocated_bytes),
        by_category=by_cat,
        step=peak.step,
        phase=str(peak.phase or ""),
        reserved_bytes=int(reserved) if reserved else None,
        device_bytes=int(device) if device else None,
    )


def _inputs(meta: Mapping[str, Any], profile: Any) -> list[tuple[str, str]]:
    model = meta.get("model", {})
    train = meta.get("train", {})
    cluster = meta.get("cluster") or {}
    hw = meta.get("hardware") or {}
    items = [("model", f"{model.get('name', '?')} ({model.get('config', {}).get('model_type', '?')})")]
    items += [(k.replace("_", " "), str(train[k])) for k in TRAIN_KEYS if k in train]
    items.append(("engine", layout_words(train)))
    if train.get("method") in ("lora", "qlora") and isinstance(train.get("lora"), Mapping):
        lora = train["lora"]
        items.append(("LoRA", f"rank {lora.get('rank')}, alpha {lora.get('alpha')}, targets "
                              f"{','.join(map(str, lora.get('targets', [])))}"))
    items.append(("ranks / device", f"{profile.num_ranks} x {profile.device} ({hw.get('device_name', '?')})"))
    if cluster.get("gpu"):
        items.append(("planned GPU", str(cluster["gpu"])))
    items.append(("steps", f"{meta.get('steps', '?')} planned, "
                           f"{profile.summary.get('steps_completed', '?')} completed, "
                           f"{profile.summary.get('steps_recorded', '?')} recorded"))
    if meta.get("git_commit"):
        items.append(("planner commit", str(meta["git_commit"])))
    return items


def compare_for(profile: Any) -> tuple[Any, str]:
    """planner.compare's Comparison of the estimate for the profile's own inputs (as `planner compare`
    builds it), or None and why not."""
    import inspect

    from planner import catalog
    from planner.compare import compare
    from planner.estimate.core import estimate
    from planner.specs import Cluster

    cluster_meta = profile.meta.get("cluster") or {}
    device = "cpu" if profile.device == "cpu" else "cuda"
    try:
        cluster = Cluster(
            gpu=catalog.gpu(str(cluster_meta.get("gpu") or catalog.DEFAULT_GPU)),
            num_gpus=int(cluster_meta.get("num_gpus", profile.num_ranks)),
            num_nodes=int(cluster_meta.get("num_nodes", 1)),
        )
        kwargs: dict[str, Any] = {"device": device, "cpu": profile.cpu_kernels()}
        if "allow_longer" in inspect.signature(estimate).parameters:
            kwargs["allow_longer"] = True  # the profile ran this length, whatever the model's position limit
        est = estimate(profile.model_spec(), profile.train_spec(), cluster, **kwargs)
        result = compare(est, profile)
    except (PlannerError, TypeError, ValueError) as exc:
        return None, f"No estimate for this profile's inputs: {exc}"
    return result, (
        f"Estimated by planner for the profile's own inputs (as 'planner compare' does: {profile.num_ranks} rank"
        f"{'s' if profile.num_ranks != 1 else ''}, device {device}). 'other' holds tensors the estimator has no "
        "category for (inputs, buffers); the estimator's non-tensor overhead is not part of the allocated peak."
    )


def load_profile_view(path: Path) -> ProfileView:
    from planner.profile import load_profile

    path = Path(path)
    if not path.is_dir():
        raise PlannerError(f"--profile {str(path)!r} does not exist or is not a directory; give a directory "
                           "written by 'planner profile'.")
    profile = load_profile(path)
    try:
        events = profile.timeline()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types on a damaged file
        raise PlannerError(f"--profile {str(path)!r}: timeline.parquet cannot be read ({type(exc).__name__}).") from None
    frame = wide_timeline(events) if len(events) else None
    peaks = [p for p in (_peak(r.rank, r.peak, r.cuda) for r in profile.ranks) if p is not None]
    top = max(profile.ranks, key=lambda r: (r.peak.allocated_bytes if r.peak else -1, -r.rank))
    phases = {name: {palette.canonical(k): int(v) for k, v in b.by_category.items()} for name, b in top.phases.items()}
    comparison, note = compare_for(profile)
    notes = [f"rank {r.rank}: {r.message}" for r in profile.ranks if r.status != "ok" and r.message]
    if not any(r.steady_state for r in profile.ranks):
        notes.append("Fewer than two optimizer steps completed: the peak includes step 0 (no optimizer state yet "
                     "or lazy buffers), not a steady state.")
    versions = profile.meta.get("versions") or {}
    return ProfileView(
        name=path.name,
        path=str(path),
        status=profile.status,
        message=profile.message,
        inputs=_inputs(profile.meta, profile),
        versions={str(k): "not installed" if v is None else str(v) for k, v in versions.items()},
        peaks=peaks,
        timeline=frame,
        comparison=comparison,
        estimate_note=note,
        extra_notes=tuple(notes),
        phases=phases,
        phases_rank=top.rank,
    )
