"""A bf16 base under autocast with LoRA (``--precision bf16-base-autocast``, issue 16): the base loaded in bf16,
peft's fp32 adapters, the forward under accelerate's bf16 autocast, as the HF Trainer runs LoRA with ``bf16=True``
on a model transformers 5 loads in its checkpoint's dtype (profile/autocast_run.py; estimate/step/autocast.py:
the bf16 base weights are not cast, peft's fp32 copy of each adapter input is cast to bf16 again for lora_A, the
adapters' bf16 copies cached). The shapes of the fp32-base autocast LoRA cells (autocast_lora_cells.py), so the two
recipes compare cell for cell. Full matrix only (FULL_ONLY_CELLS)."""

from __future__ import annotations

from planner.validate.cell import HEAD_DIM, Cell

BASE_AUTOCAST_CELLS = (
    Cell(family="llama", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="lora-all", precision="bf16-base-autocast", zero=0, num_ranks=1, ckpt=False, attn="sdpa",
         seq_len=128, micro_batch=2),
    Cell(family="qwen2", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=192, vocab=512,
         method="lora-all", precision="bf16-base-autocast", zero=0, num_ranks=1, ckpt=True, attn="sdpa",
         seq_len=128, micro_batch=2),
)
