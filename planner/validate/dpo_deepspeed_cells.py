"""``--task dpo`` under DeepSpeed ZeRO (issue 21): TRL's DPOTrainer with the HF Trainer's DeepSpeed engine
(planner/profile/trl_dpo.py: ``DPOConfig(deepspeed=...)`` over gloo, two ranks under torchrun), fp32. The
reference as TRL's ``prepare_deepspeed`` makes it: a whole copy at stage 0 beside a ZeRO-2 policy, partitioned
beside a ZeRO-3 policy; and a LoRA policy at ZeRO-2 whose reference is its own base (the adapter disabled). Each
run imports TRL and DeepSpeed on two processes: the full matrix only."""

from __future__ import annotations

from planner.validate.cell import HEAD_DIM, Cell


def _dpo_ds(method: str, zero: int, reference: str) -> Cell:
    return Cell(family="llama", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=192, vocab=512,
                method=method, precision="fp32", zero=zero, num_ranks=2, ckpt=False, attn="sdpa", seq_len=48,
                micro_batch=2, task="dpo", reference=reference)


DPO_DEEPSPEED_CELLS = (
    _dpo_ds("full", 2, "copy"),
    _dpo_ds("full", 3, "copy"),
    _dpo_ds("lora-all", 2, "adapter"),
)
