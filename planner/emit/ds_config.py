"""The DeepSpeed JSON config of a plan (ZeRO stages 1-3, and stage 0 on DeepSpeed's engine; plain DDP has none).

Every value is explicit (the planned numbers), except the optimizer hyperparameters of an offloaded
optimizer, which are "auto" so that the Hugging Face Trainer fills them from its own arguments
(transformers/integrations/deepspeed.py, ``HfTrainerDeepSpeedConfig.trainer_config_process``).
``profile`` can call ``deepspeed_config`` too, so the measured run uses the same buckets as the bundle.
"""

from __future__ import annotations

from typing import Any

from planner.errors import PlannerError
from planner.specs import Cluster, ModelSpec, Offload, Optimizer, Precision, TrainSpec

# Gradient clipping written into both ds_config.json and train.py (the HF Trainer's default max_grad_norm).
MAX_GRAD_NORM = 1.0
# DeepSpeed's default ZeRO-3 live-parameter limit (elements), deepspeed/runtime/zero/config.py
# (DeepSpeedZeroConfig.max_live_parameters); the reuse distance and sub-group size are the run's ZeroConfig.
DS_MAX_LIVE_PARAMETERS = 1_000_000_000
# DeepSpeed's initial fp16 loss scale 2**16 (deepspeed/runtime/fp16/loss_scaler.py, initial_scale_power).
FP16_INITIAL_SCALE_POWER = 16
# DeepSpeed CPU optimizers (DeepSpeedCPUAdam) exist for Adam/AdamW; other optimizers run as client
# optimizers on the CPU partition, which DeepSpeed refuses unless zero_force_ds_cpu_optimizer is false. Offload
# steps on the host either way, so foreach and fused AdamW take the same CPU Adam (no GPU step memory).
_DS_CPU_OPTIMIZERS = {Optimizer.ADAMW: "AdamW", Optimizer.ADAMW_FUSED: "AdamW"}


def bucket_sizes(model: ModelSpec, train: TrainSpec | None = None) -> dict[str, int]:
    """Bucket and threshold sizes in elements: the run's (``train``'s ZeroConfig, from ``--deepspeed-config``),
    else from the hidden size h by the rule the Hugging Face DeepSpeed integration applies to "auto"
    (transformers/integrations/deepspeed.py, ``trainer_config_finalize``): reduce bucket h*h, ZeRO-3 prefetch
    bucket 0.9*h*h, parameter persistence threshold 10*h. The all-gather bucket of stages 1-2 follows the reduce
    bucket. Each reduce bucket is a real buffer of that many gradient elements (stage_1_and_2.py ``ipg_buffer``).
    """
    h = model.hidden_size
    zero = (train or TrainSpec()).parallelism.zero_config
    return {
        "reduce_bucket_size": zero.reduce_bucket(h),
        "allgather_bucket_size": zero.reduce_bucket(h),
        "stage3_prefetch_bucket_size": zero.prefetch_bucket(h),
        "stage3_param_persistence_threshold": zero.persistence_threshold(h),
    }


def _precision_sections(precision: Precision) -> dict[str, Any]:
    if precision is Precision.FP16_MIXED:
        return {
            "bf16": {"enabled": False},
            "fp16": {
                "enabled": True,
                "hysteresis": 2,
                "initial_scale_power": FP16_INITIAL_SCALE_POWER,
                "loss_scale": 0,
                "loss_scale_window": 1000,
                "min_loss_scale": 1,
            },
        }
    # bf16-mixed and pure bf16 both run DeepSpeed's bf16 path (which keeps fp32 master partitions).
    bf16 = precision in (Precision.BF16_MIXED, Precision.BF16)
    return {"bf16": {"enabled": bf16}, "fp16": {"enabled": False}}


def deepspeed_config(model: ModelSpec, train: TrainSpec, cluster: Cluster) -> dict[str, Any]:
    """The ds_config.json dict for ZeRO stage 1-3, or stage 0 on DeepSpeed's engine (``--engine deepspeed --zero 0``;
    raises for plain data parallelism, which uses no DeepSpeed)."""
    stage = train.zero_stage
    if not train.uses_deepspeed:
        raise PlannerError("ZeRO stage 0 without --engine deepspeed runs plain data parallel and has no DeepSpeed "
                           "config; use --engine deepspeed or stage 1, 2 or 3.")
    sizes = bucket_sizes(model, train)
    # stage 0 (estimate/ds_stage0.py): no ZeRO buckets or partitions; the all-reduce buckets are DeepSpeed's own 5e8
    zero: dict[str, Any] = {"stage": 0} if stage == 0 else {
        "stage": stage,
        "contiguous_gradients": train.parallelism.zero_config.contiguous_gradients,
        "reduce_bucket_size": sizes["reduce_bucket_size"],
        "reduce_scatter": True,
        # DeepSpeed's default (ZeroConfig.overlaps): on for stage 3 only; at stages 1-2 it doubles the bucket.
        "overlap_comm": train.parallelism.zero_config.overlaps(stage),
    }
    if stage == 0:
        pass
    elif stage in (1, 2):
        zero["allgather_partitions"] = True
        zero["allgather_bucket_size"] = sizes["allgather_bucket_size"]
    else:
        zero.update(
            {
                "stage3_prefetch_bucket_size": sizes["stage3_prefetch_bucket_size"],
                "stage3_param_persistence_threshold": sizes["stage3_param_persistence_threshold"],
                "stage3_max_live_parameters": DS_MAX_LIVE_PARAMETERS,
                "stage3_max_reuse_distance": train.parallelism.zero_config.stage3_max_reuse_distance,
                "stage3_gather_16bit_weights_on_model_save": True,
                "sub_group_size": train.parallelism.zero_config.sub_group_size,
            }
        )
    if train.offload in (Offload.OPTIMIZER, Offload.OPTIMIZER_PARAMS):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if train.offload is Offload.OPTIMIZER_PARAMS:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}

    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.micro_batch,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.micro_batch * train.grad_accum * cluster.num_gpus,
        "gradient_clipping": MAX_GRAD_NORM,
        "zero_optimization": zero,
        "steps_per_print": 100,
        "wall_clock_breakdown": False,
        **_precision_sections(train.precision),
    }
    if train.offload is not Offload.NONE:
        ds_type = _DS_CPU_OPTIMIZERS.get(train.optimizer)
        if ds_type:
            # DeepSpeedCPUAdam steps the offloaded partition; the Trainer fills the "auto" values.
            config["optimizer"] = {
                "type": ds_type,
                "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
            }
        else:
            config["zero_force_ds_cpu_optimizer"] = False
    return dict(sorted(config.items()))
