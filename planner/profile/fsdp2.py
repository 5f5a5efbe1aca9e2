"""FSDP2 run the way torchtune and torchtitan wrap a model: real ``fully_shard`` per decoder layer, then the root.

torchtune 0.6.1 ``training/_distributed.py`` ``shard_model``: ``fully_shard(m, reshard_after_forward=...,
[offload_policy=CPUOffloadPolicy()])`` on every decoder layer (bottom-up), then the same call on the whole model,
whose root group keeps what no layer owns (embeddings, final norm, output head). torchtitan adds a
``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` over fp32 parameters; planner does that for
``--precision bf16-mixed`` (the sharded fp32 parameters are the master copy the optimizer steps), and stores the
parameters in their own dtype with no policy for ``bf16`` and ``fp32`` (specs/fsdp.py). Checkpointing stays
transformers' own per-layer non-reentrant checkpoint (workload.py), applied before sharding as torchtune applies
its ``checkpoint_wrapper``; LoRA is peft's, the frozen base sharded without gradients.

The optimizer is torch's AdamW over the sharded DTensor parameters; ``step`` then ``zero_grad(set_to_none)``.
"""

from __future__ import annotations

from typing import Any

import torch

from planner.profile.workload import Built, checkpointed_layers
from planner.specs import Precision, TrainSpec

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def mixed_precision_policy(train: TrainSpec):
    """``MixedPrecisionPolicy`` for ``bf16-mixed`` (param bf16, reduce fp32 or the gradients' dtype); the
    default policy (no casts) otherwise (torch/distributed/fsdp/_fully_shard/_fsdp_api.py)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if train.precision is not Precision.BF16_MIXED:
        return MixedPrecisionPolicy()
    reduce = train.parallelism.fsdp_config.reduce_dtype
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=DTYPES[reduce] if reduce else None)


def shard(model: torch.nn.Module, train: TrainSpec, device: str, num_ranks: int) -> list[torch.nn.Module]:
    """fully_shard each decoder layer, then the root (torchtune's ``shard_model``); returns the layers."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    cfg = train.parallelism.fsdp_config
    shard_size = cfg.shard_size(num_ranks)
    # HSDP: torchtitan's ParallelDims builds the ("dp_replicate", "dp_shard") mesh and passes it to fully_shard,
    # which shards over the last dim and all-reduces over the first (_fsdp_init.py: a 2-D mesh is HSDPMeshInfo)
    mesh = (init_device_mesh(device, (num_ranks,)) if cfg.replicate_degree == 1 else
            init_device_mesh(device, (cfg.replicate_degree, shard_size), mesh_dim_names=("dp_replicate", "dp_shard")))
    kwargs: dict[str, Any] = {
        "mesh": mesh,
        "reshard_after_forward": cfg.reshard_after_forward,
        "mp_policy": mixed_precision_policy(train),
        # CPUOffloadPolicy's pin_memory needs an accelerator; on CPU the parameters already live on the host.
        "offload_policy": CPUOffloadPolicy(pin_memory=device == "cuda") if cfg.cpu_offload else OffloadPolicy(),
    }
    layers = checkpointed_layers(model)
    if not layers:
        raise RuntimeError("FSDP2 wraps each decoder layer, and this model has none transformers marks as one.")
    for layer in reversed(layers):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return layers


class FSDP2Engine:
    """forward, backward, step over a ``fully_shard`` model (the profiler's Engine interface, engine.py)."""

    name = "fsdp2"

    def __init__(self, built: Built, train: TrainSpec, device: str, num_ranks: int):
        from planner.profile.optim import make_torch_optimizer

        self.built = built
        self.train = train
        self.loss_scale = 1.0
        self.config: dict[str, Any] | None = None
        self.layers = shard(built.model, train, device, num_ranks)
        self.module: torch.nn.Module = built.model
        params = [p for p in built.model.parameters() if p.requires_grad]
        self.optimizer: Any = make_torch_optimizer(params, train.optimizer, device)

    def forward(self, ids: torch.Tensor, micro_batch: int):
        return self.loss_run.forward(self.module, ids)

    def backward(self, loss: torch.Tensor, micro_batch: int) -> None:
        last = micro_batch == self.train.grad_accum - 1
        # FSDP2's gradient accumulation without communication (FSDPModule.set_requires_gradient_sync): the
        # unsharded gradients stay until the last micro-batch reduce-scatters them.
        self.module.set_requires_gradient_sync(last)
        (loss / self.train.grad_accum).backward()

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def identity_optimizer(self) -> Any:
        return self.optimizer
