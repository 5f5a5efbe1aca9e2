"""Transient memory outside the forward/backward graph: optimizer-step scratch, mixed-precision gradient copies,
data-parallel buckets, DeepSpeed buffers.

The forward/backward transients (logits upcast, loss gradients, dequantized 4-bit weights, recomputation) come
from the simulated step (step/simulate.py); the ZeRO fp32 gradient partition and ZeRO-3 gathered parameters
from sharding.py. What is added here, with the phase it lives in:

- ``optimizer_step``: the scratch of the optimizer's update (below) and, for mixed precision without
  DeepSpeed, the fp32 copies of the 16-bit gradients the master weights are stepped with;
- all phases: DDP's gradient buckets (ZeRO 0 on several ranks) and DeepSpeed's reduce bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.estimate.count.zero_partition import RankPartition, even_partition
from planner.specs import Offload, Optimizer, Precision, TrainSpec

# torch.optim.AdamW with foreach=True (the CUDA default, and what `planner profile` uses on every device,
# planner/profile/optim.py): torch/optim/adam.py ``_multi_tensor_adam`` computes
# ``exp_avg_sq_sqrt = torch._foreach_sqrt(device_exp_avg_sqs)`` -- one new tensor per parameter, all at once:
# a full copy of the second moment -- then divides and adds in place. fused=True (the HF Trainer default
# "adamw_torch_fused" on torch >= 2.8) updates in one kernel without it.
ADAMW_FOREACH_SCRATCH_COPIES = 1
# torch.optim.AdamW(fused=True) (``--optimizer adamw-fused``; torch 2.13): torch/optim/adam.py ``_fused_adam``
# groups the tensors by device and dtype (``Optimizer._group_tensors_by_device_and_dtype``: lists, no copies),
# bumps the step counters in place (``torch._foreach_add_(device_state_steps, 1)``) and calls
# ``torch._fused_adamw_`` once per group. That kernel updates param, exp_avg and exp_avg_sq element by element
# in registers: on CUDA aten/src/ATen/native/cuda/FusedAdamWKernel.cu ``_fused_adamw_kernel_cuda_``
# (multi_tensor_apply_for_fused_optimizer, tensor addresses passed as kernel arguments), on CPU
# aten/src/ATen/native/FusedAdam.cpp ``_fused_adam_kernel_cpu_`` -> cpu/FusedAdamKernel.cpp
# ``adam_fused_step_impl`` (``grad.contiguous()`` is the gradient itself; 16-bit values are widened to fp32
# per vector). No full-size scratch: 0 copies. Only on CPU, ``_foreach_add_`` takes the per-tensor slow path
# and wraps the Python 1 in an 8-byte scalar converted to the counter's float32 (12 bytes, one counter at a
# time; foreach's CPU step has the same kind of scalar), not counted (tests/test_fused_adamw.py measures both).
# The fused step counters live on the device (states.py ``FUSED_STEP_COUNTER_BYTES``).
ADAMW_FUSED_SCRATCH_COPIES = 0
# transformers' Adafactor (transformers/optimization.py) loops over parameters; per parameter it builds
# ``update = grad**2 + eps``, the approximated second moment and the update (about three fp32 copies of the
# largest parameter at a time).
ADAFACTOR_SCRATCH_COPIES = 3


# DeepSpeed ZeRO-3 keeps a gathered parameter after a module's forward when it will be used again within
# ``stage3_max_reuse_distance`` elements of fetches (default 1e9, deepspeed/runtime/zero/config.py;
# partitioned_param_coordinator.py ``__params_to_release``; ZeroConfig.stage3_max_reuse_distance). Around the
# turn from forward to backward the top layers are reused within that distance, so about half of it (fetched
# once in forward, once in backward) stays gathered, in the 16-bit dtype; a small model stays gathered entirely
# (measured on CPU with `planner profile --zero 3`: every non-persistent parameter gathered at the loss
# backward).
# DistributedDataParallel broadcasts rank 0's parameters and buffers at construction (torch 2.13
# torch/nn/parallel/distributed.py ``__init__`` -> torch/distributed/utils.py ``_sync_module_states`` ->
# ``_sync_params_and_buffers`` -> ``dist._broadcast_coalesced``): c10d's ``broadcast_coalesced``
# (torch/csrc/distributed/c10d/comm.cpp) flattens each bucket of at most ``broadcast_bucket_size`` bytes into a
# ``BroadcastWork``'s flat tensor, keeps at most two in flight and drops each once ``finish()`` has copied it
# back: the copy lives only while DDP is constructed, before the first step, with gloo as with NCCL. The
# params-sized tensor DDP keeps from construction on is the Reducer's gradient bucket (``ddp_bucket_bytes``).
# Measured: a 2-rank gloo DDP run records no such copy on either rank (tests/test_profile_command.py, the DDP
# validation cells); the rule that once added one on CPU is gone.


# DeepSpeed computes the gradient norm before every ZeRO 1/2 step (zero_optimization.compute_grad_norm,
# default true) in fp64: stage_1_and_2.py get_grad_norm_direct runs
# ``torch.linalg.vector_norm(g.data.to(get_norm_dtype()))`` on each gradient piece of the rank's partition in
# turn, and zero/utils.py get_norm_dtype is torch.double wherever the device has fp64 (CUDA and CPU).
DS_NORM_BYTES_PER_ELEMENT = 8


@dataclass(frozen=True)
class ZeroStep:
    """A DeepSpeed ZeRO 1/2 optimizer step (no offload), moment by moment (stage_1_and_2.py v0.19 ``step``),
    as bytes above params + optimizer states + persistent buffers:

    - ``norm``: the rank's gradient buffer (``grads_in_partition``, zero_partition.py) plus an fp64 copy of
      its largest gradient piece (the norm);
    - ``flatten``: the buffer plus the flat copy of the partition (``flatten(averaged_gradients)``) and, when
      gradients are 16-bit, the fp32 copy made of it (``.to(fp32)``; the flat 16-bit copy is deleted after);
    - ``update``: the gradient pieces freed (``free_grad_in_param_list``), the fp32 gradient partition and the
      optimizer's scratch over the partition.

    - ``gather``: on CPU, the all-gather of the updated partitions (``all_gather_dp_groups`` ->
      ``all_gather_into_tensor_dp_groups``: ``dist.all_gather_into_tensor(group_flat, ...)`` into the flat 16-bit
      buffer), inside which gloo allocates a buffer the size of its output (fsdp2_step.py
      ``GLOO_ALL_GATHER_OUTPUT_COPIES``): the whole padded flat group, every gradient and the fp32 gradient
      partition already freed.

    The reduce bucket is gone by then (``_release_ipg_buffers`` at the end of backward). ZeRO-1 also has an
    end-of-backward moment (``epilogue_grads_bytes``): the gradients still in their own storage plus the buffer
    just allocated.
    """

    partition_grads_bytes: int  # the rank's gradient buffer in the gradient dtype
    norm_bytes: int
    flatten_bytes: int
    update_bytes: int
    epilogue_grads_bytes: int = 0  # ZeRO-1: gradients at the moment grads_in_partition is allocated
    gather_bytes: int = 0  # CPU (gloo): the all-gather's output-sized buffer at the end of the step
    # ZeRO-2: the late-backward segment from which the buffer exists (zero_partition.buffer_segment; 0: from the
    # first gradient, the earliest, as for the rank an estimate reports by default)
    buffer_segment: int = 0
    # ZeRO-2: the gradient elements reduced before the buffer exists (zero_partition.buffer_threshold), which picks
    # the sub-segment of the late backward where it appears (StepProfile.backward_late_flushes); None: from the
    # start of buffer_segment
    buffer_threshold: int | None = None


@dataclass(frozen=True)
class Transients:
    step_bytes: int  # only during the optimizer step
    persistent_bytes: int  # through every phase of the step (buckets)
    late_bytes: int = 0  # from the first reduced gradient to the end of backward (ZeRO 1/2 reduce bucket)
    gathered_bytes: int = 0  # forward and backward (ZeRO-3 parameters kept gathered for reuse)
    zero_step: ZeroStep | None = None  # DeepSpeed ZeRO 1/2 without offload: the step's moments
    allreduce_flat_bytes: int = 0  # DeepSpeed stage 0: the largest flat gradient bucket at the end of backward
    notes: tuple[str, ...] = ()


# gloo's all-gather allocates a buffer the size of its output inside the call, two in turn, one at a time
# (torch/csrc/distributed/c10d/ProcessGroupGloo.cpp): measured at every FSDP2 all-gather on CPU and at the end of
# every DeepSpeed ZeRO 1/2 step on CPU (3 gloo ranks, GPT-2 h96 fp32: two 1,594,752-byte buffers, the whole flat
# group, on each rank; tests/test_zero_partition.py). Not modelled on CUDA (NCCL gathers in place).
GLOO_ALL_GATHER_OUTPUT_COPIES = 1


def zero12_step(train: TrainSpec, partition: RankPartition, *, grad_bytes: int, scratch_bytes: int,
                num_ranks: int = 1, device: str = "cuda") -> ZeroStep | None:
    """The ZeroStep of one rank (None outside ZeRO 1/2 without offload)."""
    if train.zero_stage not in (1, 2) or train.offload is not Offload.NONE or partition.num_partition <= 0:
        return None
    part = partition.num_partition
    buffer = partition.num_buffer * grad_bytes
    fp32_copy = part * 4 if grad_bytes != 4 else 0
    return ZeroStep(
        partition_grads_bytes=buffer,
        norm_bytes=buffer + DS_NORM_BYTES_PER_ELEMENT * partition.num_largest_piece,
        flatten_bytes=buffer + part * grad_bytes + fp32_copy,
        update_bytes=part * 4 + scratch_bytes,
        epilogue_grads_bytes=(partition.num_full_grads_at_buffer * grad_bytes + buffer
                              if train.zero_stage == 1 else 0),
        # the flat 16-bit group (bit16_groups_flat, padded to num_ranks partitions) in the parameters' dtype, which
        # is the gradients' (DeepSpeedZeroOptimizer.dtype); skipped on one rank (dp_world_size == 1)
        gather_bytes=(GLOO_ALL_GATHER_OUTPUT_COPIES * num_ranks * part * grad_bytes
                      if device == "cpu" and num_ranks > 1 else 0),
    )


def optimizer_scratch_bytes(train: TrainSpec, *, num_trainable_on_gpu: int, moment_bytes: int,
                            largest_trainable: int) -> int:
    """Scratch of one optimizer update over ``num_trainable_on_gpu`` parameters held on this GPU."""
    if num_trainable_on_gpu <= 0:
        return 0
    if train.optimizer in (Optimizer.ADAMW,):
        return ADAMW_FOREACH_SCRATCH_COPIES * num_trainable_on_gpu * moment_bytes
    if train.optimizer is Optimizer.ADAMW_FUSED:
        return ADAMW_FUSED_SCRATCH_COPIES * num_trainable_on_gpu * moment_bytes
    if train.optimizer is Optimizer.ADAFACTOR:
        return ADAFACTOR_SCRATCH_COPIES * min(largest_trainable, num_trainable_on_gpu) * 4
    # SGD with momentum (foreach: in place after the first step), bitsandbytes 8-bit / paged AdamW (fused
    # per-parameter kernels): no full-size scratch.
    return 0


def master_grad_copy_bytes(train: TrainSpec, num_16bit_trainable: int) -> int:
    """Mixed precision without DeepSpeed: the 16-bit gradients converted to fp32 for the master weights, all at
    once at the step (what DeepSpeed's ZeRO optimizers do for their partition; planner/profile/optim.py
    ``MasterWeightsOptimizer``). DeepSpeed at stage 0 does the same (runtime/fp16/unfused_optimizer.py
    ``FP16_UnfusedOptimizer.step``: ``fp16_param.grad.to(fp32)`` for every parameter before the step; ds_stage0.py)."""
    if (train.uses_deepspeed and train.zero_stage != 0) or not train.precision.has_master_weights:
        return 0
    return 4 * num_16bit_trainable


def ddp_bucket_bytes(train: TrainSpec, grads_bytes: int, num_ranks: int) -> int:
    """torch DistributedDataParallel (ZeRO 0 on several ranks) copies gradients into its own buckets
    (bucket_cap_mb=25 each, covering every trainable parameter; gradient_as_bucket_view=False by default,
    torch/nn/parallel/distributed.py): a second copy of the gradients, allocated when DDP is built."""
    if train.uses_deepspeed or num_ranks <= 1:
        return 0
    return grads_bytes


def reduce_bucket_elements(train: TrainSpec, hidden_size: int) -> int:
    """DeepSpeed's ``reduce_bucket_size`` in elements: the run's (``--deepspeed-config``), or "auto" as the HF
    Trainer fills it (h*h; what `planner profile` and the emitted DeepSpeed config write)."""
    return train.parallelism.zero_config.reduce_bucket(hidden_size)


def deepspeed_bucket_bytes(train: TrainSpec, hidden_size: int, grad_dtype_bytes: int) -> int:
    """DeepSpeed's contiguous-gradient reduce buckets, ``reduce_bucket_size`` elements in the gradient dtype:
    ZeRO 1/2 (stage_1_and_2.py ``setup_buckets``) allocate one when the first gradient arrives and a second with
    ``overlap_comm`` ("double buffers to avoid data access conflict"; stage 1 fills them too, at the accumulation
    boundary, since contiguous_gradients installs the hooks); ZeRO-3 (stage3.py
    ``DeepSpeedZeroOptimizer_Stage3.__init__``, "# IPG") allocates one at start-up, whether or not it overlaps
    (overlap_comm only moves the reduction to a side stream). Under "auto" that is h*h elements; planner counted
    ZeRO-3's at the prefetch bucket's 0.9*h*h until a profile with DeepSpeed's default buckets (5e8 reduce, 5e7
    prefetch) measured the 5e8 one."""
    zero = train.parallelism.zero_config
    if train.zero_stage in (1, 2) and train.offload is Offload.NONE:
        buffers = 2 if zero.overlaps(train.zero_stage) else 1
        return buffers * reduce_bucket_elements(train, hidden_size) * grad_dtype_bytes
    if train.zero_stage == 3 and zero.contiguous_gradients:
        return reduce_bucket_elements(train, hidden_size) * grad_dtype_bytes
    return 0  # ZeRO-3 without contiguous gradients allocates no bucket buffer (the gradients wait where they are)


def zero3_gathered_bytes(train: TrainSpec, num_params: int, largest_module: int, param_dtype_bytes: int) -> int:
    """16-bit parameters ZeRO-3 keeps gathered around the forward/backward turn (stage3_max_reuse_distance).
    Parameter offload changes where the partition lives, not what is gathered: the coordinator that releases
    gathered parameters (partitioned_param_coordinator.py ``release_sub_module``, reuse distance) reads no
    offload setting, and the CPU profiles with and without ``offload_param`` gather the same bytes."""
    if train.zero_stage != 3:
        return 0
    reuse = train.parallelism.zero_config.stage3_max_reuse_distance
    return param_dtype_bytes * min(num_params, reuse // 2 + largest_module)


def step_transients(train: TrainSpec, *, num_trainable: int, num_16bit_trainable: int, num_ranks: int,
                    grads_bytes: int, hidden_size: int, largest_trainable: int, num_params: int = 0,
                    largest_trainable_tensor: int | None = None,
                    partition: RankPartition | None = None, num_stepped_16bit: int | None = None,
                    optimizer_step_bytes: int | None = None, device: str = "cuda") -> Transients:
    """Everything above for one rank. ``largest_trainable``: the largest module (ZeRO-3 gathering, Adafactor);
    ``largest_trainable_tensor``: the largest trainable parameter (ZeRO 1/2 norm; default the former);
    ``partition``: the rank's ZeRO 1/2 partition (zero_partition.py; default an even share);
    ``num_stepped_16bit``: without DeepSpeed, the trainable parameters stepped in 16 bits with 16-bit states
    (states.py; default: every one in pure bf16, none otherwise); ``optimizer_step_bytes``: the step scratch of
    an optimizer with a per-tensor rule (optim_rules.py), in place of ``optimizer_scratch_bytes``; ``device``:
    "cpu" for gloo's collective buffers (ZeroStep ``gather``)."""
    n = max(num_ranks, 1)
    largest_tensor = largest_trainable if largest_trainable_tensor is None else largest_trainable_tensor
    if partition is None:
        partition = even_partition(num_trainable, n, largest_tensor)
    # Moments: fp32, except pure bf16 where torch keeps them in the parameter dtype (DESIGN.md section 3).
    moment_bytes = 2 if train.precision is Precision.BF16 else 4
    on_gpu = num_trainable
    if train.zero_stage in (1, 2):
        on_gpu = partition.num_partition  # DeepSpeed steps the rank's flat fp32 partition
    elif train.zero_stage == 3:
        on_gpu = -(-num_trainable // n)
    if train.offload is not Offload.NONE:
        on_gpu = 0  # the optimizer runs on the CPU
    scratch = optimizer_scratch_bytes(train, num_trainable_on_gpu=on_gpu, moment_bytes=moment_bytes,
                                      largest_trainable=largest_trainable)
    if optimizer_step_bytes is not None:
        scratch = optimizer_step_bytes if on_gpu else 0
    elif (num_stepped_16bit is not None and not train.uses_deepspeed and on_gpu > 0
            and train.optimizer in (Optimizer.ADAMW, Optimizer.ADAMW_FUSED)):
        # torch's foreach/fused AdamW groups tensors by dtype: the scratch of each group is in its states' dtype
        # (16-bit adapters stepped as they are, fp32 ones beside them: peft_dtypes.py).
        scratch = (optimizer_scratch_bytes(train, num_trainable_on_gpu=num_stepped_16bit, moment_bytes=2,
                                           largest_trainable=largest_trainable)
                   + optimizer_scratch_bytes(train, num_trainable_on_gpu=on_gpu - num_stepped_16bit, moment_bytes=4,
                                             largest_trainable=largest_trainable))
    master = master_grad_copy_bytes(train, num_16bit_trainable)
    grad_bytes = 2 if train.precision.compute_dtype in ("bf16", "fp16") else 4
    persistent = ddp_bucket_bytes(train, grads_bytes, n)
    bucket = deepspeed_bucket_bytes(train, hidden_size, grad_bytes)
    late = bucket if train.zero_stage in (1, 2) else 0
    persistent += bucket if train.zero_stage == 3 else 0
    zero_step = zero12_step(train, partition, grad_bytes=grad_bytes, scratch_bytes=scratch, num_ranks=n,
                            device=device)
    gathered = zero3_gathered_bytes(train, num_params, largest_trainable, grad_bytes)
    notes = []
    if scratch and train.optimizer is Optimizer.ADAMW:
        notes.append("optimizer step: torch AdamW foreach makes a copy of the second moment (sqrt); "
                     "fused AdamW would not.")
    if gathered:
        notes.append("ZeRO-3 keeps the parameters it will reuse within stage3_max_reuse_distance gathered "
                     "between forward and backward.")
    if zero_step is not None and zero_step.norm_bytes >= max(zero_step.flatten_bytes, zero_step.update_bytes):
        notes.append("DeepSpeed computes the gradient norm in fp64 before the step: a double copy of the largest "
                     "gradient piece of the rank's partition.")
    return Transients(step_bytes=scratch + master, persistent_bytes=persistent, late_bytes=late,
                      gathered_bytes=gathered, zero_step=zero_step, notes=tuple(notes))
