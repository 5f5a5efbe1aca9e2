"""QLoRA with its 4-bit base sharded across ranks, ``bnb_4bit_quant_storage`` in the compute dtype
(estimate/qlora_shard.py), two ranks over gloo, in the full matrix only (the CI subset is over its time budget).

DeepSpeed ZeRO-3 (issue 17 item 3): Llama NF4 with double quantization, no checkpointing (its k/v projections' 768
bf16 storage elements fall under the 960-element persistence threshold and stay whole; the embedding is dropped after
forward), and Qwen2 (QKV bias) without double quantization, with checkpointing.

FSDP2 (issue 18 item 2, torchtune's per-layer ``fully_shard`` then the root, the bf16 policy with fp32 reduce): the
FSDP-QLoRA recipe's 16-bit unquantized layers (``--qlora-prep 16bit``, as TRL does for sharded QLoRA) on Llama with
double quantization and on GPT-2 (Conv1D made Linear4bit, eager attention, checkpointing); and Llama with peft's
``prepare_model_for_kbit_training`` (fp32 norms and embeddings sharded, gathered in bf16) and checkpointing.
"""

from __future__ import annotations

from planner.validate.cell import HEAD_DIM, Cell
from planner.validate.fsdp2_cells import _fsdp

QLORA_ZERO3_CELLS = (
    Cell(family="llama", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="qlora-dq", precision="bf16-mixed", zero=3, num_ranks=2, ckpt=False, attn="sdpa", seq_len=64,
         micro_batch=2),
    Cell(family="qwen2", hidden=128, layers=2, heads=128 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=2048,
         method="qlora-nodq", precision="bf16-mixed", zero=3, num_ranks=2, ckpt=True, attn="sdpa", seq_len=64,
         micro_batch=2),
)

QLORA_FSDP2_CELLS = (
    Cell(family="llama", hidden=96, layers=3, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="qlora-dq", precision="bf16-mixed", zero=0, num_ranks=2, ckpt=False, attn="sdpa", seq_len=64,
         micro_batch=2, qlora_prep="16bit", fsdp=_fsdp()),
    Cell(family="gpt2", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=64 // HEAD_DIM, intermediate=256,
         vocab=512, method="qlora-nodq", precision="bf16-mixed", zero=0, num_ranks=2, ckpt=True, attn="eager",
         seq_len=64, micro_batch=2, qlora_prep="16bit", fsdp=_fsdp()),
    Cell(family="llama", hidden=96, layers=3, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="qlora-nodq", precision="bf16-mixed", zero=0, num_ranks=2, ckpt=True, attn="sdpa", seq_len=64,
         micro_batch=2, fsdp=_fsdp()),
)
