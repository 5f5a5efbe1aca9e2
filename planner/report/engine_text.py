"""How the report names a run's engine: DeepSpeed's ZeRO stage and offload, or FSDP2 with its settings, from a
TrainSpec or from its JSON (``specs.train_spec_to_dict``: ``engine`` and ``fsdp`` are present for FSDP2 only)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from planner.specs import TrainSpec


def fsdp2_words(fsdp: Mapping[str, Any]) -> str:
    """``FSDP2`` with what differs from its defaults (reshard after forward, fp32 reduce, no CPU offload)."""
    return ("FSDP2" + ("" if fsdp.get("reshard_after_forward", True) else ", no reshard")
            + (", CPU offload" if fsdp.get("cpu_offload") else "")
            + ("" if fsdp.get("reduce_dtype", "fp32") == "fp32" else ", reduce in the gradients' dtype"))


def zero_column(train: TrainSpec) -> str:
    """The ZeRO column of a table: the stage, or FSDP2 (``FSDP2 nr``: no reshard after forward)."""
    if train.uses_fsdp2:
        return "FSDP2" + ("" if train.parallelism.fsdp_config.reshard_after_forward else " nr")
    return str(train.zero_stage)


def layout_words(t: Mapping[str, Any]) -> str:
    """A plan's or profile's layout from its train JSON: ``ZeRO-2, offload optimizer`` or ``FSDP2, ...``."""
    if t.get("engine") == "fsdp2":
        return fsdp2_words(t.get("fsdp") if isinstance(t.get("fsdp"), Mapping) else {})
    offload = "" if t.get("offload", "none") == "none" else f", offload {t.get('offload')}"
    return f"ZeRO-{t.get('zero_stage', '?')}{offload}"
