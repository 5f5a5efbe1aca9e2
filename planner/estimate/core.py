"""estimate(): specs in, Estimate out. Composes params, states, sharding and the phase model."""

from __future__ import annotations

from planner.errors import PlannerError
from planner.estimate.params import count_params, split_params
from planner.estimate.result import Estimate, MemoryBreakdown
from planner.estimate.sharding import shard_states
from planner.estimate.states import unsharded_states
from planner.specs import Cluster, Method, ModelSpec, Offload, TrainSpec

DEFAULT_MARGIN = 0.1
PHASES = ("forward", "backward", "optimizer_step")


def check_combination(model: ModelSpec, train: TrainSpec, cluster: Cluster) -> None:
    """Refuse combinations planner cannot estimate honestly, with a reason."""
    if train.zero_stage > 0 and cluster.num_gpus == 1 and train.offload is Offload.NONE:
        # Valid in DeepSpeed (nothing to shard across), kept: ZeRO with one rank equals stage 0 plus buffers.
        pass
    if train.method is Method.QLORA and not cluster.gpu.supports_bf16 and train.precision.compute_dtype == "bf16":
        raise PlannerError(
            f"GPU {cluster.gpu.name!r} has no bf16 support; use --precision fp16-mixed for QLoRA on it."
        )


def estimate(
    model: ModelSpec,
    train: TrainSpec,
    cluster: Cluster,
    *,
    margin: float = DEFAULT_MARGIN,
    device: str = "cuda",
) -> Estimate:
    """Per-GPU memory of one training configuration. ``device="cpu"`` leaves out GPU-only overheads."""
    if not 0.0 <= margin < 1.0:
        raise PlannerError(f"--margin must be in [0, 1), got {margin}.")
    check_combination(model, train, cluster)
    counts = count_params(model)
    split = split_params(counts, train)
    states = unsharded_states(counts, split, train)
    sharded = shard_states(states, train, cluster.num_gpus, counts.largest_module)

    model_states = MemoryBreakdown(
        params_bytes=sharded.params_bytes,
        grads_bytes=sharded.grads_bytes,
        optimizer_states_bytes=sharded.optimizer_states_bytes,
    )
    step = MemoryBreakdown(
        params_bytes=sharded.params_bytes,
        grads_bytes=sharded.grads_bytes,
        optimizer_states_bytes=sharded.optimizer_states_bytes,
        temporaries_bytes=sharded.step_grad_fp32_bytes + sharded.gathered_bytes,
    )
    phases = {"forward": model_states, "backward": model_states, "optimizer_step": step}
    peak_phase = max(PHASES, key=lambda p: (phases[p].total_bytes, -PHASES.index(p)))
    peak = phases[peak_phase]
    return Estimate(
        model=model,
        train=train,
        cluster=cluster,
        num_params=split.num_params,
        num_trainable_params=split.num_trainable,
        per_gpu=peak,
        peak_phase=peak_phase,
        reserved_bytes=peak.total_bytes,
        device_bytes=peak.total_bytes,
        cpu_bytes_per_node=sharded.cpu_bytes * cluster.num_gpus_per_node,
        capacity_bytes=cluster.gpu.memory_bytes,
        margin=margin,
        phases=phases,
        notes=sharded.notes,
    )
