"""FSDP2 cells (issue 18): torch's ``fully_shard`` per decoder layer and on the root, two ranks over gloo, in the
full matrix only (the CI subset is near its time budget).

Llama and GPT-2 (Conv1D, tied embeddings, dropout) and Qwen2 (QKV bias, tied embeddings); full fine-tuning and
LoRA (the frozen base sharded without gradients); resharding after forward on and off; the bf16 mixed-precision
policy (fp32 shards, bf16 gathers, fp32 or bf16 reduce) and no policy (fp32, pure bf16); CPU offload (on CPU
every state is host memory already: the cell checks the run, not the split); checkpointing on and off.
"""

from __future__ import annotations

import json

from planner.specs.fsdp import FsdpConfig
from planner.validate.cell import HEAD_DIM, Cell


def _fsdp(**settings) -> str:
    return json.dumps(FsdpConfig(**settings).to_dict(), sort_keys=True)


def _llama(method: str, precision: str, ckpt: bool, **fsdp) -> Cell:
    return Cell(family="llama", hidden=96, layers=3, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
                method=method, precision=precision, zero=0, num_ranks=2, ckpt=ckpt, attn="sdpa", seq_len=64,
                micro_batch=2, fsdp=_fsdp(**fsdp))


def _gpt2(method: str, precision: str, ckpt: bool, **fsdp) -> Cell:
    return Cell(family="gpt2", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=64 // HEAD_DIM, intermediate=256,
                vocab=512, method=method, precision=precision, zero=0, num_ranks=2, ckpt=ckpt, attn="eager",
                seq_len=64, micro_batch=2, fsdp=_fsdp(**fsdp))


FSDP2_CELLS = (
    _llama("full", "bf16-mixed", False),
    _llama("full", "bf16-mixed", False, reshard_after_forward=False),
    _llama("full", "bf16-mixed", True),
    _llama("full", "bf16-mixed", False, reduce_dtype=None),
    _llama("full", "fp32", False),
    _llama("full", "bf16", False),
    _llama("full", "bf16-mixed", False, cpu_offload=True),
    _llama("lora-all", "bf16-mixed", False),
    _llama("lora-all", "bf16-mixed", True),
    _llama("lora-attn", "bf16-mixed", False, reshard_after_forward=False),
    _gpt2("full", "bf16-mixed", False),
    _gpt2("full", "fp32", True, reshard_after_forward=False),
    _gpt2("lora-attn", "bf16-mixed", True),
    Cell(family="qwen2", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=192, vocab=2048,
         method="full", precision="bf16-mixed", zero=0, num_ranks=2, ckpt=False, attn="sdpa", seq_len=64,
         micro_batch=2, fsdp=_fsdp()),
)
