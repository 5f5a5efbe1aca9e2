"""FSDP2 as the configs people have state it, read into ``specs.FsdpConfig`` (``Reader.fsdp``).

- accelerate config (accelerate/utils/dataclasses.py ``FullyShardedDataParallelPlugin.__post_init__``, the
  ``fsdp_config`` section ``accelerate config`` writes): ``distributed_type: FSDP`` with ``fsdp_version: 2``;
  ``fsdp_reshard_after_forward`` (default true for version 2), ``fsdp_offload_params`` (CPUOffloadPolicy); its
  ``parallelism_config`` section's ``parallelism_config_dp_replicate_size`` is HSDP's replicate degree.
  ``mixed_precision: bf16`` makes accelerate's policy ``param_dtype = reduce_dtype = bf16`` (``set_mixed_precision``)
  over trainable parameters upcast to fp32 (utils/fsdp_utils.py ``fsdp2_prepare_model``): planner's bf16-mixed
  with the gradients' own reduce dtype.
- transformers TrainingArguments (training_args.py ``_process_fsdp_args``, ``_apply_legacy_fsdp_to_config``):
  ``fsdp`` (true, or the legacy "full_shard"/"shard_grad_op" [+ "offload"] [+ "auto_wrap"]) with ``fsdp_config``
  (``version`` default 2, ``reshard_after_forward`` default true, ``cpu_offload``; an ``fsdp_`` prefix is dropped).
- torchtune's distributed recipes (recipes/full_finetune_distributed.py, lora_finetune_distributed.py
  ``_setup_model``: ``training.shard_model(..., reshard_after_forward=cfg.get("fsdp_reshard_after_forward", True),
  cpu_offload=cfg.fsdp_cpu_offload)``): a config with these keys runs FSDP2, with no MixedPrecisionPolicy (the
  model is built in ``dtype``).

accelerate's own wrapping (embeddings and the norm+head tail in units of their own) differs from the torchtune
layout planner estimates; a note says so.
"""

from __future__ import annotations

from typing import Any

from planner.errors import PlannerError
from planner.specs import FsdpConfig, Parallelism, Precision

ACCELERATE_NOTE = ("accelerate's FSDP2 shards the embeddings and the final norm and head in units of their own (the "
                   "tail never resharded); planner estimates torchtune's layout (one root group), which differs by "
                   "about one gathered embedding or head.")
_SHARDING = {"full_shard": True, "shard_grad_op": False}


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise PlannerError(f"{where} is {value!r}, not true or false.")
    return value


def accelerate_fsdp(r, acc: dict, name: str) -> None:
    """``distributed_type: FSDP`` of an accelerate config: FSDP2 into ``r.fsdp``; version 1 is refused."""
    cfg = acc.get("fsdp_config") or {}
    if not isinstance(cfg, dict):
        raise PlannerError(f"{name}: fsdp_config is not a mapping.")
    version = cfg.get("fsdp_version", 1)  # the plugin's default without FSDP_VERSION
    if version != 2:
        raise PlannerError(f"{name}: fsdp_version {version!r} (FSDP1) is not modelled; planner models FSDP2 "
                           "(fsdp_version: 2), DDP and DeepSpeed ZeRO.")
    reshard = _bool(cfg.get("fsdp_reshard_after_forward", True), f"{name}: fsdp_reshard_after_forward")
    offload = _bool(cfg.get("fsdp_offload_params", False), f"{name}: fsdp_offload_params")
    r.fsdp = FsdpConfig(reshard_after_forward=reshard, reduce_dtype=None, cpu_offload=offload,
                        replicate_degree=_accelerate_replicas(r, acc, name))
    r.fsdp_from = "accelerate"
    read = ("fsdp_version", "fsdp_reshard_after_forward", "fsdp_offload_params")
    r.used |= {f"{name}:fsdp_config.{k}" for k in read if k in cfg}
    for k in cfg:
        if k not in read:
            r.ignored[f"{name}:fsdp_config.{k}"] = "planner estimates fully_shard per decoder layer and on the root"
    r.notes.append(ACCELERATE_NOTE)


def _accelerate_replicas(r, acc: dict, name: str) -> int:
    """HSDP's replicate degree from an accelerate config's ``parallelism_config`` (accelerate/commands/config/
    cluster.py writes ``parallelism_config_dp_replicate_size`` and ``_dp_shard_size`` for fsdp_version 2;
    accelerate/parallelism_config.py ``ParallelismConfig`` builds the ("dp_replicate", "dp_shard", ...) mesh
    FSDP2 shards over): 1 without it. Tensor, context and sequence parallelism are not modelled."""
    pc = acc.get("parallelism_config") or {}
    if not isinstance(pc, dict):
        raise PlannerError(f"{name}: parallelism_config is not a mapping.")
    for k in pc:
        key = f"{name}:parallelism_config.{k}"
        r.used.add(key)
        if k.endswith(("tp_size", "cp_size", "sp_size")) and pc[k] not in (None, 1):
            r.refuse(f"parallelism_config.{k} {pc[k]!r}", "is not modelled; planner models data parallelism "
                     "(FSDP2 and HSDP: dp_replicate_size, dp_shard_size).")
    replicas = pc.get("parallelism_config_dp_replicate_size", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise PlannerError(f"{name}: parallelism_config_dp_replicate_size is {replicas!r}, not a whole number.")
    return replicas


def hf_fsdp(r) -> None:
    """TrainingArguments' ``fsdp`` and ``fsdp_config`` into ``r.fsdp`` (nothing when ``fsdp`` is unset)."""
    fsdp = r.get("fsdp")
    if not fsdp:
        if r.has("fsdp_config"):
            r.ignored["fsdp_config"] = "applies only with fsdp set"
        return
    cfg = dict(r.get("fsdp_config") or {})
    if not isinstance(r.data.get("fsdp_config") or {}, dict):
        raise PlannerError(f"{r.name}: fsdp_config as a file path is not read; inline it as a mapping.")
    cfg = {k[5:] if k.startswith("fsdp_") else k: v for k, v in cfg.items()}
    if int(cfg.get("version", 2)) != 2:
        raise PlannerError(f"{r.name}: fsdp_config version {cfg.get('version')!r} (FSDP1) is not modelled; planner "
                           "models FSDP2 (version 2, the default), DDP and DeepSpeed ZeRO.")
    items = fsdp.split() if isinstance(fsdp, str) else list(fsdp) if isinstance(fsdp, list) else []
    for item in items:
        if item in _SHARDING:
            cfg.setdefault("reshard_after_forward", _SHARDING[item])
        elif item == "offload":
            cfg["cpu_offload"] = True
        elif item != "auto_wrap":
            raise PlannerError(f"{r.name}: fsdp {item!r} is FSDP1's; FSDP2 takes full_shard, shard_grad_op, offload "
                               "and auto_wrap.")
    reshard = _bool(cfg.get("reshard_after_forward", True), f"{r.name}: fsdp_config reshard_after_forward")
    offload = _bool(cfg.get("cpu_offload", False), f"{r.name}: fsdp_config cpu_offload")
    r.fsdp = FsdpConfig(reshard_after_forward=reshard, reduce_dtype=None, cpu_offload=offload)
    r.fsdp_from = "accelerate"
    r.notes.append(ACCELERATE_NOTE)


TORCHTUNE_KEYS = ("fsdp_cpu_offload", "fsdp_reshard_after_forward")


def torchtune_fsdp(r) -> None:
    """A torchtune distributed recipe's FSDP2 (``fsdp_cpu_offload``, ``fsdp_reshard_after_forward``)."""
    if not any(k in r.data for k in TORCHTUNE_KEYS):
        return
    offload = bool(r.flag("fsdp_cpu_offload", False))
    reshard = bool(r.flag("fsdp_reshard_after_forward", True))
    r.fsdp = FsdpConfig(reshard_after_forward=reshard, reduce_dtype=None, cpu_offload=offload)
    r.fsdp_from = "torchtune"


def fsdp_run(r, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The run as FSDP2 where the config says so: its parallelism, and under accelerate's bf16 policy fp32
    trainable parameters gathered in bf16 (planner's bf16-mixed, reducing in bf16)."""
    if getattr(r, "fsdp", None) is None:
        return kwargs
    parallelism = kwargs.get("parallelism")
    if parallelism is not None and parallelism.uses_deepspeed:
        raise PlannerError(f"{r.name}: FSDP and DeepSpeed are both configured; accelerate runs one.")
    out = {**kwargs, "parallelism": Parallelism.fsdp2(r.fsdp)}
    if r.fsdp_from == "accelerate" and kwargs.get("precision") in (Precision.BF16, Precision.BF16_MIXED,
                                                                    Precision.BF16_AUTOCAST):
        out["precision"] = Precision.BF16_MIXED
        r.notes.append("accelerate's FSDP2 with bf16 upcasts trainable parameters to fp32 and gathers and reduces "
                       "in bf16 (MixedPrecisionPolicy param_dtype = reduce_dtype = bf16): planner's bf16-mixed with "
                       "--reduce-dtype bf16.")
    return out
