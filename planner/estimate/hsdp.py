"""HSDP (FSDP2 over a 2-D replicate x shard mesh): what the replicas' all-reduce keeps alive per rank.

torch 2.13, torch/distributed/fsdp/_fully_shard/: with a 2-D mesh (``_fsdp_init.py`` ``HSDPMeshInfo``) every
state is sharded over the shard dim only (fsdp2.py with N = the shard group's size, ``FsdpConfig.shard_size``).
``_fsdp_collectives.py`` ``foreach_reduce`` reduce-scatters a group's gradients over the shard group into
``reduce_output`` (one padded shard, in ``reduce_dtype``) and all-reduces that buffer in place over the replicas
(``dist.all_reduce(reduce_output, group=all_reduce_group)``); ``_to_dtype_if_needed`` then casts it to the
parameters' dtype, and the sharded gradients are views of the cast. ``_fsdp_param_group.py`` ``post_backward``
keeps the reduce-dtype buffer in ``self._all_reduce_state`` (AllReduceState: "keeps the caching allocator from
reusing the block across layers") until that group's next ``_wait_for_post_backward`` or ``finalize_backward``
(the root's final callback, ``_fsdp_state.py`` ``_root_post_backward_final_callback``): each group's buffer lives
to the end of backward. Where ``reduce_dtype`` equals the parameters' dtype the cast is the buffer itself (no
copy) and the held buffer is the sharded gradient; otherwise (bf16 reduce under fp32 shards) it is a second
copy of every group's gradient shard, in the reduce dtype, until the step's backward ends.

Never imports torch.
"""

from __future__ import annotations

from planner.estimate.fsdp2 import Group
from planner.specs import FsdpConfig
from planner.units import dtype_bytes


def held_all_reduce_bytes(groups: tuple[Group, ...], reduce_dtype: str | None, shard: int, *,
                          root: bool) -> int:
    """The reduce-dtype all-reduce buffers HSDP holds beside the sharded gradients (module docstring): of the
    decoder-layer groups, or (``root``) of the root group; 0 where they are the gradients themselves."""
    return sum(g.repeats * t.padded_shard(shard) * dtype_bytes(reduce_dtype) for g in groups if g.root == root
               for t in g.tensors if t.trainable and reduce_dtype not in (None, t.dtype))


def hsdp_note(cfg: FsdpConfig, num_ranks: int) -> str:
    shard = cfg.shard_size(num_ranks)
    return (f"HSDP: a {cfg.replicate_degree} x {shard} replicate x shard mesh; every state is sharded over the {shard} "
            f"ranks of a shard group and each gradient shard all-reduced over the {cfg.replicate_degree} replicas "
            "(memory measured on CPU over gloo, 2 x 2; the all-reduce's time over the inter-node links is modelled "
            "from torch's source, not measured).")
