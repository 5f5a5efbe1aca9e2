"""``--task grpo`` cells (issue 21): TRL's GRPOTrainer (planner/profile/trl_grpo.py) with transformers generation,
one CPU process: full and LoRA, group sizes 2, 4 and 8, with a reference (beta 0.04: a frozen copy for the full
policy, the adapter disabled for LoRA) and without (beta 0, TRL's default). Each run imports TRL, generates and
tokenizes: the full matrix only."""

from __future__ import annotations

import json

from planner.specs.grpo import GrpoSpec
from planner.validate.cell import HEAD_DIM, Cell


def _grpo(method: str, generations: int, beta: float, *, family: str = "llama", hidden: int = 64, vocab: int = 512,
          precision: str = "fp32", seq_len: int = 32, completion: int = 16, micro_batch: int = 4,
          ckpt: bool = False) -> Cell:
    heads = hidden // HEAD_DIM
    grpo = GrpoSpec(num_generations=generations, completion_len=completion, beta=beta)
    return Cell(family=family, hidden=hidden, layers=2, heads=heads, kv_heads=2,
                intermediate=3 * hidden if family == "llama" else 2 * hidden, vocab=vocab, method=method,
                precision=precision, zero=0, num_ranks=1, ckpt=ckpt, attn="sdpa", seq_len=seq_len,
                micro_batch=micro_batch, task="grpo", grpo=json.dumps(grpo.to_dict(), sort_keys=True))


GRPO_CELLS = (
    _grpo("full", 2, 0.04),
    _grpo("full", 4, 0.0),
    _grpo("lora-all", 2, 0.04),
    _grpo("lora-all", 4, 0.0),
    # pure bf16 with checkpointing, tied embeddings (qwen2), a group of 8 in an 8-completion micro-batch, a copy
    _grpo("full", 8, 0.04, family="qwen2", hidden=96, vocab=1024, precision="bf16", seq_len=48, completion=24,
          micro_batch=8, ckpt=True),
)
