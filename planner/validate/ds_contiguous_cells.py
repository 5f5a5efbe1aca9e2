"""DeepSpeed ZeRO-3 with ``contiguous_gradients: false`` (issue 17 item 2), in the full matrix only (the CI subset
is over its time budget), on two gloo ranks: no bucket buffer; each gradient waits in its own tensor until its
bucket is reduced (estimate/step/tape.py ``_hold_in_bucket``, estimate/zero3_epilogue.py). Full bf16-mixed Llama
with the Trainer's "auto" bucket (h*h elements: many reductions during backward, each with its flat copies) and
with DeepSpeed's default 5e8-element bucket (every gradient waits until the end of backward)."""

from __future__ import annotations

import json

from planner.specs import ZeroConfig
from planner.validate.cell import HEAD_DIM, Cell


def _ds(**values) -> str:
    return json.dumps(ZeroConfig(contiguous_gradients=False, **values).to_dict(), sort_keys=True)


DS_CONTIGUOUS_CELLS = tuple(
    Cell(family="llama", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="full", precision="bf16-mixed", zero=3, num_ranks=2, ckpt=False, attn="sdpa", seq_len=32,
         micro_batch=2, zero_config=zero_config)
    for zero_config in (_ds(), _ds(reduce_bucket_size=500_000_000))
)
