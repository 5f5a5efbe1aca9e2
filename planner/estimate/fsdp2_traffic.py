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
- HSDP (a 2-D ``(R, S)`` mesh, ``_fsdp_init.py`` ``HSDPMeshInfo``): the gathers and reduce-scatters run over
  the S ranks of a shard group; ``foreach_reduce`` then all-reduces the reduce-scatter output (one shard, in
  ``reduce_dtype``) over the R replicas (``dist.all_reduce(reduce_output, group=all_reduce_group)``) on
  ``all_reduce_stream``. Ranks are laid out row-major (rank = r x S + s): a shard group of S <= GPUs per node
  stays inside a node, and the S replica rings (one per shard index) cross every node boundary, sharing the
  node's inter-node links.
- ``CPUOffloadPolicy``: every gather first copies the rank's sharded parameters host to device
  (``FSDPParam.unshard``/``all_gather_inputs``), and every reduce-scatter's gradient shard goes back to the host
  (``foreach_reduce``, ``non_blocking`` to pinned memory); the optimizer steps on the host.

Never imports torch.
"""

from __future__ import annotations

from planner.estimate.count.params import ParamSplit
from planner.specs import Cluster, Method, PeftDtype, Precision, TrainSpec
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
    """Bytes one rank sends per optimizer step (ring: (S-1)/S of each buffer over the shard group of S ranks):
    per micro-batch one or two all-gathers of every parameter and one reduce-scatter of the trainable gradients,
    and under HSDP the replicas' all-reduce of the shard (``replica_bytes``)."""
    shard = train.parallelism.fsdp_config.shard_size(num_ranks)
    ring = (shard - 1) / shard
    gather = _param_bytes(train, split, split.num_params, split.num_adapter)
    return (accum * ring * (gathers_per_microbatch(train) * gather + _reduce_bytes(train, split))
            + replica_bytes(train, split, num_ranks, accum))


def replica_bytes(train: TrainSpec, split: ParamSplit, num_ranks: int, accum: float) -> float:
    """HSDP's all-reduce of each micro-batch's gradient shard (1/S of the gradients in the reduce dtype) over the
    R replicas: a ring all-reduce sends 2 (R-1)/R of it (0 without HSDP)."""
    cfg = train.parallelism.fsdp_config
    r = cfg.replicate_degree
    return accum * 2 * (r - 1) / r * _reduce_bytes(train, split) / cfg.shard_size(num_ranks)


def reduction_bytes(train: TrainSpec, split: ParamSplit, num_ranks: int, accum: float) -> float:
    """The reduce-scatter (and HSDP all-reduce) part of ``communication_bytes``."""
    shard = train.parallelism.fsdp_config.shard_size(num_ranks)
    return accum * (shard - 1) / shard * _reduce_bytes(train, split) + replica_bytes(train, split, num_ranks, accum)


def hsdp_seconds(train: TrainSpec, split: ParamSplit, cluster: Cluster, accum: float, total_bytes: float,
                 intra_bytes_per_s: float, inter_bytes_per_s: float) -> float:
    """Seconds of ``total_bytes`` of HSDP traffic (``communication_bytes`` or ``reduction_bytes``), each part over
    its own group's link (module docstring): the shard group's inside a node when it fits in one (else bounded by
    the inter-node link, as traffic.collective_bytes_per_s), the replicas' across nodes, where the S concurrent
    replica rings share a node's inter-node bandwidth (each rank its own NIC's share with S = GPUs per node).
    ``*_bytes_per_s`` are bus bandwidths with traffic.py's COLLECTIVE_EFFICIENCY applied."""
    n = cluster.num_gpus
    shard = train.parallelism.fsdp_config.shard_size(n)
    replica_b = replica_bytes(train, split, n, accum)
    shard_link = intra_bytes_per_s if shard <= cluster.num_gpus_per_node else min(intra_bytes_per_s,
                                                                                 inter_bytes_per_s)
    replica_link = (intra_bytes_per_s if cluster.num_nodes == 1 else
                    min(intra_bytes_per_s, inter_bytes_per_s / min(shard, cluster.num_gpus_per_node)))
    return (total_bytes - replica_b) / shard_link + replica_b / replica_link


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
    ranks = train.parallelism.fsdp_config.shard_size(num_ranks)
    shard = nbytes(split.num_params, storage) / ranks
    return accum * (gathers_per_microbatch(train) * shard + _reduce_bytes(train, split) / ranks)
