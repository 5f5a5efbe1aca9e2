"""DeepSpeed ZeRO-3's last gradient reduction, at the end of backward (issue 17 item 1).

ZeRO-3 copies each gradient into its reduce bucket as it arrives (deepspeed 0.19.8 runtime/zero/stage3.py
``__add_grad_to_ipg_bucket``: with contiguous_gradients the ``.grad`` becomes a view of ``bucket.buffer``, the
``reduce_bucket_size``-element buffer allocated at start-up) and reduces the bucket when the next gradient would
overflow it (``reduce_independent_p_g_buckets_and_remove_grads``) and, for what is left, at the end of backward
(``independent_gradient_partition_epilogue`` -> ``__reduce_and_partition_ipg_grads``). With the default
``reduce_scatter`` the bucket goes through ``__avg_scatter_grads`` -> runtime/comm/coalesced_collectives.py
``reduce_scatter_coalesced``, which interleaves every tensor's rank chunks, each padded to ``ceil(n / ranks)``,
into one new flat tensor (``torch.cat``; skipped only for a single tensor that divides evenly) and hands it to
``dist.reduce_scatter_fn``; on gloo, the reduce-scatter allocates one more buffer the size of its input for the
call (fsdp2_step.py ``GLOO_REDUCE_SCATTER_INPUT_COPIES``, measured), NCCL none. ``partition_grads`` then copies
the rank's chunks into the gradient partition and both copies are dropped.

At that moment backward is over: no activation is left, and the gathered parameters are released except those
of a module whose input requires no gradient, whose post-backward hook never fires
(parameter_offload.py ``_post_backward_module_hook`` / ``partition_all_parameters``: "parameters of modules
whose input parameters do not require grad computation do not trigger post call and will therefore remain
unpartitioned" until the step): under full fine-tuning the token embedding, fed the input ids. Other methods
keep planner's backward figure of what stays gathered (an upper bound).

Measured on CPU (2 gloo ranks, tiny-llama, DeepSpeed's ZeRO tutorial config with its 1e7-element bucket, which
holds the whole model): the peak is this moment, with two whole-model 16-bit copies beside the bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.estimate.count.inventory import ParamCounts
from planner.specs import Method, TrainSpec

# the torch.cat of reduce_scatter_coalesced (any device); gloo's input-sized buffer on the CPU accelerator
CAT_COPIES = 1
GLOO_REDUCE_SCATTER_INPUT_COPIES = 1  # as fsdp2_step.py (ProcessGroupGloo.cpp's reduce-scatter), measured there


@dataclass(frozen=True)
class Zero3Epilogue:
    """The end-of-backward reduction of one rank: its transient copies and what stays gathered."""

    copies_bytes: int  # reduce_scatter_coalesced's flat copy (and gloo's) of the last bucket, 16-bit
    # at most this many bytes of parameters still gathered after backward (full fine-tuning: the token
    # embedding); None: as many as planner counts through backward
    gathered_cap_bytes: int | None


def last_bucket(numels_in_arrival_order: tuple[int, ...], bucket_elements: int) -> tuple[int, ...]:
    """The tensors the epilogue reduces: DeepSpeed's greedy fill (reduce when ``elements + n`` would exceed the
    bucket and it is not empty), what is left at the end of backward."""
    held: list[int] = []
    elements = 0
    for n in numels_in_arrival_order:
        if held and elements + n > bucket_elements:
            held, elements = [], 0
        held.append(n)
        elements += n
    return tuple(held)


def copy_elements(tensors: tuple[int, ...], num_ranks: int) -> int:
    """Elements of reduce_scatter_coalesced's flat tensor: each tensor padded to a multiple of the ranks; none
    for a single tensor that divides evenly (it reduces the tensor's own view)."""
    if not tensors or (len(tensors) == 1 and tensors[0] % num_ranks == 0):
        return 0
    return sum(-(-n // num_ranks) * num_ranks for n in tensors)


def embedding_elements(counts: ParamCounts, threshold: int) -> int:
    """The token embedding's elements when ZeRO-3 partitions it (over the persistence threshold), else 0."""
    return sum(g.num_params * g.num_modules for g in counts.modules
               if g.kind == "embedding" and g.component == "embedding" and not g.shared and g.num_params > threshold)


def largest_gathered_module(counts: ParamCounts, threshold: int) -> int:
    """The parameters of the largest module ZeRO-3 gathers: one with a tensor over the persistence threshold
    (partition_parameters.py ``ds_persist = ds_numel <= threshold``: a persistent tensor is never gathered). Under
    DeepSpeed's 1e5-element default a small model may have none (measured: a Qwen2 h96 LoRA run with the tutorial
    config gathers nothing at its loss backward)."""
    return max((g.num_params for g in counts.modules if not g.shared and max(_tensors(g)) > threshold), default=0)


def _tensors(g) -> tuple[int, ...]:
    if g.param_shapes:
        out = []
        for _, shape in g.param_shapes:
            size = 1
            for dim in shape:
                size *= dim
            out.append(size)
        return tuple(out) or (0,)
    if g.kind == "linear":
        return (g.in_features * g.out_features,)
    return (g.num_params,)


def zero3_epilogue(train: TrainSpec, counts: ParamCounts, flat_numels: tuple[int, ...], *, num_ranks: int,
                   bucket_elements: int, threshold: int, grad_bytes: int, device: str) -> Zero3Epilogue | None:
    """The epilogue of one rank (None outside ZeRO-3 or on one rank). ``flat_numels``: the trainable tensors in
    ``model.parameters()`` order (backward hands them over about in reverse)."""
    if train.zero_stage != 3 or num_ranks <= 1 or not flat_numels:
        return None
    tensors = last_bucket(tuple(reversed(flat_numels)), bucket_elements)
    copies = CAT_COPIES + (GLOO_REDUCE_SCATTER_INPUT_COPIES if device == "cpu" else 0)
    cap = embedding_elements(counts, threshold) * grad_bytes if train.method is Method.FULL else None
    return Zero3Epilogue(copies_bytes=copies * copy_elements(tensors, num_ranks) * grad_bytes,
                         gathered_cap_bytes=cap)
