"""How the ranks share the work: the engine (plain data parallelism or DeepSpeed ZeRO), the stage, the offload."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from planner.errors import PlannerError
from planner.specs.enums import Offload
from planner.specs.fsdp import FsdpConfig


class Engine(str, Enum):
    """What runs data parallelism and decides how each rank's states are divided.

    ``ddp``: torch DistributedDataParallel, or one process (the transformers Trainer without DeepSpeed or
    FSDP): every rank holds every state. ``deepspeed``: DeepSpeed ZeRO stage 1-3, optionally with CPU offload.
    ``fsdp2``: torch's ``fully_shard`` per decoder layer and on the root (torchtune, torchtitan, accelerate's
    ``fsdp_version: 2``), its settings a ``FsdpConfig``.
    A new engine (FSDP2's ``fully_shard``, tensor or context parallelism) is a new member here, its rules a
    module beside ``estimate/sharding.py`` (ARCHITECTURE.md, "A parallelism").
    """

    DDP = "ddp"
    DEEPSPEED = "deepspeed"
    FSDP2 = "fsdp2"


# DeepSpeed 0.19.8's defaults for the ZeRO keys below (deepspeed/runtime/zero/config.py, DeepSpeedZeroConfig:
# max_reuse_distance and sub_group_size pp_int(1e9)); planner's bundle and profiler write the same.
DS_MAX_REUSE_DISTANCE = 1_000_000_000
DS_SUB_GROUP_SIZE = 1_000_000_000


@dataclass(frozen=True)
class ZeroConfig:
    """DeepSpeed ZeRO's knobs that change what a rank allocates, in elements (``--deepspeed-config``).

    ``None`` is ``"auto"``, which the Hugging Face Trainer fills from the model's hidden size h
    (transformers/integrations/deepspeed.py ``HfTrainerDeepSpeedConfig.trainer_config_finalize``): reduce bucket
    h*h, ZeRO-3 prefetch bucket 0.9*h*h, ZeRO-3 parameter persistence threshold 10*h: what planner's bundle and
    profiler write. ``overlap_comm`` None is DeepSpeed's default (on for stage 3 only: zero/config.py
    ``overlap_comm_valid``). The other two default to DeepSpeed's own values. The estimator reads them through
    the methods below, so "auto" is resolved in one place.
    """

    reduce_bucket_size: int | None = None
    stage3_prefetch_bucket_size: int | None = None
    stage3_param_persistence_threshold: int | None = None
    stage3_max_reuse_distance: int = DS_MAX_REUSE_DISTANCE
    sub_group_size: int = DS_SUB_GROUP_SIZE
    overlap_comm: bool | None = None
    # DeepSpeed's default true: gradients copied into the reduce bucket as they arrive; false (modelled at stage 3
    # only, Parallelism): each waits in its own tensor until its bucket is reduced (estimate/zero3_epilogue.py)
    contiguous_gradients: bool = True

    def __post_init__(self) -> None:
        for name in ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold",
                     "stage3_max_reuse_distance", "sub_group_size"):
            value = getattr(self, name)
            if value is None and name in _AUTO:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < _MINIMUM[name]:
                raise PlannerError(f"DeepSpeed's {name} must be a whole number of elements from {_MINIMUM[name]}, "
                                   f"got {value!r}.")
        if self.overlap_comm is not None and not isinstance(self.overlap_comm, bool):
            raise PlannerError(f"DeepSpeed's overlap_comm must be true or false, got {self.overlap_comm!r}.")
        if not isinstance(self.contiguous_gradients, bool):
            raise PlannerError(f"DeepSpeed's contiguous_gradients must be true or false, got "
                               f"{self.contiguous_gradients!r}.")

    def reduce_bucket(self, hidden_size: int) -> int:
        return hidden_size * hidden_size if self.reduce_bucket_size is None else self.reduce_bucket_size

    def prefetch_bucket(self, hidden_size: int) -> int:
        return int(0.9 * hidden_size * hidden_size) if self.stage3_prefetch_bucket_size is None else \
            self.stage3_prefetch_bucket_size

    def persistence_threshold(self, hidden_size: int) -> int:
        if self.stage3_param_persistence_threshold is None:
            return 10 * hidden_size
        return self.stage3_param_persistence_threshold

    def overlaps(self, zero_stage: int) -> bool:
        return zero_stage == 3 if self.overlap_comm is None else self.overlap_comm

    @property
    def is_default(self) -> bool:
        return self == ZeroConfig()

    def to_dict(self) -> dict:
        """Every field; contiguous_gradients only when off (the dicts written before it existed stay as they were:
        validation cells are named by them)."""
        out = {name: getattr(self, name) for name in _FIELDS}
        if not self.contiguous_gradients:
            out["contiguous_gradients"] = False
        return out

    @classmethod
    def from_dict(cls, d: dict) -> ZeroConfig:
        unknown = set(d) - set(_FIELDS) - {"contiguous_gradients"}
        if unknown:
            raise PlannerError(f"unknown DeepSpeed ZeRO setting(s) {', '.join(sorted(unknown))}.")
        return cls(**d)


_FIELDS = ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold",
           "stage3_max_reuse_distance", "sub_group_size", "overlap_comm")
_AUTO = ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold")
# A reduce bucket must hold an element; the rest may be 0 (DeepSpeedZeroConfig's ge=0; sub_group_size 0 makes
# every parameter its own sub-group, stage3.py _create_fp16_sub_groups).
_MINIMUM = {"reduce_bucket_size": 1, "stage3_prefetch_bucket_size": 0, "stage3_param_persistence_threshold": 0,
            "stage3_max_reuse_distance": 0, "sub_group_size": 0}


@dataclass(frozen=True)
class Parallelism:
    """How the ranks share the work: the engine, DeepSpeed's ZeRO stage and what it offloads to the host.

    ``from_zero(stage, offload)`` is the CLI's ``--zero``/``--offload``: stage 0 is plain data parallelism
    (no DeepSpeed), stages 1-3 are DeepSpeed ZeRO. The one place these combinations are validated.
    """

    engine: Engine = Engine.DDP
    zero_stage: int = 0
    offload: Offload = Offload.NONE
    zero_config: ZeroConfig = ZeroConfig()  # DeepSpeed only: its buckets and thresholds (default: "auto")
    fsdp_config: FsdpConfig = FsdpConfig()  # FSDP2 only: fully_shard's resharding, policies and mesh

    def __post_init__(self) -> None:
        if not isinstance(self.engine, Engine):
            raise PlannerError(f"unknown parallelism engine {self.engine!r}; use one of "
                               f"{', '.join(e.value for e in Engine)}.")
        if self.zero_stage not in (0, 1, 2, 3):
            raise PlannerError(f"ZeRO stage must be 0, 1, 2 or 3, got {self.zero_stage}.")
        if self.engine is Engine.DDP and self.zero_stage != 0:
            raise PlannerError(f"ZeRO stage {self.zero_stage} is DeepSpeed's; plain data parallelism has stage 0.")
        if self.offload is not Offload.NONE and self.zero_stage == 0:
            raise PlannerError(f"offload {self.offload.value!r} needs ZeRO stage 1, 2 or 3, not stage 0.")
        if not isinstance(self.zero_config, ZeroConfig):
            raise PlannerError("the DeepSpeed ZeRO settings must be a ZeroConfig.")
        if (self.engine is not Engine.DEEPSPEED or self.zero_stage == 0) and not self.zero_config.is_default:
            raise PlannerError("DeepSpeed's bucket and threshold settings apply to ZeRO stages 1-3 only, not to "
                               "plain data parallelism (stage 0).")
        if not isinstance(self.fsdp_config, FsdpConfig):
            raise PlannerError("the FSDP2 settings must be an FsdpConfig.")
        if self.engine is Engine.FSDP2 and (self.zero_stage != 0 or self.offload is not Offload.NONE):
            raise PlannerError("FSDP2 shards every state by itself and offloads through its own CPU offload policy; "
                               "it takes no ZeRO stage or DeepSpeed offload.")
        if self.engine is not Engine.FSDP2 and not self.fsdp_config.is_default:
            raise PlannerError("FSDP2's settings (resharding, reduce dtype, CPU offload) apply to the fsdp2 engine "
                               "only.")
        if not self.zero_config.contiguous_gradients and self.zero_stage != 3:
            raise PlannerError("DeepSpeed's contiguous_gradients false is modelled at ZeRO stage 3 only (stages 1 and 2 "
                               "then reduce each gradient in place); set it true or use stage 3.")
        if self.offload is Offload.OPTIMIZER_PARAMS and self.zero_stage != 3:
            raise PlannerError(
                f"offload 'optimizer+params' needs ZeRO stage 3 (parameter offload), not stage {self.zero_stage}."
            )

    @classmethod
    def from_zero(cls, zero_stage: int, offload: Offload = Offload.NONE,
                  zero_config: ZeroConfig | None = None, *, deepspeed_stage0: bool = False) -> Parallelism:
        """``--zero``/``--offload`` as a spec: stage 0 is plain data parallelism, 1-3 DeepSpeed ZeRO;
        ``deepspeed_stage0`` (``--engine deepspeed --zero 0``) makes stage 0 DeepSpeed's own engine (data parallel
        with DeepSpeed's mixed-precision optimizer wrapper, estimate/ds_stage0.py).
        ``zero_config`` (DeepSpeed's buckets, ``--deepspeed-config``) is kept for stages 1-3 and dropped at
        stage 0, where none of its buckets or thresholds apply."""
        engine = Engine.DEEPSPEED if zero_stage > 0 or deepspeed_stage0 else Engine.DDP
        kept = ZeroConfig() if zero_config is None or zero_stage == 0 else zero_config
        return cls(engine=engine, zero_stage=zero_stage, offload=offload, zero_config=kept)

    @classmethod
    def fsdp2(cls, fsdp_config: FsdpConfig | None = None) -> Parallelism:
        """FSDP2 (``--engine fsdp2``) with its settings (default: reshard after forward, fp32 reduce)."""
        return cls(engine=Engine.FSDP2, fsdp_config=FsdpConfig() if fsdp_config is None else fsdp_config)

    @property
    def uses_deepspeed(self) -> bool:
        return self.engine is Engine.DEEPSPEED

    @property
    def uses_fsdp2(self) -> bool:
        return self.engine is Engine.FSDP2

    @property
    def label(self) -> str:
        """``ZeRO-2, offload optimizer`` / ``ZeRO-0`` (plain data parallelism): how a plan names it (Plan.label)."""
        if self.engine is Engine.FSDP2:
            c = self.fsdp_config
            return ("FSDP2" + ("" if c.reshard_after_forward else ", no reshard") + (", CPU offload" if c.cpu_offload else "")
                    + (f", HSDP over {c.replicate_degree} replicas" if c.replicate_degree > 1 else ""))
        if self.engine is Engine.DDP:
            return "ZeRO-0"
        if self.zero_stage == 0:
            return "DeepSpeed ZeRO-0"
        off = "" if self.offload is Offload.NONE else f", offload {self.offload.value}"
        return f"ZeRO-{self.zero_stage}{off}"
