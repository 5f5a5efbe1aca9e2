"""FSDP2's collectives per optimizer step and the part compute does not hide (the time model's FSDP2 branch).

torch 2.13, torch/distributed/fsdp/_fully_shard/:

- ``_fsdp_param_group.py`` ``FSDPParamGroup.unshard`` -> ``_fsdp_collectives.py`` ``foreach_all_gather``: each
  group (a decoder layer, the root) all-gathers its parameters in ``param_dtype`` (the policy's; the storage
  dtype without one) before its forward, and, with ``reshard_after_forward`` True, again before its backward
  (``pre_backward``); with it False the forward's gather is kept to backward. Frozen parameters are gathered
  too (LoRA's base). The root is not resharded after forward (``_fsdp_state.py`` ``_lazy_init`` sets the root's
  ``post_forward_mesh_info`` to None), so its backward gathers nothing.
- ``post_backward`` -> ``foreach_reduce``: every backward reduce-scatters each group's trainable gradients in
  ``reduce_dtype`` (``_fsdp_param.py`` ``init_dtype_attrs``: the policy's, else the unsharded gradients' own).
  planner's runs (torchtune's recipes, accelerate's FSDP2 without ``no_sync``) reduce every micro-batch.
- Overlap: all-gathers run on ``all_gather_stream`` with implicit forward prefetch (the next layer's
  copy-in while this one computes) and explicit backward prefetch; reduce-scatters on
  ``reduce_scatter_stream`` (``FSDPCommContext``). Each micro-batch exposes what exceeds its compute, and at
  least one layer's share: the first gather and the last reduce-scatter have nothing to hide behind (the same
  rule as DeepSpeed ZeRO-3 with ``overlap_comm``, traffic.py).
- ``CPUOffloadPolicy``: every gather first copies the rank's sharded parameters host to device
  (``FSDPParam.unshard``/``all_gather_inputs``), and every reduce-scatter's gradient shard goes back to the host
  (``foreach_reduce``, ``non_blocking`` to pinned memory); the optimizer steps on the host.

Never imports torch.
"""

from __future__ import annotations

from planner.estimate.count.params import ParamSplit
from planner.specs import Method, PeftDtype, Precision, TrainSpec
from planner.units import nbytes


def _param_bytes(train: TrainSpec, split: ParamSplit, params: float, adapters: float) -> float:
    """Bytes of ``params`` parameters (``adapters`` of them LoRA adapters) as FSDP2 gathers them: in the
    policy's ``param_dtype`` (bf16 under bf16-mixed, for adapters too), else in their storage dtype."""
    compute = train.precision.compute_dtype
    fp32_adapters = (train.method is not Method.FULL and train.lora_dtype is PeftDtype.FP32
                     and train.precision is not Precision.BF16_MIXED)
    return nbytes(params - adapters, compute) + nbytes(adapters, "fp32" if fp32_adapters else compute)


def _reduce_bytes(train: TrainSpec, split: ParamSplit) -> float:
    reduce = train.parallelism.fsdp_config.reduce_dtype
    if reduce is not None and train.precision is Precision.BF16_MIXED:
        return nbytes(split.num_trainable, reduce)
    return _param_bytes(train, split, split.num_trainable, split.num_adapter)


def gathers_per_microbatch(train: TrainSpec) -> int:
    return 2 if train.parallelism.fsdp_config.reshard_after_forward else 1


def communication_bytes(train: TrainSpec, split: ParamSplit, num_ranks: int, accum: float) -> float:
    """Bytes one rank sends per optimizer step (ring: (N-1)/N of each buffer): per micro-batch one or two
    all-gathers of every parameter and one reduce-scatter of the trainable gradients."""
    if num_ranks == 1:
        return 0.0
    ring = (num_ranks - 1) / num_ranks
    gather = _param_bytes(train, split, split.num_params, split.num_adapter)
    return accum * ring * (gathers_per_microbatch(train) * gather + _reduce_bytes(train, split))


def reduction_bytes(train: TrainSpec, split: ParamSplit, num_ranks: int, accum: float) -> float:
    """The reduce-scatter part of ``communication_bytes``."""
    if num_ranks == 1:
        return 0.0
    return accum * (num_ranks - 1) / num_ranks * _reduce_bytes(train, split)


def exposed_communication_s(comm_s: float, accum: float, gpu_s: float, num_layers: int) -> float:
    """Per micro-batch, what exceeds its compute and at least one layer's share (module docstring)."""
    comm_mb, gpu_mb = comm_s / accum, gpu_s / accum
    return accum * max(comm_mb / max(num_layers, 1), comm_mb - gpu_mb)


def host_transfer_bytes(train: TrainSpec, split: ParamSplit, num_ranks: int, accum: float) -> float:
    """CPUOffloadPolicy's copies per step: the sharded parameters in their storage dtype to the device at every
    gather, the gradient shards back at every reduce-scatter."""
    if not train.parallelism.fsdp_config.cpu_offload:
        return 0.0
    storage = "fp32" if train.precision is Precision.BF16_MIXED else train.precision.compute_dtype
    shard = nbytes(split.num_params, storage) / num_ranks
    return accum * (gathers_per_microbatch(train) * shard + _reduce_bytes(train, split) / num_ranks)
