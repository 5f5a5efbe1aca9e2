"""How the ranks share the work: the engine (plain data parallelism or DeepSpeed ZeRO), the stage, the offload."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from planner.errors import PlannerError
from planner.specs.enums import Offload


class Engine(str, Enum):
    """What runs data parallelism and decides how each rank's states are divided.

    ``ddp``: torch DistributedDataParallel, or one process (the transformers Trainer without DeepSpeed or
    FSDP): every rank holds every state. ``deepspeed``: DeepSpeed ZeRO stage 1-3, optionally with CPU offload.
    A new engine (FSDP2's ``fully_shard``, tensor or context parallelism) is a new member here, its rules a
    module beside ``estimate/sharding.py`` (ARCHITECTURE.md, "A parallelism").
    """

    DDP = "ddp"
    DEEPSPEED = "deepspeed"


@dataclass(frozen=True)
class Parallelism:
    """How the ranks share the work: the engine, DeepSpeed's ZeRO stage and what it offloads to the host.

    ``from_zero(stage, offload)`` is the CLI's ``--zero``/``--offload``: stage 0 is plain data parallelism
    (no DeepSpeed), stages 1-3 are DeepSpeed ZeRO. The one place these combinations are validated.
    """

    engine: Engine = Engine.DDP
    zero_stage: int = 0
    offload: Offload = Offload.NONE

    def __post_init__(self) -> None:
        if not isinstance(self.engine, Engine):
            raise PlannerError(f"unknown parallelism engine {self.engine!r}; use one of "
                               f"{', '.join(e.value for e in Engine)}.")
        if self.zero_stage not in (0, 1, 2, 3):
            raise PlannerError(f"ZeRO stage must be 0, 1, 2 or 3, got {self.zero_stage}.")
        if self.engine is Engine.DDP and self.zero_stage != 0:
            raise PlannerError(f"ZeRO stage {self.zero_stage} is DeepSpeed's; plain data parallelism has stage 0.")
        if self.engine is Engine.DEEPSPEED and self.zero_stage == 0:
            raise PlannerError("DeepSpeed at ZeRO stage 0 is not modelled; use stage 1, 2 or 3, or plain data "
                               "parallelism.")
        if self.offload is not Offload.NONE and self.zero_stage == 0:
            raise PlannerError(f"offload {self.offload.value!r} needs ZeRO stage 1, 2 or 3, not stage 0.")
        if self.offload is Offload.OPTIMIZER_PARAMS and self.zero_stage != 3:
            raise PlannerError(
                f"offload 'optimizer+params' needs ZeRO stage 3 (parameter offload), not stage {self.zero_stage}."
            )

    @classmethod
    def from_zero(cls, zero_stage: int, offload: Offload = Offload.NONE) -> Parallelism:
        """``--zero``/``--offload`` as a spec: stage 0 is plain data parallelism, 1-3 DeepSpeed ZeRO."""
        engine = Engine.DDP if zero_stage == 0 else Engine.DEEPSPEED
        return cls(engine=engine, zero_stage=zero_stage, offload=offload)

    @property
    def uses_deepspeed(self) -> bool:
        return self.engine is Engine.DEEPSPEED

    @property
    def label(self) -> str:
        """``ZeRO-2, offload optimizer`` / ``ZeRO-0`` (plain data parallelism): how a plan names it (Plan.label)."""
        if self.engine is Engine.DDP:
            return "ZeRO-0"
        off = "" if self.offload is Offload.NONE else f", offload {self.offload.value}"
        return f"ZeRO-{self.zero_stage}{off}"
