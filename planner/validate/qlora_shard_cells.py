"""QLoRA with its 4-bit base sharded across ranks (issue 17 item 3: DeepSpeed ZeRO-3, ``bnb_4bit_quant_storage`` in
the compute dtype; estimate/qlora_shard.py), two ranks over gloo, in the full matrix only (the CI subset is over its
time budget).

Llama NF4 with double quantization, no checkpointing (its k/v projections' 768 bf16 storage elements fall under the
960-element persistence threshold and stay whole; the embedding is dropped after forward), and Qwen2 (QKV bias)
without double quantization, with checkpointing.
"""

from __future__ import annotations

from planner.validate.cell import HEAD_DIM, Cell

QLORA_ZERO3_CELLS = (
    Cell(family="llama", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="qlora-dq", precision="bf16-mixed", zero=3, num_ranks=2, ckpt=False, attn="sdpa", seq_len=64,
         micro_batch=2),
    Cell(family="qwen2", hidden=128, layers=2, heads=128 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=2048,
         method="qlora-nodq", precision="bf16-mixed", zero=3, num_ranks=2, ckpt=True, attn="sdpa", seq_len=64,
         micro_batch=2),
)
