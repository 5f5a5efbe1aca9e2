"""The engine flags (``--engine``) and FSDP2's own (``--reshard``, ``--fsdp-offload``, ``--reduce-dtype``, ``--hsdp``): their
declarations, read by ``options.TrainingFlags``, and their one reading into a ``Parallelism``.

FSDP2's settings become a ``specs.FsdpConfig`` (validated there); ``--reduce-dtype`` is ``MixedPrecisionPolicy``'s
``reduce_dtype`` (torch/distributed/fsdp/_fully_shard/_fsdp_api.py), which planner sets under ``--precision
bf16-mixed`` only (``param_dtype`` bf16 over fp32 sharded parameters; profile/fsdp2.py): ``fp32`` (torchtitan's
default) or ``bf16``, the gradients' own dtype (the policy's ``reduce_dtype=None``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from planner.errors import PlannerError
from planner.specs import Engine, FsdpConfig, Offload, Precision

DEFAULT_REDUCE_DTYPE = "fp32"
DEFAULT_HSDP = 1
FSDP_FLAGS = {"reshard": "--reshard/--no-reshard", "fsdp_offload": "--fsdp-offload",
              "reduce_dtype": "--reduce-dtype", "hsdp": "--hsdp"}

EngineOpt = Annotated[str | None, typer.Option("--engine", help=(
    "ddp (torch DDP or one process), deepspeed (ZeRO 1-3 with --zero; --zero 0: DeepSpeed's engine without ZeRO, "
    "full bf16-mixed fine-tuning) or fsdp2 (torch fully_shard per decoder "
    "layer and on the root, as torchtune, torchtitan and accelerate's fsdp_version 2 run it). Default: estimate "
    "shows every engine's rows, recommend weighs them, profile follows --zero (0 ddp, 1-3 deepspeed)."))]
ReshardOpt = Annotated[bool | None, typer.Option("--reshard/--no-reshard", help=(
    "FSDP2's reshard_after_forward: free each layer's gathered parameters after its forward and gather them "
    "again in backward (ZeRO-3-like), or keep them to backward (ZeRO-2-like). Default: on (estimate shows "
    "both rows where they differ)."))]
FsdpOffloadOpt = Annotated[bool, typer.Option("--fsdp-offload/--no-fsdp-offload", help=(
    "FSDP2's CPUOffloadPolicy: sharded parameters, gradients and optimizer states in host RAM, the optimizer "
    "stepped on the CPU (default: off)."))]
ReduceDtypeOpt = Annotated[str, typer.Option("--reduce-dtype", help=(
    "FSDP2's MixedPrecisionPolicy reduce_dtype under --precision bf16-mixed: fp32 (torchtitan's default, the "
    "default here) or bf16 (the gradients' own dtype)."))]

HsdpOpt = Annotated[int, typer.Option("--hsdp", metavar="R", help=(
    "FSDP2's HSDP: a replicate x shard device mesh of R x GPUs/R (torchtitan's data_parallel_replicate_degree, "
    "accelerate's dp_replicate_size); every state is sharded over the GPUs/R ranks of a shard group and each "
    "gradient shard all-reduced over the R replicas. R must divide the GPU count (default: 1, plain FSDP2)."))]


def parse_engine(value: str | None) -> Engine | None:
    if value is None:
        return None
    try:
        return Engine(value.lower())
    except ValueError:
        raise PlannerError(f"--engine {value!r} is not valid; choose one of "
                           f"{', '.join(e.value for e in Engine)}.") from None


def fsdp_config(flags, precision: Precision, *, reshard: bool | None = None) -> FsdpConfig:
    """The flags' FsdpConfig; ``reshard`` overrides ``--reshard`` (a table row); not given: on."""
    reshard = flags.reshard if reshard is None else reshard
    value = str(flags.reduce_dtype).lower()
    if value not in ("fp32", "bf16"):
        raise PlannerError(f"--reduce-dtype {flags.reduce_dtype!r} is not valid; choose fp32 or bf16.")
    if value == "bf16" and precision is not Precision.BF16_MIXED:
        raise PlannerError(f"--reduce-dtype bf16 sets FSDP2's mixed-precision policy, which planner applies under "
                           f"--precision bf16-mixed only, not {precision.value}.")
    return FsdpConfig(reshard_after_forward=True if reshard is None else bool(reshard),
                      reduce_dtype="fp32" if value == "fp32" else None, cpu_offload=bool(flags.fsdp_offload),
                      replicate_degree=flags.hsdp)


def typed_fsdp_flags(flags) -> list[str]:
    """FSDP2's flags the user typed (or set away from their defaults)."""
    changed = {"reshard": flags.reshard is not None, "fsdp_offload": bool(flags.fsdp_offload),
               "reduce_dtype": str(flags.reduce_dtype).lower() != DEFAULT_REDUCE_DTYPE,
               "hsdp": flags.hsdp != DEFAULT_HSDP}
    return [FSDP_FLAGS[n] for n in FSDP_FLAGS if n in flags.typed or changed[n]]


def fsdp_layout(flags, precision: Precision, zero: int, offload: Offload) -> FsdpConfig | None:
    """``--engine`` checked with ``--zero``/``--offload`` and FSDP2's flags: FSDP2's settings, or None for DDP or
    DeepSpeed (the stage decides; options._layout writes either). Without ``--engine`` the stage decides (0 ddp,
    1-3 deepspeed) and FSDP2's flags are left for the commands that add FSDP2 rows or candidates."""
    engine = parse_engine(flags.engine)
    if engine is Engine.FSDP2:
        if zero != 0 or "zero" in flags.typed:
            raise PlannerError(f"--zero {zero} is DeepSpeed's stage; --engine fsdp2 shards every state by itself, so "
                               "drop --zero (or use --engine deepspeed).")
        if offload is not Offload.NONE:
            raise PlannerError(f"--offload {offload.value} is DeepSpeed's; with --engine fsdp2 use --fsdp-offload.")
        return fsdp_config(flags, precision)
    typed = typed_fsdp_flags(flags)
    if engine is not None and typed:
        raise PlannerError(f"{typed[0]} is FSDP2's; it needs --engine fsdp2, not --engine {engine.value}.")
    if engine is Engine.DEEPSPEED and zero == 0 and (flags.zero is None or "zero" not in flags.typed):
        raise PlannerError("--engine deepspeed needs --zero 0, 1, 2 or 3 (0: DeepSpeed's own data parallel engine).")
    if engine is Engine.DDP and zero != 0:
        raise PlannerError(f"--zero {zero} is DeepSpeed's; use --engine deepspeed (or drop --engine).")
    return None


def check_one_run(flags, train) -> None:
    """A command that runs one configuration (profile): FSDP2's flags need an FSDP2 run (``--engine fsdp2``)."""
    typed = typed_fsdp_flags(flags)
    if typed and not train.uses_fsdp2:
        raise PlannerError(f"{typed[0]} is FSDP2's; add --engine fsdp2.")


def search_space(flags, precision: Precision, config_fsdp: FsdpConfig | None = None) -> dict:
    """recommend's engines as its keyword arguments: ``fsdp_configs`` (FSDP2's layouts: resharding on and off
    unless --reshard/--no-reshard fixes it) and, where --engine narrows them, ``zero_stages``. Without --engine
    FSDP2 is weighed beside DeepSpeed unless --zero or --offload fixes a DeepSpeed layout; a --from config
    that runs FSDP2 (``config_fsdp``) is searched over FSDP2 with its settings."""
    engine = parse_engine(flags.engine)
    if engine is None and config_fsdp is not None and flags.zero is None:
        return {"zero_stages": (), "fsdp_configs": (config_fsdp,)}
    if engine in (Engine.DDP, Engine.DEEPSPEED) or (engine is None and (flags.zero is not None or
                                                                         flags.offload not in (None, "none"))):
        stages = {Engine.DDP: (0,), Engine.DEEPSPEED: (1, 2, 3), None: (0, 1, 2, 3)}[engine]
        return {} if flags.zero is not None or engine is None else {"zero_stages": stages}
    reshards = (True, False) if flags.reshard is None else (bool(flags.reshard),)
    configs = tuple(fsdp_config(flags, precision, reshard=r) for r in reshards)
    return {"fsdp_configs": configs, **({"zero_stages": ()} if engine is Engine.FSDP2 else {})}
