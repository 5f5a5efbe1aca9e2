"""DeepSpeed ZeRO-3 with CPU offload (issue 17 item 2), in the full matrix only (the CI subset is over its time
budget): full bf16-mixed Llama on two ranks with the optimizer offloaded (``offload_optimizer``: the fp32
master partition, its moments and the fp32 gradient partition on the host, stepped there) and with the optimizer
and the parameters offloaded (``offload_param`` too: the 16-bit partition on the host, gathered to the device
per module). On CPU the host and the device are one pool, so these cells check both sides together; the split
between them follows DeepSpeed's source (estimate/host_ram.py)."""

from __future__ import annotations

from planner.validate.cell import HEAD_DIM, Cell

DS_OFFLOAD_CELLS = tuple(
    Cell(family="llama", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="full", precision="bf16-mixed", zero=3, num_ranks=2, ckpt=False, attn="sdpa", seq_len=32,
         micro_batch=1, offload=offload)
    for offload in ("optimizer", "optimizer+params")
)
