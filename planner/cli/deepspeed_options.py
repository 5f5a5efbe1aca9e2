"""--deepspeed-config FILE: estimate, recommend, profile and report the run a user's DeepSpeed JSON configures.

The file is read as DeepSpeed 0.19.8 reads it under the HF Trainer (planner.deepspeed_config: DeepSpeed's defaults
for what is absent, "auto" as transformers resolves it, every key accounted for). What it changes in the run:

- the ZeRO stage and what is offloaded (``--zero``/``--offload`` typed beside it win),
- the precision from its ``bf16``/``fp16`` sections when they say true or false (``--precision`` typed wins;
  "auto" takes ``--precision``),
- DeepSpeed's buckets and thresholds (specs.ZeroConfig): ``reduce_bucket_size``, ``stage3_prefetch_bucket_size``,
  ``stage3_param_persistence_threshold``, ``stage3_max_reuse_distance``, ``sub_group_size``, ``overlap_comm``,
  ``contiguous_gradients`` (false modelled at stage 3; at stages 1-2 with offload DeepSpeed turns it back on, noted);
  "auto" stays "auto" (the Trainer's rule from the hidden size),
- its optimizer section: DeepSpeed builds its own Adam/AdamW (FusedAdam on the GPU, DeepSpeedCPUAdam with
  offload; deepspeed/runtime/engine.py ``_configure_basic_optimizer``), modelled as torch's fused AdamW, which
  likewise makes no copy of the second moment (``--optimizer`` typed wins).

What planner does not model is said in a note (``DeepSpeedChoice.notes``), never ignored silently; what it
cannot represent (contiguous_gradients off at stages 1-2 without offload, NVMe offload, parameters offloaded without
the optimizer) is
refused in one sentence.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from planner.errors import PlannerError
from planner.specs import Offload, ZeroConfig

DeepSpeedConfigOpt = Annotated[
    Path | None,
    typer.Option("--deepspeed-config", help="Your DeepSpeed JSON (ds_config.json): its ZeRO stage, offload, "
                 "buckets and thresholds, precision and optimizer, read as DeepSpeed 0.19.8 and the HF Trainer "
                 "read it; keys planner does not model are listed in a note. --zero, --offload, --precision and "
                 "--optimizer typed beside it win."),
]

# ZeroConfig's fields: the DeepSpeed keys (all under zero_optimization) that are read into it. "auto" is kept
# as None for the three the HF Trainer fills from the hidden size.
_ZERO_KEYS = ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold",
              "stage3_max_reuse_distance", "sub_group_size", "overlap_comm")
# Read into DeepSpeedSettings but not into the model; their effect at a non-default value, for the note.
_NOT_MODELLED = {
    "allgather_bucket_size": "the all-gather after the step runs on the partitions themselves",
    "stage3_max_live_parameters": "the estimate keeps what max_reuse_distance keeps gathered",
    "stage3_model_persistence_threshold": "only the per-parameter persistence threshold is modelled",
    "round_robin_gradients": "it only reorders which rank copies which gradients",
}
_NOT_MODELLED_DEFAULTS = {"allgather_bucket_size": 500_000_000, "stage3_max_live_parameters": 1_000_000_000,
                          "stage3_model_persistence_threshold": None, "round_robin_gradients": False}


@dataclasses.dataclass(frozen=True)
class DeepSpeedChoice:
    """What a --deepspeed-config sets: the stage, offload, precision and optimizer (None: the file leaves it to
    the Trainer's flags), DeepSpeed's ZeRO knobs, and the notes for the user."""

    stage: int
    offload: Offload
    precision: str | None
    optimizer: str | None
    zero_config: ZeroConfig
    notes: tuple[str, ...]


def read_choice(path: Path) -> DeepSpeedChoice:
    """The run ``path`` configures (one sentence for a file that cannot be read or a setting planner cannot
    represent)."""
    from planner.deepspeed_config import OffloadDevice, read_deepspeed_config

    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlannerError(f"cannot read --deepspeed-config {str(path)!r}: {exc.strerror or exc}.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlannerError(f"--deepspeed-config {str(path)!r} is not valid JSON: {exc}.") from None
    if not isinstance(raw, dict):
        raise PlannerError(f"--deepspeed-config {str(path)!r} must hold a JSON object.")
    # Any hidden size resolves the "auto" buckets; those are kept as "auto" below, so the number is never used.
    ds = read_deepspeed_config(raw, hidden_size=1)
    zero_raw = raw.get("zero_optimization") if isinstance(raw.get("zero_optimization"), dict) else {}
    if not ds.contiguous_gradients and ds.zero_stage in (1, 2) and ds.offload_optimizer.device is OffloadDevice.NONE:
        # stage_1_and_2.py: ``contiguous_gradients or self.cpu_offload`` (offload turns it on again)
        raise PlannerError("--deepspeed-config sets contiguous_gradients false at ZeRO stage 1 or 2, which planner does "
                           "not model (each gradient is then reduced in place); remove it or set it true.")
    nvme = [p for p, part in (("offload_optimizer", ds.offload_optimizer), ("offload_param", ds.offload_param))
            if part.device is OffloadDevice.NVME]
    if nvme and ds.zero_stage > 0:
        raise PlannerError(f"--deepspeed-config offloads to NVMe ({', '.join(nvme)}), which planner does not model "
                           "(only CPU offload).")
    opt_cpu = ds.offload_optimizer.device is OffloadDevice.CPU and ds.zero_stage > 0
    param_cpu = ds.offload_param.device is OffloadDevice.CPU and ds.zero_stage == 3
    if param_cpu and not opt_cpu:
        raise PlannerError("--deepspeed-config offloads the parameters without the optimizer, which planner does "
                           "not model; offload the optimizer too, or neither.")
    offload = Offload.OPTIMIZER_PARAMS if param_cpu else Offload.OPTIMIZER if opt_cpu else Offload.NONE
    unpinned = [name for name, on, part in (("offload_optimizer", opt_cpu, ds.offload_optimizer),
                                            ("offload_param", param_cpu, ds.offload_param)) if on and not part.pin_memory]
    pin_notes = [f"--deepspeed-config: {', '.join(unpinned)} pin_memory false is not modelled: the host RAM figure "
                 "assumes pinned buffers (DeepSpeed's default), each rounded up to a power of two by PyTorch's pinned "
                 "allocator; unpinned, the host needs about the requested bytes."] if unpinned else []
    values: dict[str, Any] = {}
    for key in _ZERO_KEYS:
        if zero_raw.get(key) == "auto" or _short_name(zero_raw, key) == "auto":
            continue  # ZeroConfig's None: the Trainer's rule from the hidden size
        if key == "overlap_comm" and "overlap_comm" not in zero_raw:
            continue  # None: DeepSpeed's default (on for stage 3 only)
        # written, or absent: DeepSpeed's own default (the Trainer fills only keys that say "auto")
        values[key] = getattr(ds, key)
    if ds.zero_stage == 3 and not ds.contiguous_gradients:
        values["contiguous_gradients"] = False
    zero_config = ZeroConfig(**values) if ds.zero_stage > 0 else ZeroConfig()
    notes = [f"--deepspeed-config: {note}" for note in ds.notes] + pin_notes
    if not ds.contiguous_gradients and ds.zero_stage in (1, 2):
        # only reached with offload_optimizer (refused above without it): deepspeed 0.19.8 stage_1_and_2.py
        # ``DeepSpeedZeroOptimizer.__init__``: ``self.contiguous_gradients = contiguous_gradients or self.cpu_offload``
        notes.append("--deepspeed-config: contiguous_gradients false has no effect here: DeepSpeed turns it back on "
                     "at ZeRO stage 1 or 2 when the optimizer is offloaded, and planner models it on.")
    for key, why in _NOT_MODELLED.items():
        if getattr(ds, key) != _NOT_MODELLED_DEFAULTS[key] and (key in zero_raw or _short_key(key) in zero_raw):
            notes.append(f"--deepspeed-config: {key} = {getattr(ds, key)} is not modelled ({why}).")
    precision = None
    if ds.bf16_enabled:
        precision = "bf16-mixed"
    elif ds.fp16_enabled:
        precision = "fp16-mixed"
    elif ds.bf16_enabled is False and ds.fp16_enabled is False and _states_precision(raw):
        precision = "fp32"
    optimizer = None
    if ds.optimizer_type in ("adam", "adamw"):
        optimizer = "adamw-fused"
        notes.append("--deepspeed-config: its optimizer section makes DeepSpeed build its own Adam (FusedAdam on "
                     "the GPU, DeepSpeedCPUAdam with offload), modelled as torch's fused AdamW: no copy of the "
                     "second moment at the step.")
    elif ds.optimizer_type is not None:
        raise PlannerError(f"--deepspeed-config's optimizer {ds.optimizer_type!r} is not modelled; planner models "
                           "Adam/AdamW (or remove the optimizer section and choose --optimizer).")
    return DeepSpeedChoice(stage=ds.zero_stage, offload=offload, precision=precision, optimizer=optimizer,
                           zero_config=zero_config, notes=tuple(notes))


def _short_key(key: str) -> str:
    """DeepSpeed's alias without the ``stage3_`` prefix (DeepSpeedZeroConfig accepts both)."""
    return key.removeprefix("stage3_")


def _short_name(zero_raw: dict, key: str):
    return zero_raw.get(_short_key(key)) if key.startswith("stage3_") else None


def _states_precision(raw: dict) -> bool:
    """Whether the file states its precision: a bf16 or fp16 section with ``enabled`` written out."""
    return any(isinstance(raw.get(k), dict) and "enabled" in raw[k] for k in ("bf16", "fp16", "bfloat16"))


def apply(flags):
    """``flags`` (options.TrainingFlags) with what its --deepspeed-config sets, for every field the user did not
    type; its ZeRO knobs and notes ride along (``zero_config``, ``deepspeed_notes``). Unchanged without one."""
    if flags.deepspeed_config is None:
        return flags
    choice = read_choice(flags.deepspeed_config)
    typed = flags.typed
    changes: dict[str, Any] = {"zero_config": choice.zero_config, "deepspeed_notes": choice.notes}
    if "zero" not in typed:
        changes["zero"] = choice.stage
    if "offload" not in typed:
        changes["offload"] = choice.offload.value
    if choice.precision is not None and "precision" not in typed:
        changes["precision"] = choice.precision
    if choice.optimizer is not None and "optimizer" not in typed:
        changes["optimizer"] = choice.optimizer
    notes = list(choice.notes)
    zero = changes.get("zero", flags.zero)
    if zero == 0 and not choice.zero_config.is_default:
        notes.append("--deepspeed-config: its buckets and thresholds do not apply at ZeRO stage 0 (no DeepSpeed).")
    changes["deepspeed_notes"] = tuple(notes)
    return dataclasses.replace(flags, **changes)


def echo_notes(flags) -> None:
    """A --deepspeed-config's notes on stderr, one line each (what planner did not model, what the Trainer fills)."""
    for note in flags.deepspeed_notes:
        typer.echo(f"note: {note}", err=True)


def json_block(flags) -> dict | None:
    """The ``deepspeed_config`` block of --json output: the file and its notes (None without one)."""
    if flags.deepspeed_config is None:
        return None
    return {"path": str(flags.deepspeed_config), "zero_config": flags.zero_config.to_dict(),
            "notes": list(flags.deepspeed_notes)}
