"""The memoised estimator every configuration search shares (the GPU comparison and the recommender).

``EstimateCache`` estimates each (train, cluster) once per model, and once for every GPU type of the same memory
(``memory_key``); it prunes a layout or a GPU count with lower bounds that need no simulation: the per-rank model
states, and with ``activation_floor`` the largest activations a layout group has shown. ``LAYOUTS`` are the valid
ZeRO stage x offload pairs the searches try, ``GPUS_PER_NODE`` the node size they assume.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from planner.estimate.core import estimate
from planner.estimate.count.params import count_params, split_params
from planner.estimate.sharding import shard_states
from planner.estimate.states import unsharded_states
from planner.specs import Cluster, ModelSpec, Offload, Parallelism, TrainSpec

# Host RAM per node for offloaded states and pinned buffers (--host-ram): a plan whose offload exceeds the node's
# RAM cannot run, however little GPU memory it needs. None: not known; offload is not checked against it and the
# rows say so (it used to be 2 TiB, a DGX H100's, silently, whatever the GPU).
DEFAULT_HOST_MEMORY_BYTES_PER_NODE: int | None = None
# A node of the common 8-GPU server (DGX/HGX, 8-GPU PCIe servers); more GPUs means more nodes of 8.
GPUS_PER_NODE = 8

# Valid (ZeRO stage, offload) pairs, fastest first when memory allows (TrainSpec refuses the rest).
LAYOUTS: tuple[tuple[int, Offload], ...] = (
    (0, Offload.NONE),
    (1, Offload.NONE),
    (2, Offload.NONE),
    (3, Offload.NONE),
    (1, Offload.OPTIMIZER),
    (2, Offload.OPTIMIZER),
    (3, Offload.OPTIMIZER),
    (3, Offload.OPTIMIZER_PARAMS),
)


class EstimateCache:
    """Memoised estimates for one model; lower bounds from the model states alone."""

    def __init__(self, model: ModelSpec, margin: float, gpus_per_node: int = GPUS_PER_NODE,
                 host_memory_bytes_per_node: int | None = DEFAULT_HOST_MEMORY_BYTES_PER_NODE,
                 allow_longer: bool = False, activation_floor: bool = False) -> None:
        self.model = model
        # With activation_floor, the largest activations seen at any phase's peak of a layout group (see
        # _activation_key) bound every peak of that group from below, whatever the GPU count: data parallelism
        # does not shard activations. A group whose floor exceeds the usable memory is not estimated again.
        self.activation_floor = activation_floor
        self._floors: dict[TrainSpec, int] = {}
        self.allow_longer = allow_longer
        self.host_mem = host_memory_bytes_per_node
        self.margin = margin
        self.gpus_per_node = gpus_per_node
        self.counts = count_params(model)
        self.num_calls = 0
        self._cache: dict[tuple, Any] = {}
        self._memory: dict[tuple, Any] = {}  # memory_key -> an estimate on another GPU of the same memory
        self._splits: dict[tuple, Any] = {}
        self._lower: dict[tuple, int] = {}
        self._groups: dict[TrainSpec, TrainSpec] = {}

    def split(self, train: TrainSpec):
        key = (train.method, train.lora, train.quant)
        if key not in self._splits:
            self._splits[key] = split_params(self.counts, train)
        return self._splits[key]

    def states_lower_bound(self, train: TrainSpec, num_gpus: int) -> int:
        """Per-GPU model states after ZeRO/offload: part of every peak, so a peak is never below this."""
        key = (train, num_gpus)
        if key not in self._lower and train.uses_fsdp2:
            # rank 0's sharded states (estimate/fsdp2.py), none on the GPU under CPUOffloadPolicy (fsdp2_step.py)
            from planner.estimate.fsdp2 import fsdp2_states

            shard = train.parallelism.fsdp_config.shard_size(num_gpus)  # HSDP: sharded over a shard group only
            st = fsdp2_states(self.counts, train, self.model.num_layers, shard)
            offloaded = train.parallelism.fsdp_config.cpu_offload
            self._lower[key] = 0 if offloaded else st.params_bytes + st.grads_bytes + st.optimizer_states_bytes
        if key not in self._lower:
            split = self.split(train)
            states = unsharded_states(self.counts, split, train, num_layers=self.model.num_layers)
            sharded = shard_states(states, train, num_gpus, self.counts.largest_module)
            self._lower[key] = sharded.params_bytes + sharded.grads_bytes + sharded.optimizer_states_bytes
        return self._lower[key]

    def _activation_group(self, train: TrainSpec) -> TrainSpec:
        if train not in self._groups:  # fits() asks for every GPU count the searches try
            self._groups[train] = _activation_key(train)
        return self._groups[train]

    def estimate(self, train: TrainSpec, cluster: Cluster):
        if cluster.host_memory_bytes_per_node is None and self.host_mem is not None:
            cluster = dataclasses.replace(cluster, host_memory_bytes_per_node=self.host_mem)
        key = (train, cluster)
        if key not in self._cache:
            same = self._memory.get(memory_key(train, cluster))
            if same is not None:
                # The same run on another GPU type with the same memory: only the capacity it is measured against
                # differs (memory_key says why), so no estimate is computed again.
                self._cache[key] = dataclasses.replace(same, cluster=cluster, capacity_bytes=cluster.gpu.capacity_bytes)
                return self._cache[key]
            self.num_calls += 1
            # allow_longer only when asked, so this also runs against an estimate() without the keyword.
            kwargs = {"allow_longer": True} if self.allow_longer else {}
            self._cache[key] = estimate(self.model, train, cluster, margin=self.margin, **kwargs)
            self._memory[memory_key(train, cluster)] = self._cache[key]
        return self._cache[key]

    def fits(self, train: TrainSpec, cluster: Cluster) -> bool:
        usable = int(cluster.gpu.capacity_bytes * (1.0 - self.margin))
        if self.states_lower_bound(train, cluster.num_gpus) > usable:
            return False
        group = self._activation_group(train) if self.activation_floor else None
        if group is not None and self._floors.get(group, 0) > usable:
            return False
        est = self.estimate(train, cluster)
        if group is not None:
            seen = max((b.activations_bytes for b in est.phases.values()), default=est.per_gpu.activations_bytes)
            self._floors[group] = max(self._floors.get(group, 0), seen, est.per_gpu.activations_bytes)
        return est.fits and est.reserved_bytes <= usable  # est.fits checks the host RAM where it is known


def memory_key(train: TrainSpec, cluster: Cluster) -> tuple:
    """What an estimate's memory reads from the cluster: the rank count, the ranks per node and the host RAM per
    node (sharding, host RAM, NCCL), and whether the GPU has bf16 (QLoRA in bf16 is refused without it). The GPU
    type is otherwise only the capacity the figures are measured against, so the comparison estimates each run
    once for all the GPU types of the catalog (tests/test_compare_gpus.py checks the estimates are the same on
    every GPU type; a memory rule that comes to depend on the GPU belongs here)."""
    return (train, cluster.num_gpus, cluster.num_nodes, cluster.host_memory_bytes_per_node,
            cluster.gpu.supports_bf16)


def _activation_key(train: TrainSpec) -> TrainSpec:
    """Layouts whose activations are the same tensors: offload never changes them; ZeRO 1 and 2 share them, while
    ZeRO-0 (no DeepSpeed: fp32 adapters, QLoRA's fp32 activations) and ZeRO-3 (DeepSpeed's linear wrapper) differ."""
    stage = {0: 0, 1: 1, 2: 1, 3: 3}[train.zero_stage]
    return dataclasses.replace(train, parallelism=Parallelism.from_zero(stage))
