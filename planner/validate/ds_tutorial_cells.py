"""DeepSpeed's ZeRO tutorial config (issue 17 item 1; examples/deepspeed/deepspeed_tutorial_zero_infinity_offload.json:
stage 3, 1e7-element reduce and prefetch buckets, persistence threshold 1e5), in the full matrix only (the CI subset
is over its time budget), on two gloo ranks. Its bucket holds every gradient of these small models, so everything
is reduced at the end of backward (estimate/zero3_epilogue.py): full bf16-mixed Llama with the tutorial's
optimizer and parameter offload and without offload, and LoRA on Qwen2 (only the adapters reach the bucket; the
gathered base parameters are counted as planner counts them through backward)."""

from __future__ import annotations

import json

from planner.specs import ZeroConfig
from planner.validate.cell import HEAD_DIM, Cell

# the tutorial's zero_optimization numbers (stage3_max_live_parameters, stage3_max_reuse_distance and
# sub_group_size are DeepSpeed's defaults, 1e9)
TUTORIAL_ZERO_CONFIG = json.dumps(ZeroConfig(reduce_bucket_size=10_000_000, stage3_prefetch_bucket_size=10_000_000,
                                             stage3_param_persistence_threshold=100_000).to_dict(), sort_keys=True)

DS_TUTORIAL_CELLS = (
    *(Cell(family="llama", hidden=128, layers=2, heads=128 // HEAD_DIM, kv_heads=2, intermediate=352, vocab=2048,
           method="full", precision="bf16-mixed", zero=3, num_ranks=2, ckpt=False, attn="sdpa", seq_len=64,
           micro_batch=1, zero_config=TUTORIAL_ZERO_CONFIG, offload=offload)
      for offload in ("optimizer+params", "")),
    Cell(family="qwen2", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="lora-all", precision="bf16-mixed", zero=3, num_ranks=2, ckpt=False, attn="sdpa", seq_len=32,
         micro_batch=2, zero_config=TUTORIAL_ZERO_CONFIG),
)
