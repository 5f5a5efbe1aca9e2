"""The training configs people already have, read into planner's specs (``planner estimate --from FILE``).

Formats: LLaMA-Factory YAML (``src/llamafactory/hparams/*.py``), axolotl YAML
(``src/axolotl/utils/schemas/config.py``), torchtune recipe YAML (``recipes/configs/``), and Hugging Face
``TrainingArguments`` / TRL ``SFTConfig`` + ``ModelConfig`` fields as JSON or YAML (transformers
``training_args.py``, TRL ``trl/trainer/sft_config.py``, ``trl/trainer/model_config.py``), and the run bundle
``planner recommend --out`` writes (its directory or train.py; bundle.py). The DeepSpeed JSON a
config names (``deepspeed:``) is followed, and so is an accelerate config given beside it (the file of
``accelerate launch --config_file``); of DeepSpeed only the ZeRO stage, the offload targets and the bf16/fp16
flags are read for now.

Every field that changes memory or time is mapped with the project's own name and default (the loss recipe in
``loss_fields``); a field planner cannot represent that changes memory (FSDP, losses other than the standard,
chunked and fused ones, 8-bit base weights, DPO/PPO stages, optimizers it has no rule for, ...) raises
PlannerError with one sentence; every other field is listed in ``ignored`` with the reason, never dropped
silently. Pure: no torch, no network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import PlannerError
from planner.from_config.bundle import ACCELERATE_CONFIG, bundle, bundle_script, load_plan
from planner.from_config.formats import axolotl, hf, llamafactory, torchtune
from planner.from_config.fsdp_fields import fsdp_run
from planner.from_config.reader import Reader, autocast_precision, load_mapping
from planner.specs import TrainSpec

FORMATS = ("llamafactory", "axolotl", "torchtune", "hf", "bundle")


@dataclass(frozen=True)
class FromConfig:
    """What one training config says about a run, in planner's terms."""

    path: str
    format: str  # one of FORMATS
    model: str | None  # the catalog name where the hub id maps to one, else the id or path as written
    model_as_written: str | None
    train: TrainSpec
    num_gpus: int | None  # None: the config does not say
    num_nodes: int | None
    used: tuple[str, ...]  # the fields read, dotted ("model.lora_rank"), a DeepSpeed/accelerate file's prefixed
    ignored: tuple[tuple[str, str], ...]  # (field, why it was not used)
    notes: tuple[str, ...]
    # Of seq_len, micro_batch and grad_accum, those the file does not set: the project's documented default
    # stands, or planner's where the project has none (torchtune max_seq_len null, plain TrainingArguments).
    unset: frozenset[str] = frozenset()
    files: tuple[str, ...] = ()  # every file read: the config, then DeepSpeed / accelerate files


def read_training_config(path: str | Path, accelerate_config: str | Path | None = None,
                         fmt: str | None = None) -> FromConfig:
    """Read ``path`` (format detected from its fields unless ``fmt`` names one) and, when given, the accelerate
    config the run is launched with. Raises PlannerError with one sentence for anything unreadable or
    unrepresentable."""
    path = Path(path)
    script = bundle_script(path) if fmt in (None, "bundle") else None
    if script is not None:  # planner's own bundle (a directory or its train.py): the round trip
        path, fmt = script, "bundle"
        data = load_plan(script)
        if accelerate_config is None and (script.parent / ACCELERATE_CONFIG).is_file():
            accelerate_config = script.parent / ACCELERATE_CONFIG
    else:
        data = load_mapping(path)
    if fmt is None:
        fmt = detect_format(data, str(path))
    elif fmt not in FORMATS:
        raise PlannerError(f"config format {fmt!r} is not known; choose one of {', '.join(FORMATS)}.")
    r = Reader(data, path)
    if accelerate_config is not None:
        r.read_accelerate(Path(accelerate_config))
    reader = {"llamafactory": llamafactory, "axolotl": axolotl, "torchtune": torchtune, "hf": hf, "bundle": bundle}[fmt]
    kwargs = fsdp_run(r, reader(r))  # FSDP2 where the config (or its accelerate config) runs it
    if fmt != "bundle":  # the bundle writes planner's own --precision
        kwargs = autocast_precision(r, kwargs)
    r.list_unread()
    try:
        train = TrainSpec(**kwargs)
    except PlannerError as exc:
        raise PlannerError(f"{path.name}: {exc}") from None
    defaults = {"seq_len", "micro_batch", "grad_accum"} - r.set_fields
    return FromConfig(
        path=str(path), format=fmt, model=r.model, model_as_written=r.model_as_written, train=train,
        num_gpus=r.num_gpus, num_nodes=r.num_nodes, used=tuple(sorted(r.used)),
        ignored=tuple(sorted(r.ignored.items())), notes=tuple(r.notes), unset=frozenset(defaults),
        files=tuple(r.files),
    )


_MARKERS = {
    "llamafactory": {"finetuning_type", "cutoff_len", "lora_target", "template", "stage", "quantization_bit",
                     "quantization_method", "lora_rank", "flash_attn", "pure_bf16", "disable_gradient_checkpointing",
                     "additional_target"},
    "axolotl": {"base_model", "micro_batch_size", "sequence_len", "adapter", "lora_target_linear",
                "sample_packing", "flash_attention", "pad_to_sequence_len", "num_epochs", "lr_scheduler"},
    "hf": {"max_seq_length", "max_length", "use_peft", "attn_implementation", "torch_dtype", "dtype",
           "dataset_text_field", "use_bnb_nested_quant", "bnb_4bit_quant_type",
           "num_generations", "max_completion_length"},  # a TRL GRPOConfig (posttrain_fields.GRPO_FIELDS)
}
# TrainingArguments fields: a file with some of these and no format's own field is a TrainingArguments file.
_TRAINER_FIELDS = {"per_device_train_batch_size", "gradient_accumulation_steps", "output_dir", "optim",
                   "gradient_checkpointing", "learning_rate", "num_train_epochs", "bf16", "fp16"}


def detect_format(data: dict[str, Any], name: str = "the config") -> str:
    """The format whose own field names the config uses most; PlannerError for a DeepSpeed or accelerate
    config given alone, or for a file that names none."""
    if "distributed_type" in data or "compute_environment" in data:
        raise PlannerError(f"{name} is an accelerate config; give the training config and pass this file beside "
                           f"it as the accelerate config.")
    if "zero_optimization" in data or "train_micro_batch_size_per_gpu" in data:
        raise PlannerError(f"{name} is a DeepSpeed config; give the training config that names it (deepspeed:).")
    if any(isinstance(v, dict) and "_component_" in v for v in data.values()):
        return "torchtune"
    scores = {fmt: len(markers & set(data)) for fmt, markers in _MARKERS.items()}
    best = max(scores.values())
    winners = [fmt for fmt, s in scores.items() if s == best]
    if best == 0 and _TRAINER_FIELDS & set(data):
        return "hf"
    if best == 0 or len(winners) > 1:
        raise PlannerError(f"{name} is not recognisably a LLaMA-Factory, axolotl, torchtune or Hugging Face "
                           f"TrainingArguments/TRL config; name its format explicitly.")
    return winners[0]



__all__ = ["FORMATS", "FromConfig", "detect_format", "read_training_config"]
