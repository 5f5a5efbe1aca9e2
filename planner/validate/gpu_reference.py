"""`planner validate --suite gpu-reference`: the estimator against committed GPU profiles, offline. No torch.

Profiles recorded on a GPU (``planner profile --device cuda``) are committed under
``profiles/gpu/<device>/<slug>/``; this suite estimates each one's own inputs with ``device="cuda"`` and
compares the allocated peak per rank and category with the same metrics and bounds as the CPU suite,
writing ``accuracy-gpu.md`` and ``accuracy-gpu.csv``.
"""

from __future__ import annotations

import time
from pathlib import Path

from planner.errors import PlannerError
from planner.validate.report import write_reports
from planner.validate.results import CATEGORIES, CellResult, RankResult, summarize
from planner.validate.run import Run


def profile_dirs(root: Path) -> list[Path]:
    """Every ``<device>/<slug>/`` directory under root that holds a summary.json, sorted."""
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.glob("*/*/summary.json"))


def _gpu_name(prof) -> str:
    from planner import catalog

    name = (prof.meta.get("cluster") or {}).get("gpu")
    if name:
        return name
    device_name = str((prof.meta.get("hardware") or {}).get("device_name", "")).lower()
    for g in catalog.gpus():  # e.g. "NVIDIA H100 80GB HBM3" -> the catalog's H100 SXM entry
        if all(part in device_name for part in g.name.lower().split("-")[:1]):
            return g.name
    return catalog.DEFAULT_GPU


def compare_profile(path: Path) -> CellResult:
    from planner import catalog
    from planner.compare import compare
    from planner.estimate.core import estimate
    from planner.profile.store import load_profile
    from planner.specs import Cluster

    prof = load_profile(path)
    train = prof.meta["train"]
    inputs = {"device": path.parent.name, "model": prof.meta["model"]["name"], "method": train.get("method"),
              "precision": train.get("precision"), "zero": train.get("zero_stage"), "num_ranks": prof.num_ranks,
              "ckpt": train.get("grad_checkpointing"), "attn": train.get("attn_impl"), "seq_len": train.get("seq_len"),
              "micro_batch": train.get("micro_batch")}  # fmt: skip
    cell_id = f"{path.parent.name}/{path.name}"
    if prof.device != "cuda":
        return CellResult(cell_id, inputs, "failed", f"recorded on {prof.device!r}, not cuda", source="cache")
    try:
        cluster_meta = prof.meta.get("cluster") or {}
        cluster = Cluster(gpu=catalog.gpu(_gpu_name(prof)), num_gpus=prof.num_ranks,
                          num_nodes=int(cluster_meta.get("num_nodes", 1)))  # fmt: skip
        est = estimate(prof.model_spec(), prof.train_spec(), cluster, device="cuda", allow_longer=True)
        comparison = compare(est, prof)
    except PlannerError as exc:
        return CellResult(cell_id, inputs, "estimate-error", str(exc), source="cache")
    ranks = []
    for rc in comparison.ranks:
        estimated = {c: rc.row(c).estimated_bytes for c in CATEGORIES}
        measured = {c: rc.row(c).measured_bytes for c in CATEGORIES}
        ranks.append(RankResult(rc.rank, estimated, measured, rc.estimated_peak_phase, rc.measured_peak_phase,
                                rc.measured_peak_step))  # fmt: skip
    status = prof.status if prof.status != "ok" else "ok"
    return CellResult(cell_id, inputs, status, prof.message, tuple(ranks), source="cache")


def _hardware(path: Path) -> dict:
    """The recording machine of the first profile (meta.json), for the report's header."""
    import json

    try:
        hw = json.loads((path / "meta.json").read_text()).get("hardware") or {}
    except (OSError, ValueError):
        return {}
    return {**hw, "cpu": f"{hw.get('device_name', '?')} GPU on {hw.get('cpu', '?')}"}


def run_gpu_reference(root: Path, *, out_dir: Path) -> Run:
    started = time.time()
    dirs = profile_dirs(root)
    if not dirs:
        raise PlannerError(
            f"there are no committed GPU profiles under {str(root)!r} (none has been recorded yet); record some with "
            "'planner profile --device cuda --out profiles/gpu/<device>/<slug>/' on a GPU machine."
        )
    results = [compare_profile(p) for p in dirs]
    summary = summarize(results)
    from planner.profile import meta

    context = {"command": "planner validate --suite gpu-reference", "matrix": f"{len(results)} committed GPU profiles",
               "versions": meta.versions(), "hardware": _hardware(dirs[0]), "git_commit": meta.git_commit(),
               "num_planned": len(results), "profile_s": 0, "num_profiled": 0, "num_reused": len(results),
               "description": "Committed GPU profiles (profiles/gpu/<device>/<slug>/) against `planner estimate` "
                              "of their own inputs (`device=cuda`); the allocated peak per rank and category."}  # fmt: skip
    csv_path, md_path = write_reports(results, summary, out_dir, "accuracy-gpu",
                                      title="planner accuracy: GPU reference profiles", context=context)  # fmt: skip
    return Run(results, summary, csv_path, md_path, time.time() - started)
