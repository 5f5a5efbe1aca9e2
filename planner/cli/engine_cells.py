"""How the tables name a row's engine: the ZeRO and offload columns, with FSDP2's rows beside DeepSpeed's."""

from __future__ import annotations

from planner.specs import TrainSpec

_OFFLOAD_SHORT = {"none": "none", "optimizer": "optimizer", "optimizer+params": "optim+params"}


def zero_cell(train: TrainSpec) -> str:
    """The ZeRO column: the stage, or FSDP2 (``FSDP2-nr``: no reshard after forward)."""
    if train.uses_fsdp2:
        return "FSDP2" + ("" if train.parallelism.fsdp_config.reshard_after_forward else "-nr")
    return str(train.zero_stage)


def offload_cell(train: TrainSpec) -> str:
    if train.uses_fsdp2:
        return "cpu" if train.parallelism.fsdp_config.cpu_offload else "none"
    return _OFFLOAD_SHORT.get(train.offload.value, train.offload.value)


FSDP2_LEGEND = ("FSDP2 rows: torch fully_shard per decoder layer and on the root (torchtune, torchtitan, "
                "accelerate fsdp_version 2; --engine fsdp2), parameters resharded after forward; FSDP2-nr keeps "
                "them gathered to backward (--no-reshard); offload cpu is --fsdp-offload.")
