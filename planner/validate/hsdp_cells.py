"""FSDP2 on four ranks (issue 18): plain ``fully_shard`` over a 1-D mesh of 4, and HSDP over a 2 x 2
(replicate x shard) mesh, gloo on CPU, in the full matrix only (the CI subset is near its time budget).

HSDP shards every state over the 2 ranks of a shard group and all-reduces each reduce-scattered gradient shard
over the 2 replicas (torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py ``foreach_reduce``); with the
gradients' own reduce dtype under the bf16 policy each group's bf16 all-reduce buffer is held until the end of
backward (``FSDPParamGroup._all_reduce_state``). Shapes stay tiny: four processes share two cores.
"""

from __future__ import annotations

from dataclasses import replace

from planner.validate.fsdp2_cells import _fsdp, _gpt2, _llama


def _four(cell, replicate: int = 1, **fsdp):
    return replace(cell, num_ranks=4, fsdp=_fsdp(replicate_degree=replicate, **fsdp))


HSDP_CELLS = (
    _four(_llama("full", "bf16-mixed", False), 2),
    _four(_llama("full", "bf16-mixed", False), 2, reduce_dtype=None),
    _four(_llama("lora-all", "bf16-mixed", True), 2),
    _four(_gpt2("full", "fp32", False), 2),
    # short rows: the end of backward peaks, where the layers' held bf16 all-reduce buffers are counted
    replace(_four(_llama("full", "bf16-mixed", False), 2, reduce_dtype=None), seq_len=16, micro_batch=1),
)

FOUR_RANK_FSDP2_CELLS = (
    _four(_llama("full", "bf16-mixed", False)),
    _four(_llama("lora-all", "bf16-mixed", True)),
    _four(_gpt2("full", "bf16-mixed", False)),
)
