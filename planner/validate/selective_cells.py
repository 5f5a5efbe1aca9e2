"""Selective activation checkpointing cells (``--selective-ac``, issue 22), in the full matrix only. The layer
policy, which the step simulates layer by layer (estimate/step/selective_layers.py) and the profiler runs as
transformers' per-layer checkpoint on every N-th decoder layer (profile/selective_ac_run.py).

- llama, four layers, full fine-tuning in fp32, every 2nd layer checkpointed (layers 1 and 3): a plain layer
  below a checkpointed one and the other way round;
- llama, four layers, LoRA on every linear in bf16-mixed, every 3rd layer (layer 2 only): peft's frozen base
  with enable_input_require_grads, a checkpointed layer between plain ones;
- qwen2 (QKV biases), three layers, each peaking in backward, full bf16-mixed with eager attention, every 2nd layer (layer 1).

And the op policy (torchtitan's, run through torch's create_selective_checkpoint_contexts; the cache on the
step: estimate/step/sac.py), three layers each, peaking in backward: llama full fp32; llama LoRA on every linear
in bf16-mixed (the mm count runs across base, lora_A and lora_B); qwen2 full bf16-mixed, whose biased q/k/v
projections lower to addmm, which the policy recomputes.
"""

from __future__ import annotations

from planner.validate.cell import HEAD_DIM, Cell

SELECTIVE_CELLS = (
    Cell(family="llama", hidden=96, layers=4, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="full", precision="fp32", zero=0, num_ranks=1, ckpt=False, attn="sdpa", seq_len=256,
         micro_batch=2, selective_ac="2"),
    Cell(family="llama", hidden=96, layers=4, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="lora-all", precision="bf16-mixed", zero=0, num_ranks=1, ckpt=False, attn="sdpa", seq_len=64,
         micro_batch=2, selective_ac="3"),
    Cell(family="qwen2", hidden=128, layers=3, heads=128 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=2048,
         method="full", precision="bf16-mixed", zero=0, num_ranks=1, ckpt=False, attn="eager", seq_len=128,
         micro_batch=2, selective_ac="2"),
    Cell(family="llama", hidden=96, layers=3, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="full", precision="fp32", zero=0, num_ranks=1, ckpt=False, attn="sdpa", seq_len=128,
         micro_batch=2, selective_ac="op"),
    Cell(family="llama", hidden=96, layers=3, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="lora-all", precision="bf16-mixed", zero=0, num_ranks=1, ckpt=False, attn="sdpa", seq_len=128,
         micro_batch=2, selective_ac="op"),
    Cell(family="qwen2", hidden=128, layers=3, heads=128 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=2048,
         method="full", precision="bf16-mixed", zero=0, num_ranks=1, ckpt=False, attn="sdpa", seq_len=128,
         micro_batch=2, selective_ac="op"),
)

__all__ = ["SELECTIVE_CELLS"]
