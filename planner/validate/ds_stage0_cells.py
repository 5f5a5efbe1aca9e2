"""DeepSpeed's own engine at ZeRO stage 0 (``--engine deepspeed --zero 0``, issue 16 item 1), in the full matrix only
(FULL_ONLY_CELLS): full bf16-mixed fine-tuning with a torch AdamW, which DeepSpeed 0.19 wraps in its
FP16_UnfusedOptimizer (per-tensor fp32 masters, every gradient converted to fp32 at the step) and reduces through
its flat all-reduce buckets at the end of backward (estimate/ds_stage0.py). One process and two gloo ranks; a GPT-2
(tied head, dropout) and a grouped-query Llama with checkpointing."""

from __future__ import annotations

from planner.validate.cell import HEAD_DIM, Cell

DS_STAGE0_CELLS = (
    Cell(family="llama", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="full", precision="bf16-mixed", zero=0, num_ranks=1, ckpt=False, attn="sdpa", seq_len=64,
         micro_batch=2, engine="deepspeed"),
    Cell(family="gpt2", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=64 // HEAD_DIM, intermediate=256,
         vocab=512, method="full", precision="bf16-mixed", zero=0, num_ranks=2, ckpt=True, attn="sdpa", seq_len=32,
         micro_batch=2, engine="deepspeed"),
)
