"""Reading one training config: the file as a mapping, the fields read and ignored, the DeepSpeed and accelerate
files it points to, and the Hugging Face Trainer rules every Trainer-based format shares (precision, optimizer
names, attention)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from planner.errors import PlannerError
from planner.from_config.fields import HF_OPTIMIZERS
from planner.models import catalog_name_for_hub_id
from planner.specs import AttnImpl, Method, Offload, Optimizer, Precision, TrainSpec

# A training config is a page of text; anything larger is not one (and is not parsed).
MAX_CONFIG_BYTES = 1_000_000
# peft's default LoRA targets for the Llama, Mistral, Qwen2 and Gemma families when none are named
# (peft/utils/constants.py TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING).
PEFT_DEFAULT_TARGETS = ("q_proj", "v_proj")


def load_mapping(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise PlannerError(f"training config {str(path)!r} is not a readable file.")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise PlannerError(f"training config {str(path)!r} is {size:,} bytes, far larger than any training config.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise PlannerError(f"training config {str(path)!r} is not UTF-8 text.") from None
    except OSError as exc:
        raise PlannerError(f"cannot read training config {str(path)!r}: {exc.strerror or exc}.") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise PlannerError(f"{path.name} is not valid JSON ({exc.msg} at line {exc.lineno}).") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PlannerError(f"{path.name} is not valid YAML{where}.") from None
    except (RecursionError, ValueError):
        raise PlannerError(f"{path.name} is not a training config planner can read (too deep or too large a number).") from None
    if not isinstance(data, dict):
        raise PlannerError(f"{path.name} holds a {type(data).__name__}, not a mapping of training fields.")
    return data


# Fields only one format has (a field several share, like per_device_train_batch_size, decides nothing).
class Reader:
    """One config's fields: what was read, what was ignored and why, the notes, and the launch facts."""

    def __init__(self, data: dict[str, Any], path: Path) -> None:
        self.data, self.path, self.name = data, path, path.name
        self.used: set[str] = set()
        self.ignored: dict[str, str] = {}
        self.notes: list[str] = []
        self.files = [str(path)]
        self.set_fields: set[str] = set()  # TrainSpec fields the config determines
        self.model: str | None = None
        self.model_as_written: str | None = None
        self.num_gpus: int | None = None
        self.num_nodes: int | None = None
        self.accel_precision: str | None = None  # accelerate's mixed_precision: "no", "bf16", "fp16"
        self.accel_ds: dict[str, Any] | None = None  # stage, offload from accelerate's deepspeed_config
        self.no_memory: frozenset[str] = frozenset()
        self.fsdp = None  # FSDP2's FsdpConfig where the config runs it (fsdp_fields.py), and who wraps it
        self.fsdp_from = ""

    # -------- typed access; every access marks the field used

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str, default: Any = None) -> Any:
        if key in self.data:
            self.used.add(key)
        value = self.data.get(key)
        return default if value is None else value

    def bad(self, key: str, value: Any, want: str) -> PlannerError:
        from planner.config_fields import shown

        return PlannerError(f"{self.name}: {key} is {shown(value)}, not {want}.")

    def whole(self, key: str, default: int | None, minimum: int = 1) -> int | None:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= 10**9:
            raise self.bad(key, value, f"a whole number from {minimum}")
        return value

    def flag(self, key: str, default: bool | None = False) -> bool | None:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise self.bad(key, value, "true or false")
        return value

    def text(self, key: str, default: str | None = None) -> str | None:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.bad(key, value, "a string")
        return value

    def prob(self, key: str, default: float) -> float:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise self.bad(key, value, "a probability in [0, 1)")
        return float(value)

    def names(self, key: str) -> tuple[str, ...] | None:
        """A list of module names, or a comma-separated string of them."""
        value = self.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.bad(key, value, "a list of module names")
        return tuple(value)

    def refuse(self, key: str, why: str) -> None:
        raise PlannerError(f"{self.name}: {key} {why}")

    def refuse_if(self, key: str, why: str) -> None:
        """Refuse when ``key`` is set to anything truthy (a feature switched on)."""
        value = self.data.get(key)
        if value not in (None, False, 0, "", [], {}, "none", "None", "no", "false", "False"):
            self.used.add(key)
            self.refuse(f"{key}: {value}", why)
        if key in self.data:
            self.used.add(key)

    def set_model(self, written: str | None, key: str) -> None:
        if written is None:
            self.notes.append(f"{self.name} names no model; give one with --model.")
            return
        self.model_as_written = written
        name = catalog_name_for_hub_id(written) if "/" in written else None
        self.model = name or written
        if name:
            self.notes.append(f"{key} {written!r} has the architecture of catalog model {name!r}.")

    def list_unread(self) -> None:
        for key in self.data:
            if key in self.used:
                continue
            if key in self.no_memory:
                self.ignored.setdefault(key, "does not change memory or time")
            else:
                self.ignored.setdefault(key, "not a field planner reads")

    # -------- launch files

    def resolve(self, written: str, what: str) -> Path:
        """A path as the config wrote it: absolute, or relative to the config's folder or one above it (the
        projects' examples name files relative to the repository root they run from), or the working folder."""
        p = Path(written).expanduser()
        if p.is_absolute():
            candidates = [p]
        else:
            base = self.path.resolve().parent
            candidates = [d / p for d in (base, *base.parents)] + [Path.cwd() / p]
        for c in candidates:
            if c.is_file():
                return c
        raise PlannerError(f"{self.name}: the {what} {written!r} is not found beside the config, in a folder "
                           f"above it or in the working folder.")

    def read_deepspeed(self, source: Any, key: str) -> dict[str, Any]:
        """Stage, offload and the bf16/fp16 flags of a DeepSpeed config (a path or an inline mapping)."""
        if isinstance(source, str):
            p = self.resolve(source, "DeepSpeed config")
            self.files.append(str(p))
            ds, prefix = load_mapping(p), f"{p.name}:"
        elif isinstance(source, dict):
            ds, prefix = source, f"{key}."
        else:
            raise self.bad(key, source, "a DeepSpeed JSON path or mapping")
        zero = ds.get("zero_optimization") or {}
        if not isinstance(zero, dict):
            raise PlannerError(f"{prefix} zero_optimization is not a mapping.")
        stage = zero.get("stage", 0)
        if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
            raise PlannerError(f"{prefix} zero_optimization.stage is {stage!r}, not 0, 1, 2 or 3.")
        targets = {}
        for part in ("offload_optimizer", "offload_param"):
            device = (zero.get(part) or {}).get("device", "none") if isinstance(zero.get(part), dict) else "none"
            if device == "nvme":
                raise PlannerError(f"{prefix} zero_optimization.{part} offloads to NVMe, which planner does not "
                                   f"model (only CPU offload).")
            targets[part] = device == "cpu"
        out = {"stage": stage, "offload": offload(targets["offload_optimizer"], targets["offload_param"], prefix)}
        for flag in ("bf16", "fp16"):
            enabled = (ds.get(flag) or {}).get("enabled", False) if isinstance(ds.get(flag), dict) else False
            out[flag] = None if enabled == "auto" else bool(enabled)
        self.used.add(key)
        self.used |= {f"{prefix}zero_optimization.stage", f"{prefix}bf16", f"{prefix}fp16"}
        for k in ds:
            if k not in ("zero_optimization", "bf16", "fp16"):
                self.ignored[f"{prefix}{k}"] = "planner reads only DeepSpeed's stage, offload and bf16/fp16 flags"
        for k in zero:
            if k not in ("stage", "offload_optimizer", "offload_param"):
                self.ignored[f"{prefix}zero_optimization.{k}"] = (
                    "planner takes the Hugging Face Trainer's 'auto' bucket sizes and thresholds")
        return out

    def read_accelerate(self, path: Path) -> None:
        acc = load_mapping(path)
        self.files.append(str(path))
        name = path.name
        kind = str(acc.get("distributed_type", "NO")).upper()
        if kind in ("MEGATRON_LM", "XLA", "TP"):
            raise PlannerError(f"{name}: distributed_type {kind} is not modelled; planner models DDP, DeepSpeed "
                               f"ZeRO and FSDP2 only.")
        if acc.get("use_cpu") is True:
            raise PlannerError(f"{name}: use_cpu trains on the CPU; planner estimates GPU runs from a config.")
        processes, machines = acc.get("num_processes", 1), acc.get("num_machines", 1)
        for k, v in (("num_processes", processes), ("num_machines", machines)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PlannerError(f"{name}: {k} is {v!r}, not a whole number from 1.")
        self.num_gpus, self.num_nodes = processes, machines
        precision = str(acc.get("mixed_precision", "no")).lower()
        if precision not in ("no", "bf16", "fp16"):
            raise PlannerError(f"{name}: mixed_precision {precision!r} is not modelled (no, bf16 or fp16).")
        self.accel_precision = precision
        self.used |= {f"{name}:{k}" for k in ("distributed_type", "num_processes", "num_machines", "mixed_precision",
                                              "use_cpu") if k in acc}
        for k in acc:
            if k not in ("distributed_type", "num_processes", "num_machines", "mixed_precision", "deepspeed_config",
                         "use_cpu", "fsdp_config"):
                self.ignored[f"{name}:{k}"] = "planner reads only the processes, machines, precision and DeepSpeed"
        if kind == "FSDP":
            from planner.from_config.fsdp_fields import accelerate_fsdp

            accelerate_fsdp(self, acc, name)
        if kind == "DEEPSPEED":
            dsc = acc.get("deepspeed_config") or {}
            if dsc.get("deepspeed_config_file"):
                info = self.read_deepspeed(str(self.resolve(dsc["deepspeed_config_file"], "DeepSpeed config")),
                                           f"{name}:deepspeed_config_file")
            else:
                for part in ("offload_optimizer_device", "offload_param_device"):
                    if dsc.get(part) == "nvme":
                        raise PlannerError(f"{name}: {part} nvme is not modelled (only CPU offload).")
                stage = dsc.get("zero_stage", 2)
                if stage not in (0, 1, 2, 3):
                    raise PlannerError(f"{name}: zero_stage {stage!r} is not 0, 1, 2 or 3.")
                self.used |= {f"{name}:deepspeed_config.{k}" for k in ("zero_stage", "offload_optimizer_device",
                                                                         "offload_param_device") if k in dsc}
                for k in dsc:
                    if k not in ("zero_stage", "offload_optimizer_device", "offload_param_device"):
                        self.ignored[f"{name}:deepspeed_config.{k}"] = (
                            "does not change the training step's memory (the Trainer's own value wins)")
                info = {"stage": stage, "offload": offload(dsc.get("offload_optimizer_device") == "cpu",
                                                            dsc.get("offload_param_device") == "cpu", name),
                        "bf16": None, "fp16": None}
            self.accel_ds = info
        self.notes.append(f"{name}: {kind} on {processes} process(es) over {machines} machine(s), mixed precision "
                          f"{precision}.")

    def deepspeed(self, key: str = "deepspeed") -> dict[str, Any] | None:
        """The DeepSpeed settings in force: the training config's own (the Trainer's ``deepspeed`` argument wins),
        else the accelerate config's."""
        if self.has(key):
            return self.read_deepspeed(self.get(key), key)
        if key in self.data:
            self.used.add(key)
        return self.accel_ds


def offload(optimizer: bool, params: bool, where: str) -> Offload:
    if params and not optimizer:
        raise PlannerError(f"{where}: parameters offloaded without the optimizer is not modelled; planner models "
                           f"optimizer offload, or optimizer and parameter offload.")
    return Offload.OPTIMIZER_PARAMS if params else Offload.OPTIMIZER if optimizer else Offload.NONE


def trainer_precision(r: Reader, bf16: bool | None, fp16: bool | None, ds: dict[str, Any] | None, method: Method,
               weights_16bit: bool) -> Precision:
    """The Trainer's precision: its bf16/fp16 flags, else accelerate's mixed_precision, else DeepSpeed's explicit
    flags. ``weights_16bit``: full fine-tuning holds 16-bit weights and optimizer states (no master copy)
    unless DeepSpeed keeps fp32 masters."""
    if bf16 and fp16:
        raise PlannerError(f"{r.name}: bf16 and fp16 are both set; the Trainer accepts one.")
    kind = "bf16" if bf16 else "fp16" if fp16 else None
    if kind and r.accel_precision not in (None, "no", kind):
        r.notes.append(f"The training config's {kind} overrides the accelerate config's mixed_precision "
                       f"{r.accel_precision} (the Trainer sets ACCELERATE_MIXED_PRECISION from its own flags).")
    if kind is None and r.accel_precision not in (None, "no"):
        kind = r.accel_precision
    if kind is None and ds is not None:
        kind = "bf16" if ds.get("bf16") else "fp16" if ds.get("fp16") else None
    if kind is None:
        return Precision.FP32
    if method is Method.FULL and weights_16bit and (ds is None or ds["stage"] == 0):
        if kind == "fp16":
            raise PlannerError(f"{r.name}: full fine-tuning with fp16 weights under fp16 autocast has no planner "
                               f"recipe (the Trainer cannot unscale fp16 gradients); use bf16 or DeepSpeed.")
        r.notes.append("Full fine-tuning loads the weights in bf16 without DeepSpeed: weights, gradients and "
                       "optimizer states stay bf16 (planner's pure bf16, --precision bf16).")
        return Precision.BF16
    return Precision.BF16_MIXED if kind == "bf16" else Precision.FP16_MIXED


def hf_optimizer(r: Reader, key: str, default: str) -> Optimizer:
    name = r.text(key, default).lower()
    if name not in HF_OPTIMIZERS:
        r.refuse(f"{key}: {name}", "is an optimizer planner has no memory rule for (it models AdamW, 8-bit and "
                 "paged AdamW, SGD and Adafactor).")
    if name == "sgd":
        r.notes.append("optimizer sgd: planner counts one momentum buffer (torch's SGD keeps none at momentum 0).")
    return HF_OPTIMIZERS[name]


def attention(r: Reader, value: str | None, key: str) -> AttnImpl:
    if value is None:
        r.notes.append("No attention implementation named: transformers' default, sdpa.")
        return AttnImpl.SDPA
    aliases = {"fa2": "flash_attention_2", "flash_attn_2": "flash_attention_2", "disabled": "eager"}
    value = aliases.get(value, value)
    try:
        return AttnImpl(value)
    except ValueError:
        raise PlannerError(f"{r.name}: {key} {value!r} is not modelled; planner models eager, sdpa and "
                           f"flash_attention_2.") from None


def lora_alpha(r: Reader, key: str, default: int) -> int:
    value = r.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise r.bad(key, value, "a positive number")
    if value != int(value):
        r.notes.append(f"{key} {value} is rounded to {round(value) or 1} (alpha scales the adapter; it does not "
                       f"change memory).")
    return max(1, round(value))


def packing_note(r: Reader, packing: bool, length_key: str) -> None:
    if packing:
        r.notes.append(f"Packing fills every row with {length_key} tokens: the estimate assumes full rows, which "
                       f"packing makes exact.")
    else:
        r.notes.append(f"Without packing rows are padded only to the longest in the batch: the estimate, for rows "
                       f"of {length_key} tokens, is an upper bound.")




def autocast_precision(r: Reader, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Full fine-tuning of fp32 weights with bf16/fp16 and no DeepSpeed: the Trainer (through accelerate) runs the
    forward under torch.autocast, planner's ``bf16-autocast``/``fp16-autocast``. Where that recipe is not
    modelled yet (specs/train.py ``_check_autocast``), the config is estimated as ``bf16-mixed``/``fp16-mixed``
    (the same 16 bytes of AdamW states per parameter, split differently) with a note."""
    mixed = kwargs.get("precision")
    parallelism = kwargs.get("parallelism")
    if (mixed not in (Precision.BF16_MIXED, Precision.FP16_MIXED) or kwargs.get("method", Method.FULL) is not Method.FULL
            or (parallelism is not None and (parallelism.uses_deepspeed or parallelism.uses_fsdp2))):
        return kwargs
    autocast = Precision.BF16_AUTOCAST if mixed is Precision.BF16_MIXED else Precision.FP16_AUTOCAST
    try:
        TrainSpec(**{**kwargs, "precision": autocast})
    except PlannerError as exc:
        r.notes.append(f"The Trainer runs this fp32 model under {autocast.autocast_dtype} autocast "
                       f"(--precision {autocast.value}), which is not modelled here ({exc}); estimated as "
                       f"{mixed.value}: 16-bit weights with fp32 masters.")
        return kwargs
    return {**kwargs, "precision": autocast}
