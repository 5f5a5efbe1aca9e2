"""The run bundle: render every file of a plan (pure), then write them all or nothing.

``render_bundle`` returns ``{filename: text}`` and touches nothing. ``write_bundle`` writes those files and
the marker ``.planner-bundle.json``, which records the SHA-256 of every file planner wrote, through
``write_files`` (bundle_files.py: the marker, the ownership rules and the all-or-nothing writes, re-exported
here).
"""

from __future__ import annotations

import json
import os
import pprint
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from planner.emit.accelerate_config import render_accelerate_yaml
from planner.emit.bundle_files import (
    BUNDLE_FILES,
    EXECUTABLE,
    FILE_MAX_BYTES,
    MARKER,
    MARKER_FORMAT,
    MARKER_MAX_BYTES,
    read_marker,
    write_files,
)
from planner.emit.ds_config import MAX_GRAD_NORM, deepspeed_config
from planner.emit.launch import render_launch_sh
from planner.emit.plan_md import render_plan_md
from planner.emit.sample_data import SAMPLE_DATASET, render_sample_jsonl
from planner.emit.torchrun_launch import render_torchrun_sh
from planner.emit.train_script import PLACEHOLDER, TEMPLATE
from planner.emit.trl_bundle import render_trl_files
from planner.errors import PlannerError
from planner.estimate.result import Estimate
from planner.plan.types import Recommendation
from planner.specs import Cluster, ModelSpec, Plan, TrainSpec, train_spec_to_dict

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
    return (
        f"{train.method.value}, {train.parallelism.label}, micro-batch {train.micro_batch} x "
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
    if not train.task.is_default:  # --task dpo or grpo: TRL's own trainer (trl_bundle.py)
        return render_trl_files(model, train, cluster, estimate, global_batch_size=global_batch_size,
                                model_ref=model_ref, dataset=dataset, tokenizer=tokenizer, label=label)
    has_ds = train.uses_deepspeed
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
        "activation_offload": train.activation_offload,
        "optimizer_in_backward": train.optimizer_in_backward,
        "compile": train.compile,
        "packing": train.packing,
        "selective_ac": train.selective_ac,
        "attn_impl": t["attn_impl"],
        "dropout": train.dropout,
        "lora": t["lora"],
        "quant": t["quant"],
        "lora_dtype": t["lora_dtype"],
        "qlora_prep": t["qlora_prep"],
        "loss": t["loss"],
        "zero_stage": train.zero_stage,
        "offload": t["offload"],
        "deepspeed": "ds_config.json" if has_ds else None,
        "max_grad_norm": MAX_GRAD_NORM,
        "num_gpus": cluster.num_gpus,
        "num_nodes": cluster.num_nodes,
        "global_batch_size": global_batch_size,
        **({"fsdp": train.parallelism.fsdp_config.to_dict()} if train.uses_fsdp2 else {}),  # train.py --engine fsdp2
    }
    files = {
        "train.py": render_train_script(plan_values),
        "accelerate_config.yaml": render_accelerate_yaml(train, cluster),
        "launch.sh": (render_torchrun_sh if train.uses_fsdp2 else render_launch_sh)(
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


def _parts(plan: Plan | Recommendation, estimate: Estimate | None) -> tuple[ModelSpec, TrainSpec, Cluster, Estimate, int]:
    """A Recommendation carries its estimate; a Plan needs ``estimate``."""
    if isinstance(plan, Recommendation):
        plan, estimate = plan.plan, estimate or plan.estimate
    if estimate is None:
        raise PlannerError("a bundle needs the plan's estimate: pass a Recommendation or estimate=.")
    return plan.model, plan.train, plan.cluster, estimate, plan.global_batch_size



def write_bundle(
    plan: Plan | Recommendation,
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
    if isinstance(plan, Recommendation):
        # keep its runners-up and rejected plans beside the bundle (read by `planner report`).
        files["plan.json"] = json.dumps(plan.to_dict(), indent=2, sort_keys=True) + "\n"
    return write_files(files, out_dir, force=force)


__all__ = ["BUNDLE_FILES", "DEFAULT_DATASET", "EXECUTABLE", "FILE_MAX_BYTES", "MARKER", "MARKER_FORMAT", "MARKER_MAX_BYTES",
           "catalog_hub_ids", "read_marker", "render_bundle", "render_train_script", "weights_reference", "write_bundle",
           "write_files"]
