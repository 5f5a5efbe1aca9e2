"""Sequence packing cells (``--packing``, issue 16 item 5), in the full matrix only (FULL_ONLY_CELLS): the
micro-batch flattened by transformers' DataCollatorWithFlattening into one row whose position ids reset per
document, so the model builds a [tokens, tokens] mask (estimate/step/packed.py). Grouped-query Llama and Qwen2
(2 K/V heads: SDPA with a mask repeats K and V), SDPA and eager, with and without checkpointing; and one on two gloo
ranks under torch DDP (PACKING_RANKS_CELLS: each rank builds its own row's mask beside DDP's gradient buckets)."""

from __future__ import annotations

from planner.validate.cell import HEAD_DIM, Cell

# two ranks, torch DDP (the HF Trainer's multi-GPU default), SDPA, full bf16-mixed with checkpointing
PACKING_RANKS_CELLS = (
    Cell(family="llama", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=192, vocab=512,
         method="full", precision="bf16-mixed", zero=0, num_ranks=2, ckpt=True, attn="sdpa", seq_len=128,
         micro_batch=2, packing=True),
)

PACKING_CELLS = PACKING_RANKS_CELLS + (
    # SDPA, full bf16-mixed, no checkpointing, a 512-token row: every layer's saved bf16 mask and repeated K/V
    Cell(family="llama", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=192, vocab=512,
         method="full", precision="bf16-mixed", zero=0, num_ranks=1, ckpt=False, attn="sdpa", seq_len=256,
         micro_batch=2, packing=True),
    # SDPA, LoRA with checkpointing: the bool mask kept by every layer's frame, the converted one recomputed
    Cell(family="llama", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="lora-all", precision="bf16-mixed", zero=0, num_ranks=1, ckpt=True, attn="sdpa", seq_len=64,
         micro_batch=4, packing=True),
    # eager, fp32: the additive mask and [1, heads, T, T] scores of the flattened row
    Cell(family="qwen2", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=192, vocab=512,
         method="full", precision="fp32", zero=0, num_ranks=1, ckpt=False, attn="eager", seq_len=32,
         micro_batch=2, packing=True),
    # SDPA, pure bf16 with checkpointing, a longer row: the mask is a large part of the peak
    Cell(family="qwen2", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=192, vocab=512,
         method="full", precision="bf16", zero=0, num_ranks=1, ckpt=True, attn="sdpa", seq_len=128,
         micro_batch=2, packing=True),
)
