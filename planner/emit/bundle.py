"""The run bundle: render every file of a plan (pure), then write them atomically.

``render_bundle`` returns ``{filename: text}`` and touches nothing. ``write_bundle`` writes those files
into a temporary directory beside the target and moves them in place, so an interrupted write never
leaves a half-written bundle; it never writes into a non-empty directory that planner did not create
(a bundle it wrote carries ``.planner-bundle.json``) unless ``force`` is given, and even then it only
replaces the bundle's own file names.
"""

from __future__ import annotations

import json
import os
import pprint
import re
import shutil
import tempfile
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from planner import __version__
from planner.emit.accelerate_config import render_accelerate_yaml
from planner.emit.ds_config import MAX_GRAD_NORM, deepspeed_config
from planner.emit.launch import render_launch_sh
from planner.emit.plan_md import render_plan_md
from planner.emit.sample_data import SAMPLE_DATASET, render_sample_jsonl
from planner.emit.train_script import PLACEHOLDER, TEMPLATE
from planner.errors import PlannerError
from planner.estimate.result import Estimate
from planner.specs import Cluster, ModelSpec, TrainSpec, train_spec_to_dict

MARKER = ".planner-bundle.json"
EXECUTABLE = ("launch.sh", "train.py")
DEFAULT_DATASET = "data.jsonl"
_HUB_HEADING = re.compile(r"^## (\S+) \(([\w.-]+/[\w.-]+)", re.MULTILINE)


@cache
def catalog_hub_ids() -> dict[str, str]:
    """Catalog name -> the hub repository its config.json was published in (catalog/models/SOURCES.md)."""
    try:
        text = (resources.files("planner.catalog") / "models" / "SOURCES.md").read_text()
    except OSError:
        return {}
    return dict(_HUB_HEADING.findall(text))


def weights_reference(model: ModelSpec) -> str | None:
    """Where train.py loads weights from: a hub id or a model directory; None when unknown."""
    source = model.source
    if source.startswith("hub:"):
        return source[len("hub:") :]
    if source == "catalog":
        return catalog_hub_ids().get(model.name)
    # Absolute: launch.sh changes to the bundle's directory, where a relative path would name another
    # directory (or, to transformers, a hub id).
    path = Path(source)
    if path.name == "config.json":
        return os.path.abspath(path.parent)
    if path.suffix == ".json":
        return None  # a lone config file: no weights beside it
    return os.path.abspath(source)


def render_train_script(values: dict[str, Any]) -> str:
    """train.py with ``values`` as its PLAN literal, written with ``pprint`` (repr of plain str, int, float,
    bool, None, list and dict, sorted keys): no user-supplied string is ever spliced into code."""
    return TEMPLATE.replace(PLACEHOLDER, pprint.pformat(values, sort_dicts=True, width=100), 1)


def _label(train: TrainSpec, cluster: Cluster) -> str:
    offload = "" if train.offload.value == "none" else f", offload {train.offload.value}"
    return (
        f"{train.method.value}, ZeRO-{train.zero_stage}{offload}, micro-batch {train.micro_batch} x "
        f"accumulation {train.grad_accum} x {cluster.num_gpus} GPUs, checkpointing "
        f"{'on' if train.grad_checkpointing else 'off'}, {train.attn_impl.value}"
    )


def render_bundle(
    model: ModelSpec,
    train: TrainSpec,
    cluster: Cluster,
    estimate: Estimate,
    *,
    global_batch_size: int,
    dataset: str = DEFAULT_DATASET,
    text_field: str = "text",
    tokenizer: str | None = None,
    label: str | None = None,
) -> dict[str, str]:
    """Every file of the bundle as ``{filename: text}``; pure and deterministic."""
    expected = train.micro_batch * train.grad_accum * cluster.num_gpus
    if global_batch_size != expected:
        raise PlannerError(
            f"global batch size {global_batch_size} does not equal micro-batch {train.micro_batch} x accumulation "
            f"{train.grad_accum} x {cluster.num_gpus} GPUs = {expected}."
        )
    if not dataset or not dataset.strip():
        raise PlannerError("the dataset must name a .jsonl file or a hub dataset, got an empty string.")
    if not text_field or not text_field.strip():
        raise PlannerError("the text field must name a field of the dataset, got an empty string.")
    label = label or _label(train, cluster)
    model_ref = weights_reference(model)
    has_ds = train.zero_stage > 0
    t = train_spec_to_dict(train)
    plan_values: dict[str, Any] = {
        "model": model_ref,
        "model_name": model.name,
        "dataset": dataset,
        "text_field": text_field,
        "method": t["method"],
        "precision": t["precision"],
        "optimizer": t["optimizer"],
        "micro_batch": train.micro_batch,
        "grad_accum": train.grad_accum,
        "seq_len": train.seq_len,
        "grad_checkpointing": train.grad_checkpointing,
        "attn_impl": t["attn_impl"],
        "dropout": train.dropout,
        "lora": t["lora"],
        "quant": t["quant"],
        "zero_stage": train.zero_stage,
        "offload": t["offload"],
        "deepspeed": "ds_config.json" if has_ds else None,
        "max_grad_norm": MAX_GRAD_NORM,
        "num_gpus": cluster.num_gpus,
        "num_nodes": cluster.num_nodes,
        "global_batch_size": global_batch_size,
    }
    files = {
        "train.py": render_train_script(plan_values),
        "accelerate_config.yaml": render_accelerate_yaml(train, cluster),
        "launch.sh": render_launch_sh(
            label=label, cluster=cluster, model_ref=model_ref, dataset=dataset, tokenizer=tokenizer
        ),
        "PLAN.md": render_plan_md(
            model,
            train,
            cluster,
            estimate,
            global_batch_size=global_batch_size,
            model_ref=model_ref,
            dataset=dataset,
            has_ds_config=has_ds,
            label=label,
        ),
        "model_config.json": json.dumps(model.config, indent=2, sort_keys=True) + "\n",
        SAMPLE_DATASET: render_sample_jsonl(),
    }
    if has_ds:
        files["ds_config.json"] = json.dumps(deepspeed_config(model, train, cluster), indent=2) + "\n"
    return dict(sorted(files.items()))


def _parts(plan: Any, estimate: Estimate | None) -> tuple[ModelSpec, TrainSpec, Cluster, Estimate, int]:
    """Accept a Recommendation (.plan, .estimate) or a Plan (.model, .train, .cluster, .global_batch_size)."""
    if hasattr(plan, "plan") and hasattr(plan, "estimate"):
        plan, estimate = plan.plan, estimate or plan.estimate
    if estimate is None:
        raise PlannerError("a bundle needs the plan's estimate: pass a Recommendation or estimate=.")
    return plan.model, plan.train, plan.cluster, estimate, plan.global_batch_size


def _read_marker(directory: Path) -> list[str] | None:
    try:
        files = json.loads((directory / MARKER).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(files, list):
        return None
    return [f for f in files if isinstance(f, str) and "/" not in f and "\\" not in f and f not in ("", ".", "..")]


def write_bundle(
    plan: Any,
    out_dir: str | os.PathLike,
    *,
    estimate: Estimate | None = None,
    force: bool = False,
    **render_options: Any,
) -> list[Path]:
    """Write the bundle of ``plan`` into ``out_dir``; returns the written paths (sorted).

    ``render_options`` go to ``render_bundle`` (dataset, text_field, tokenizer, label).
    """
    model, train, cluster, est, gbs = _parts(plan, estimate)
    files = render_bundle(model, train, cluster, est, global_batch_size=gbs, **render_options)
    if hasattr(plan, "to_dict"):
        # A Recommendation: keep its runners-up and rejected plans beside the bundle (read by `planner report`).
        files["plan.json"] = json.dumps(plan.to_dict(), indent=2, sort_keys=True) + "\n"
    return write_files(files, out_dir, force=force)


def write_files(files: dict[str, str], out_dir: str | os.PathLike, *, force: bool = False) -> list[Path]:
    """Write ``files`` into ``out_dir`` atomically per file, with the ownership rules of the module doc."""
    if not str(out_dir).strip():
        raise PlannerError("--out must name a directory, got an empty path.")
    target = Path(out_dir).expanduser()
    if target.exists() and not target.is_dir():
        raise PlannerError(f"--out {str(target)!r} is a file, not a directory; choose a directory path.")
    previous: list[str] | None = None
    if target.is_dir():
        try:
            entries = sorted(p.name for p in target.iterdir())
        except OSError as exc:
            raise PlannerError(f"cannot read --out directory {str(target)!r}: {exc.strerror or exc}.") from None
        previous = _read_marker(target) if MARKER in entries else None
        if entries and previous is None and not force:
            raise PlannerError(
                f"--out directory {str(target)!r} is not empty and was not written by planner; "
                "choose a new or empty directory, or pass --force to write the bundle files into it."
            )
    marker = json.dumps({"files": sorted(files), "planner_version": __version__}, indent=2) + "\n"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise PlannerError(f"cannot create --out directory {str(target)!r}: {exc.strerror or exc}.") from None
    try:
        for name, text in {**files, MARKER: marker}.items():
            path = staging / name
            path.write_text(text, encoding="utf-8")
            path.chmod(0o755 if name in EXECUTABLE else 0o644)
        if not target.exists():
            staging.chmod(0o755)
            os.rename(staging, target)  # the whole bundle appears at once
        else:
            for name in files:
                os.replace(staging / name, target / name)
            for stale in sorted(set(previous or ()) - set(files)):
                if (target / stale).is_file():  # a file of the previous bundle (e.g. ds_config.json)
                    (target / stale).unlink()
            os.replace(staging / MARKER, target / MARKER)
    except OSError as exc:
        raise PlannerError(f"cannot write the bundle into {str(target)!r}: {exc.strerror or exc}.") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(target / name for name in files)
