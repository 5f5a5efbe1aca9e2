"""The autocast recipe with LoRA (``--precision bf16-autocast --method lora``, issue 16): fp32 base weights and
peft's fp32 adapters with the forward under accelerate's autocast, as the HF Trainer runs LoRA with ``bf16=True``
and no DeepSpeed (profile/autocast_run.py; estimate/step/autocast.py: frozen fp32 base weights are cast afresh at
every matmul, the adapters' copies cached). Full matrix only (FULL_ONLY_CELLS)."""

from __future__ import annotations

from planner.validate.cell import HEAD_DIM, Cell

AUTOCAST_LORA_CELLS = (
    Cell(family="llama", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="lora-all", precision="bf16-autocast", zero=0, num_ranks=1, ckpt=False, attn="sdpa", seq_len=128,
         micro_batch=2),
    Cell(family="qwen2", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=192, vocab=512,
         method="lora-all", precision="bf16-autocast", zero=0, num_ranks=1, ckpt=True, attn="sdpa", seq_len=128,
         micro_batch=2),
)
