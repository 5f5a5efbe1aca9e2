"""planner's own run bundle read back (``--from BUNDLE_DIR`` or ``--from BUNDLE_DIR/train.py``): the round trip.

``planner recommend --out DIR`` writes ``train.py`` whose ``PLAN = {...}`` literal holds the planned values
(planner/emit/bundle.py ``render_bundle``; train.py's options default to them), ``ds_config.json`` (what the
HF Trainer hands DeepSpeed) and ``accelerate_config.yaml`` (what ``launch.sh`` launches with). The run those
files describe is read from the files the run itself reads: the recipe from PLAN, the ZeRO stage and offload
from the DeepSpeed JSON that PLAN's ``deepspeed`` names (train.py passes it to ``TrainingArguments``), the
processes and machines from the accelerate config beside it. PLAN's ``zero_stage`` and ``offload`` are
PLAN.md's record only (train.py never reads them). The literal is parsed with ``ast.literal_eval``: nothing
of the file is executed.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from planner.catalog import model_names
from planner.errors import PlannerError
from planner.from_config.reader import MAX_CONFIG_BYTES, Reader
from planner.from_config.trl_bundle_fields import bundle_task
from planner.specs import (
    AttnImpl,
    FsdpConfig,
    LoraSpec,
    Loss,
    LossSpec,
    Method,
    Optimizer,
    Parallelism,
    Precision,
    QuantSpec,
    QuantType,
)

TRAIN_SCRIPT = "train.py"
ACCELERATE_CONFIG = "accelerate_config.yaml"
MODEL_CONFIG = "model_config.json"
# PLAN keys that describe the bundle rather than the training step's memory.
NO_MEMORY = frozenset({"dataset", "text_field", "max_grad_norm", "global_batch_size", "num_gpus", "num_nodes"})
RECORD_ONLY = frozenset({"zero_stage", "offload"})


def bundle_script(path: Path) -> Path | None:
    """train.py of a bundle when ``path`` is a bundle directory or its train.py; None for any other path."""
    script = path / TRAIN_SCRIPT if path.is_dir() else path
    if script.name != TRAIN_SCRIPT or not script.is_file():
        return None
    return script


def load_plan(script: Path) -> dict[str, Any]:
    """The ``PLAN = {...}`` literal of a bundle's train.py; one sentence when there is none."""
    size = script.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise PlannerError(f"{str(script)!r} is {size:,} bytes, larger than any train.py planner writes.")
    try:
        tree = ast.parse(script.read_bytes().decode("utf-8"), filename=str(script))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        raise PlannerError(f"{str(script)!r} is not a Python file planner can read.") from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["PLAN"]:
            try:
                plan = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, RecursionError):
                break
            if isinstance(plan, dict):
                return plan
            break
    raise PlannerError(f"{str(script)!r} has no PLAN literal: it is not the train.py of a bundle planner wrote.")


def _choice(r: Reader, key: str, enum, default: str):
    value = r.text(key, default)
    try:
        return enum(value)
    except ValueError:
        raise r.bad(key, value, "one of " + ", ".join(e.value for e in enum)) from None


def _section(r: Reader, key: str) -> Reader:
    value = r.get(key, {})
    if not isinstance(value, dict):
        raise r.bad(key, value, "a mapping")
    sub = Reader(value, r.path)
    sub.name = f"{r.name}: PLAN[{key!r}]"
    return sub


def plan_fsdp(r: Reader) -> None:
    """PLAN's ``fsdp`` (an FSDP2 plan: train.py's own fully_shard loop under torchrun, ``--engine fsdp2``) wins over
    the accelerate config beside it, which is FSDP2's alternative launch through the Trainer."""
    fsdp = r.get("fsdp")
    if fsdp is None:
        return
    if not isinstance(fsdp, dict):
        raise r.bad("fsdp", fsdp, "a mapping")
    from planner.from_config.fsdp_fields import ACCELERATE_NOTE

    r.fsdp, r.fsdp_from = FsdpConfig.from_dict(fsdp), "bundle"
    r.notes[:] = [n for n in r.notes if n != ACCELERATE_NOTE]


def bundle(r: Reader) -> dict[str, Any]:
    """TrainSpec keywords of the run a bundle's train.py makes with its defaults (``r.data`` is PLAN)."""
    r.no_memory = NO_MEMORY
    for key in RECORD_ONLY & set(r.data):
        r.ignored[key] = "PLAN.md's record; train.py runs the DeepSpeed JSON PLAN['deepspeed'] names"
    name = r.text("model_name")
    r.get("model")
    beside = r.path.parent / MODEL_CONFIG
    if name in model_names():
        r.model = r.model_as_written = name
    elif beside.is_file():  # a model outside the catalog: the config the bundle carries (train.py --random-init)
        r.model = r.model_as_written = str(beside.resolve())
        r.files.append(str(beside))
    else:
        r.notes.append(f"{r.name} names no catalog model and has no {MODEL_CONFIG} beside it; give --model.")
    lora, quant, loss = _section(r, "lora"), _section(r, "quant"), _section(r, "loss")
    ds = r.deepspeed()  # train.py's TrainingArguments(deepspeed=...), else the accelerate config's
    plan_fsdp(r)
    dropout = r.get("dropout")
    if dropout is not None and (isinstance(dropout, bool) or not isinstance(dropout, (int, float))):
        raise r.bad("dropout", dropout, "a number or None")
    r.set_fields |= {"seq_len", "micro_batch", "grad_accum"}
    return dict(
        method=_choice(r, "method", Method, "full"),
        precision=_choice(r, "precision", Precision, "bf16-mixed"),
        optimizer=_choice(r, "optimizer", Optimizer, "adamw"),
        lora=LoraSpec(rank=lora.whole("rank", 16), alpha=lora.whole("alpha", 32), dropout=lora.prob("dropout", 0.05),
                      targets=lora.names("targets") or ("all-linear",),
                      modules_to_save=lora.names("modules_to_save") or ()),
        quant=QuantSpec(quant_type=_choice(quant, "quant_type", QuantType, "nf4"),
                        double_quant=bool(quant.flag("double_quant", True)),
                        blocksize=quant.whole("blocksize", 64)),
        # a bundle's ds_config.json at stage 0 is DeepSpeed's own engine (emit/ds_config.py writes one only then)
        parallelism=Parallelism.from_zero(ds["stage"], ds["offload"], deepspeed_stage0=True) if ds else Parallelism(),
        micro_batch=r.whole("micro_batch", None),
        seq_len=r.whole("seq_len", None),
        grad_accum=r.whole("grad_accum", 1),
        grad_checkpointing=bool(r.flag("grad_checkpointing", False)),
        attn_impl=_choice(r, "attn_impl", AttnImpl, "sdpa"),
        dropout=None if dropout is None else float(dropout),
        optimizer_in_backward=bool(r.flag("optimizer_in_backward", False)),
        packing=bool(r.flag("packing", False)),
        task=bundle_task(r),  # a --task dpo or grpo bundle (TRL's trainer); sft without PLAN["task"]
        # the loss train.py runs (PLAN['loss'], written by emit/bundle.py): recommend may choose one (plan/recipes.py,
        # plan/faster.py), and the read-back must estimate what the bundle trains
        loss=LossSpec(_choice(loss, "kind", Loss, "standard"), loss.whole("chunks", LossSpec().chunks)),
    )
