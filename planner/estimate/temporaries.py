"""Transient memory outside the forward/backward graph: optimizer-step scratch, mixed-precision gradient copies,
data-parallel buckets, DeepSpeed buffers.

The forward/backward transients (logits upcast, loss gradients, dequantized 4-bit weights, recomputation) come
from the simulated step (activations.py); the ZeRO fp32 gradient partition and ZeRO-3 gathered parameters
from sharding.py. What is added here, with the phase it lives in:

- ``optimizer_step``: the scratch of the optimizer's update (below) and, for mixed precision without
  DeepSpeed, the fp32 copies of the 16-bit gradients the master weights are stepped with;
- all phases: DDP's gradient buckets (ZeRO 0 on several ranks) and DeepSpeed's reduce bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.specs import Offload, Optimizer, Precision, TrainSpec

# torch.optim.AdamW with foreach=True (the CUDA default, and what `planner profile` uses on every device,
# planner/profile/optim.py): torch/optim/adam.py ``_multi_tensor_adam`` computes
# ``exp_avg_sq_sqrt = torch._foreach_sqrt(device_exp_avg_sqs)`` -- one new tensor per parameter, all at once:
# a full copy of the second moment -- then divides and adds in place. fused=True (the HF Trainer default
# "adamw_torch_fused" on torch >= 2.8) updates in one kernel without it.
ADAMW_FOREACH_SCRATCH_COPIES = 1
# transformers' Adafactor (transformers/optimization.py) loops over parameters; per parameter it builds
# ``update = grad**2 + eps``, the approximated second moment and the update (about three fp32 copies of the
# largest parameter at a time).
ADAFACTOR_SCRATCH_COPIES = 3


@dataclass(frozen=True)
class Transients:
    step_bytes: int  # only during the optimizer step
    persistent_bytes: int  # through every phase of the step (buckets)
    notes: tuple[str, ...] = ()


def optimizer_scratch_bytes(train: TrainSpec, *, num_trainable_on_gpu: int, moment_bytes: int,
                            largest_trainable: int) -> int:
    """Scratch of one optimizer update over ``num_trainable_on_gpu`` parameters held on this GPU."""
    if num_trainable_on_gpu <= 0:
        return 0
    if train.optimizer in (Optimizer.ADAMW,):
        return ADAMW_FOREACH_SCRATCH_COPIES * num_trainable_on_gpu * moment_bytes
    if train.optimizer is Optimizer.ADAFACTOR:
        return ADAFACTOR_SCRATCH_COPIES * min(largest_trainable, num_trainable_on_gpu) * 4
    # SGD with momentum (foreach: in place after the first step), bitsandbytes 8-bit / paged AdamW (fused
    # per-parameter kernels): no full-size scratch.
    return 0


def master_grad_copy_bytes(train: TrainSpec, num_16bit_trainable: int) -> int:
    """Mixed precision without DeepSpeed: the 16-bit gradients converted to fp32 for the master weights, all at
    once at the step (what DeepSpeed's ZeRO optimizers do for their partition; planner/profile/optim.py
    ``MasterWeightsOptimizer``)."""
    if train.zero_stage > 0 or not train.precision.has_master_weights:
        return 0
    return 4 * num_16bit_trainable


def ddp_bucket_bytes(train: TrainSpec, grads_bytes: int, num_ranks: int) -> int:
    """torch DistributedDataParallel (ZeRO 0 on several ranks) copies gradients into its own buckets
    (bucket_cap_mb=25 each, covering every trainable parameter; gradient_as_bucket_view=False by default,
    torch/nn/parallel/distributed.py): a second copy of the gradients, allocated when DDP is built."""
    if train.zero_stage != 0 or num_ranks <= 1:
        return 0
    return grads_bytes


def deepspeed_bucket_bytes(train: TrainSpec, hidden_size: int, grad_dtype_bytes: int) -> int:
    """DeepSpeed ZeRO-2's contiguous-gradient reduce bucket (stage_1_and_2.py: ``ipg_buffer`` of
    ``reduce_bucket_size`` elements in the gradient dtype) and ZeRO-3's prefetch bucket, at the values the HF
    Trainer fills in for "auto" (transformers/integrations/deepspeed.py: reduce_bucket_size = h*h,
    stage3_prefetch_bucket_size = 0.9*h*h) -- what `planner profile` configures too."""
    if train.zero_stage == 2 and train.offload is Offload.NONE:
        return hidden_size * hidden_size * grad_dtype_bytes
    if train.zero_stage == 3:
        return int(0.9 * hidden_size * hidden_size) * grad_dtype_bytes
    return 0


def step_transients(train: TrainSpec, *, num_trainable: int, num_16bit_trainable: int, num_ranks: int,
                    grads_bytes: int, hidden_size: int, largest_trainable: int) -> Transients:
    """Everything above for one rank."""
    n = max(num_ranks, 1)
    # Moments: fp32, except pure bf16 where torch keeps them in the parameter dtype (DESIGN.md section 3).
    moment_bytes = 2 if train.precision is Precision.BF16 else 4
    on_gpu = num_trainable
    if train.zero_stage >= 1:
        on_gpu = -(-num_trainable // n)  # the rank's partition (DeepSpeed steps its flat fp32 partition)
    if train.offload is not Offload.NONE:
        on_gpu = 0  # the optimizer runs on the CPU
    scratch = optimizer_scratch_bytes(train, num_trainable_on_gpu=on_gpu, moment_bytes=moment_bytes,
                                      largest_trainable=largest_trainable)
    master = master_grad_copy_bytes(train, num_16bit_trainable)
    grad_bytes = 2 if train.precision.compute_dtype in ("bf16", "fp16") else 4
    persistent = ddp_bucket_bytes(train, grads_bytes, n) + deepspeed_bucket_bytes(train, hidden_size, grad_bytes)
    notes = []
    if scratch:
        notes.append("optimizer step: torch AdamW foreach makes a copy of the second moment (sqrt); "
                     "fused AdamW would not.")
    return Transients(step_bytes=scratch + master, persistent_bytes=persistent, notes=tuple(notes))
