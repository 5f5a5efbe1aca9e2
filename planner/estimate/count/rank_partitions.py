"""DeepSpeed ZeRO 1/2: the rank partitions of the flat parameter buffer, and the gradient buffer each rank makes.

Source: deepspeed/runtime/zero/stage_1_and_2.py (v0.19), ``DeepSpeedZeroOptimizer``:

- ``__init__`` flattens the trainable tensors of a param group in ``model.parameters()`` order into one buffer
  (no per-tensor padding unless ``parameter_alignment``), pads it to a multiple of
  ``nccl_start_alignment_factor * world_size`` = 2N elements and gives rank r the elements
  [r * part, (r + 1) * part). ``get_partition_info`` puts a tensor in rank r's ``params_in_partition`` when it
  starts inside the partition or straddles its start: a tensor across a boundary belongs to both ranks.
- ``copy_grads_in_partition`` allocates ``grads_in_partition`` once, the first time a reduced bucket holds a
  gradient of the rank's partition, with ``sum(p.numel() for p in params_in_partition)`` elements -- the whole
  tensors, not the partition's share -- and moves the rank's gradients into it. It lives until the optimizer
  step has flattened it (``free_grad_in_param_list``), so a rank whose partition starts or ends inside a large
  tensor (the embedding, an MLP weight) holds up to that tensor more than P/N.
- ``reduce_independent_p_g_buckets_and_remove_grads`` reduces gradients in buckets of ``reduce_bucket_size``
  elements: one no larger than the bucket is copied into it and its own storage dropped; a larger one is reduced
  where it is. ZeRO-1 does this for every parameter in order at the end of backward (``reduce_gradients``), so
  when rank r's buffer is allocated the small gradients before its first tensor are already gone.

planner models one param group holding every trainable tensor, as `planner profile` runs it (the HF Trainer
splits decay and no-decay parameters into two groups, each partitioned on its own).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from itertools import accumulate

# stage_1_and_2.py: ``self.nccl_start_alignment_factor = 2  # 4-byte alignment/sizeof(fp16) = 2``; the flat
# buffer is padded to a multiple of this times the data-parallel world size.
NCCL_START_ALIGNMENT_FACTOR = 2


@dataclass(frozen=True)
class RankPartition:
    """One rank's share of DeepSpeed's flat ZeRO 1/2 buffer, in elements."""

    rank: int
    num_partition: int  # partition_size: the rank's share of the (padded) flat buffer, equal on every rank
    num_buffer: int  # grads_in_partition: every tensor overlapping the partition, whole
    num_largest_piece: int  # the largest part of one tensor inside the partition (the fp64 norm copy)
    # ZeRO-1: gradient elements still in their own storage when grads_in_partition is allocated at the end
    # of backward (every gradient minus the small ones already moved into the reduce bucket)
    num_full_grads_at_buffer: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """What the estimate reads of a partition (ranks with the same shape have the same peak)."""
        return self.num_buffer, self.num_largest_piece, self.num_full_grads_at_buffer


def even_partition(num_trainable: int, num_ranks: int, largest_tensor: int) -> RankPartition:
    """The partition every rank would hold if tensor boundaries fell on partition boundaries."""
    part = _partition_size(num_trainable, num_ranks)
    return RankPartition(0, part, part, min(largest_tensor, part), num_trainable)


def _partition_size(total: int, num_ranks: int) -> int:
    alignment = NCCL_START_ALIGNMENT_FACTOR * num_ranks
    return -(-total // alignment) * alignment // num_ranks


class RankPartitions(Sequence):
    """Every rank's partition, stored as runs of consecutive ranks with the same shape: at most two runs per
    tensor (a partition inside one tensor, one across its end) and one for the padding, however many ranks."""

    def __init__(self, runs: tuple[RankPartition, ...], num_ranks: int) -> None:
        self._runs = runs  # each the first rank of its run; the run lasts until the next one's rank
        self._firsts = [p.rank for p in runs]
        self._num_ranks = num_ranks

    def __len__(self) -> int:
        return self._num_ranks

    def __getitem__(self, rank):  # type: ignore[override]
        if isinstance(rank, slice):
            return tuple(self[r] for r in range(*rank.indices(self._num_ranks)))
        if rank < 0:
            rank += self._num_ranks
        if not 0 <= rank < self._num_ranks:
            raise IndexError(f"rank {rank} of {self._num_ranks}")
        run = self._runs[bisect_right(self._firsts, rank) - 1]
        return run if run.rank == rank else replace(run, rank=rank)

    @property
    def distinct(self) -> tuple[RankPartition, ...]:
        """One partition per distinct shape, the lowest rank's, lowest rank first."""
        seen: dict[tuple[int, int, int], RankPartition] = {}
        for p in self._runs:
            seen.setdefault(p.shape, p)
        return tuple(seen.values())

    @cached_property
    def candidates(self) -> tuple[RankPartition, ...]:
        """The partitions that can hold the highest peak, lowest rank first: every part of a rank's step grows
        with its buffer, its largest piece and the gradients alive at its buffer (temporaries.zero12_step), so
        a partition no larger in all three than a lower rank's never peaks strictly higher (a tie goes to the
        lower rank)."""
        kept: list[RankPartition] = []
        for p in self._runs:
            if not any(q.num_buffer >= p.num_buffer and q.num_largest_piece >= p.num_largest_piece
                       and q.num_full_grads_at_buffer >= p.num_full_grads_at_buffer for q in kept):
                kept.append(p)
        return tuple(kept)

    @property
    def ranks_differ(self) -> bool:
        first = self._runs[0].shape
        return any(p.shape != first for p in self._runs)


def rank_partitions(numels: Sequence[int], num_ranks: int, bucket_elements: int) -> RankPartitions:
    """Every rank's partition of ``numels`` (trainable tensors in DeepSpeed's flat order), computed per tensor
    boundary, never per rank: O(tensors x log tensors) for any number of ranks."""
    numels = [n for n in numels if n > 0]  # DeepSpeed skips empty tensors in its reduction
    n = max(num_ranks, 1)
    ends = list(accumulate(numels))
    total = ends[-1] if ends else 0
    part = _partition_size(total, n)
    at_flush = _alive_at_flush(numels, total, bucket_elements)

    # one pass over the ranks that start a new shape: a rank wholly inside one tensor has that tensor's shape, so
    # the walk jumps past them; one RankPartition per run (the shape as a tuple until it changes)
    num_tensors = len(numels)
    runs: list[RankPartition] = []
    last_shape = None
    r = 0
    while r < n:
        lo = r * part
        hi = lo + part
        first = bisect_right(ends, lo)  # the first tensor ending after lo
        if first == num_tensors:
            here = (0, 0, 0)  # padding only
        else:
            stop = min(bisect_right(ends, hi - 1, first) + 1, num_tensors)  # one past the last starting before hi
            end_first = ends[first]
            start_first = end_first - numels[first]
            largest = (end_first if end_first < hi else hi) - (start_first if start_first > lo else lo)
            if stop - first > 1:
                last = stop - 1
                end_last = ends[last]
                piece = (end_last if end_last < hi else hi) - (end_last - numels[last])
                if piece > largest:
                    largest = piece
                if stop - first > 2:
                    largest = max(largest, max(numels[first + 1 : last]))
            here = (ends[stop - 1] - start_first, largest, at_flush[first])
        if here != last_shape:
            runs.append(RankPartition(r, part, *here))
            last_shape = here
        if first == num_tensors or part == 0:
            break  # this and every later rank hold padding only: one run
        end = ends[first]
        # ranks wholly inside this tensor share its shape: skip to the first rank past them
        r = max(r + 1, end // part) if hi <= end else r + 1
    return RankPartitions(tuple(runs), n)


def _alive_at_flush(numels: list[int], total: int, bucket_elements: int) -> list[int]:
    """Per tensor: the gradient elements still in their own storage when the reduce bucket holding it is reduced.

    The buckets are the same on every rank: flush before a tensor that would overflow the bucket; a tensor no
    larger than the bucket is copied into it (its own storage dropped), a larger one is reduced where it is."""
    out = [0] * len(numels)
    alive, filled, open_from = total, 0, 0
    for i, size in enumerate(numels):
        if filled and filled + size > bucket_elements:
            out[open_from:i] = [alive] * (i - open_from)
            filled, open_from = 0, i
        if size <= bucket_elements:
            alive -= size
        filled += size
    out[open_from:] = [alive] * (len(numels) - open_from)
    return out
