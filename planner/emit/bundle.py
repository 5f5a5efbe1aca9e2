"""The run bundle: render every file of a plan (pure), then write them all or nothing.

``render_bundle`` returns ``{filename: text}`` and touches nothing. ``write_bundle`` writes those files and
the marker ``.planner-bundle.json``, which records the SHA-256 of every file planner wrote. The rules:

- A new directory is assembled under a temporary name beside the target and renamed into place.
- An existing directory that is empty or holds a bundle planner wrote (a valid marker) is updated; one that
  holds anything else needs ``force``, and even then only the bundle's own file names are written.
- A file planner wrote and the user edited since (its hash no longer matches the marker), or a file at a
  bundle name planner did not write, is never overwritten without ``force`` and never deleted: a re-run that
  would do either is refused. A file of the previous bundle that the new plan lacks (``ds_config.json``) is
  removed only when it is still exactly what planner wrote.
- The marker counts only when it is a small regular file (not a link, FIFO or device) that lists nothing
  but bundle file names; anything else is no marker.
- An update is staged in a temporary directory inside the target, the files it replaces are kept aside,
  and the new files are renamed in with the marker last; a failure at any step puts every old file back.
"""

from __future__ import annotations

import hashlib
import json
import os
import pprint
import re
import shutil
import stat
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
from planner.emit.torchrun_launch import render_torchrun_sh
from planner.emit.train_script import PLACEHOLDER, TEMPLATE
from planner.errors import PlannerError
from planner.estimate.result import Estimate
from planner.plan.types import Recommendation
from planner.safe_write import read_small_regular, sha256_of_regular
from planner.specs import Cluster, ModelSpec, Plan, TrainSpec, train_spec_to_dict

MARKER = ".planner-bundle.json"
MARKER_FORMAT = 2  # 1: {"files": [names]}; 2: {"files": {name: sha256}}
MARKER_MAX_BYTES = 64 * 1024
FILE_MAX_BYTES = 64 * 2**20  # a bundle file larger than this is not one planner wrote
EXECUTABLE = ("launch.sh", "train.py")
DEFAULT_DATASET = "data.jsonl"
# Every name a bundle can hold: write_files never writes, replaces or removes anything else.
BUNDLE_FILES = frozenset({"PLAN.md", "accelerate_config.yaml", "ds_config.json", "launch.sh", "model_config.json",
                          "plan.json", "train.py", SAMPLE_DATASET})  # fmt: skip
_SHA256 = re.compile(r"[0-9a-f]{64}")
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
    if not train.task.is_default:
        # the bundle's train.py runs the HF Trainer on text (supervised fine-tuning): it would not train what was
        # estimated; a TRL DPOTrainer bundle is issue 21's item 4
        raise PlannerError(f"the run bundle trains with the HF Trainer (sft); a --task {train.task.kind.value} bundle "
                           "(a TRL script) is not written yet: plan without --out, or with --task sft.")
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


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_marker(directory: Path) -> dict[str, str | None] | None:
    """What the marker in ``directory`` records, ``{name: sha256}`` (None hashes from a format-1 marker); None
    when there is no valid marker: not a small regular file, not JSON, or naming a file no bundle has."""
    raw = read_small_regular(directory / MARKER, MARKER_MAX_BYTES)
    if raw is None:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if isinstance(files, list):
        recorded: dict[str, str | None] = {f: None for f in files if isinstance(f, str)}
        if len(recorded) != len(files):
            return None
    elif isinstance(files, dict):
        recorded = dict(files)
        if not all(isinstance(h, str) and _SHA256.fullmatch(h) for h in recorded.values()):
            return None
    else:
        return None
    if not set(recorded) <= BUNDLE_FILES:
        return None
    return recorded


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


def _write_new(path: Path, text: str) -> None:
    with open(path, "x", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    path.chmod(0o755 if path.name in EXECUTABLE else 0o644)


def _plural(names: list[str]) -> str:
    return ", ".join(names)


def write_files(files: dict[str, str], out_dir: str | os.PathLike, *, force: bool = False) -> list[Path]:
    """Write ``files`` into ``out_dir`` with the ownership rules of the module doc; returns the written paths."""
    if not str(out_dir).strip():
        raise PlannerError("--out must name a directory, got an empty path.")
    unknown = sorted(set(files) - BUNDLE_FILES)
    if unknown:
        raise PlannerError(f"{_plural(unknown)} is not a bundle file name; a bundle holds {_plural(sorted(BUNDLE_FILES))}.")
    target = Path(out_dir).expanduser()
    if target.exists() and not target.is_dir():
        raise PlannerError(f"--out {str(target)!r} is a file, not a directory; choose a directory path.")
    hashes = {name: _sha256(text) for name, text in files.items()}
    if not target.exists():
        _write_new_directory(files, hashes, target)
    else:
        _update_directory(files, hashes, target, force)
    return sorted(target / name for name in files)


def _marker_text(hashes: dict[str, str]) -> str:
    return json.dumps(
        {"files": dict(sorted(hashes.items())), "format": MARKER_FORMAT, "planner_version": __version__}, indent=2
    ) + "\n"


def _write_new_directory(files: dict[str, str], hashes: dict[str, str], target: Path) -> None:
    """Assemble the bundle under a temporary name beside ``target`` and rename it into place: all at once."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise PlannerError(f"cannot create --out directory {str(target)!r}: {exc.strerror or exc}.") from None
    try:
        for name, text in {**files, MARKER: _marker_text(hashes)}.items():
            _write_new(staging / name, text)
        staging.chmod(0o755)
        os.rename(staging, target)
    except OSError as exc:
        raise PlannerError(f"cannot write the bundle into {str(target)!r}: {exc.strerror or exc}.") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _update_directory(files: dict[str, str], hashes: dict[str, str], target: Path, force: bool) -> None:
    """Update the bundle in the existing directory ``target``: check ownership, stage, swap, roll back."""
    shown = str(target)
    try:
        entries = {p.name: os.lstat(p) for p in target.iterdir()}
    except OSError as exc:
        raise PlannerError(f"cannot read --out directory {shown!r}: {exc.strerror or exc}.") from None
    recorded = read_marker(target) if MARKER in entries else None
    if entries and recorded is None and not force:
        raise PlannerError(
            f"--out directory {shown!r} is not empty and was not written by planner; "
            "choose a new or empty directory, or pass --force to write the bundle files into it."
        )
    recorded = recorded or {}
    for name in sorted({*files, MARKER} & set(entries)):
        if stat.S_ISDIR(entries[name].st_mode):
            raise PlannerError(f"--out {shown!r} holds a directory named {name!r}, where the bundle writes a file; "
                               "move it away or choose another --out.")  # fmt: skip

    def planners(name: str) -> bool:
        """Still exactly what planner wrote (or what it is about to write)."""
        if not stat.S_ISREG(entries[name].st_mode):
            return False
        current = sha256_of_regular(target / name, FILE_MAX_BYTES)
        return current is not None and current in (recorded.get(name), hashes.get(name))

    overwrite_user = [n for n in sorted(files) if n in entries and not planners(n)]
    stale = [n for n in sorted(set(recorded) - set(files)) if n in entries]
    remove = [n for n in stale if planners(n)]
    keep_user = [n for n in stale if n not in remove]
    if (overwrite_user or keep_user) and not force:
        raise PlannerError(
            f"--out {shown!r}: {_plural(overwrite_user + keep_user)} changed since planner wrote "
            f"{'them' if len(overwrite_user + keep_user) > 1 else 'it'} (or planner did not write "
            f"{'them' if len(overwrite_user + keep_user) > 1 else 'it'}); pass --force to overwrite the bundle's "
            "files anyway (planner never deletes a changed file), or choose another --out."
        )
    # keep_user (changed files the new plan lacks) stay, and leave the marker: they are the user's now.
    _swap_in(files, hashes, target, remove)


def _swap_in(files: dict[str, str], hashes: dict[str, str], target: Path, remove: list[str]) -> None:
    """Stage the files inside ``target``, then rename them in (the marker last), keeping every replaced or
    removed file aside; on any failure put the old files back, so the directory is the old bundle."""
    shown = str(target)
    try:
        staging = Path(tempfile.mkdtemp(prefix=".planner-bundle-", suffix=".tmp", dir=target))
    except OSError as exc:
        raise PlannerError(f"cannot write the bundle into {shown!r}: {exc.strerror or exc}.") from None
    aside = staging / ".previous"
    try:
        aside.mkdir()
        for name, text in files.items():
            _write_new(staging / name, text)
        _write_new(staging / MARKER, _marker_text(hashes))
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise PlannerError(f"cannot write the bundle into {shown!r}: {exc.strerror or exc}.") from None
    done: list[tuple[str, bool]] = []  # (name, an old file is aside) for every change made to target
    steps = [*(("put", n) for n in sorted(files)), *(("remove", n) for n in remove), ("put", MARKER)]
    try:
        for op, name in steps:
            dst = target / name
            if op == "remove":
                os.replace(dst, aside / name)
                done.append((name, True))
            elif not os.path.lexists(dst):
                os.replace(staging / name, dst)
                done.append((name, False))
            else:
                try:  # a hard link keeps the old file aside with no moment where the name is missing
                    os.link(dst, aside / name, follow_symlinks=False)
                except OSError:
                    os.replace(dst, aside / name)
                    done.append((name, True))
                    os.replace(staging / name, dst)
                else:
                    os.replace(staging / name, dst)
                    done.append((name, True))
    except OSError as exc:
        failed = []
        for name, had_old in reversed(done):
            try:
                if had_old:
                    os.replace(aside / name, target / name)
                else:
                    os.unlink(target / name)
            except OSError:
                failed.append(name)
        if failed:  # keep the staging directory: the old files are in it
            raise PlannerError(
                f"cannot write the bundle into {shown!r} ({exc.strerror or exc}) nor put back {_plural(failed)}; "
                f"the previous files are in {str(aside)!r}."
            ) from None
        shutil.rmtree(staging, ignore_errors=True)
        raise PlannerError(
            f"cannot write the bundle into {shown!r}: {exc.strerror or exc}; the previous bundle was left as it was."
        ) from None
    shutil.rmtree(staging, ignore_errors=True)
