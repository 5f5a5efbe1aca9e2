"""DeepSpeed's own engine at ZeRO stage 0 (``--engine deepspeed --zero 0``): data parallelism with DeepSpeed's
mixed-precision optimizer wrapper instead of torch DDP.

What DeepSpeed 0.19 builds for bf16 with the HF Trainer's client torch AdamW (deepspeed/runtime/engine.py):

- ``_do_optimizer_sanity_check``: ZeRO off and the model dtype equal to the gradient-accumulation dtype (both
  bf16 unless ``data_types.grad_accum_dtype`` says otherwise; bf16 weights with fp32 accumulation at stage 0 raise
  NotImplementedError) returns ``DDP_BFLOAT16``; ``BFLOAT16`` (the ``BF16_Optimizer`` of runtime/bf16_optimizer.py,
  with its flat fp32 gradient buffers and ``bf16.immediate_grad_update``) only under pipeline parallelism, or at
  ZeRO stage 1 with fp32 gradient accumulation. ``_configure_optimizer`` then calls ``_configure_fp16_optimizer``
  with bf16, which builds ``FP16_Optimizer`` (flattened groups) only for DeepSpeed's or apex's FusedAdam and
  ``FP16_UnfusedOptimizer`` for any other optimizer, torch's AdamW among them.
- ``FP16_UnfusedOptimizer.__init__`` (runtime/fp16/unfused_optimizer.py): ``p.clone().float().detach()`` of every
  trainable parameter, not flattened (fp32 masters, 4 bytes each, even for an fp32 parameter, whose clone is a
  copy); ``initialize_optimizer_states`` steps zero gradients once at start-up, so the moments exist from step 0.
- ``step``: each 16-bit gradient is converted to a new fp32 tensor (``fp16_param.grad.to(fp32)``), all of them
  before ``self.optimizer.step()``; the fp32 gradients are dropped after the masters are copied back. That is
  the same step as planner's fp32-master optimizer without DeepSpeed (temporaries.master_grad_copy_bytes); the
  gradient norm before it (``get_weight_norm``: ``p.data.float().norm()`` per gradient) holds one fp32 copy of
  a single gradient at a time, below the step's fp32 gradients.
- the gradients stay in the bf16 ``.grad`` of the parameters (no flat buffer, no DDP buckets); at the end of
  backward ``allreduce_gradients`` -> ``buffered_allreduce_fallback`` -> ``allreduce_no_retain`` gathers them in
  ``module.parameters()`` order into buckets that close once they pass ``MEMORY_OPT_ALLREDUCE_SIZE`` (5e8)
  elements, flattens each bucket (``allreduce_bucket``: ``self.flatten``, a new tensor in the gradient dtype;
  ``communication_data_type`` is bf16 under bf16, so no second copy), all-reduces it and copies it back. It
  runs on one rank too (``enable_backward_allreduce``).
"""

from __future__ import annotations

from planner.specs import TrainSpec

# deepspeed/runtime/engine.py MEMORY_OPT_ALLREDUCE_SIZE: allreduce_gradients' default bucket_size
ALLREDUCE_BUCKET_ELEMENTS = 500_000_000


def applies(train: TrainSpec) -> bool:
    return train.uses_deepspeed and train.zero_stage == 0


def allreduce_flat_bytes(numels: tuple[int, ...], grad_bytes: int,
                         elements_per_buffer: int = ALLREDUCE_BUCKET_ELEMENTS) -> int:
    """The largest flat bucket ``allreduce_no_retain`` makes of the gradients (``numels`` in parameter order):
    it appends a tensor, then flattens the bucket once its count exceeds ``elements_per_buffer``."""
    largest = bucket = 0
    for n in numels:
        bucket += n
        if bucket > elements_per_buffer:
            largest, bucket = max(largest, bucket), 0
    return max(largest, bucket) * grad_bytes
