"""Plan: one complete training configuration (model, train spec, cluster, global batch), what emit/ writes."""

from __future__ import annotations

from dataclasses import dataclass

from planner.specs.hardware import Cluster
from planner.specs.model import ModelSpec
from planner.specs.train import TrainSpec, train_spec_to_dict


@dataclass(frozen=True)
class Plan:
    """One complete training configuration: what to emit and run."""

    model: ModelSpec
    train: TrainSpec  # micro_batch, grad_accum, zero_stage, offload, checkpointing, attn_impl, method, ...
    cluster: Cluster
    global_batch_size: int  # sequences per optimizer step = micro_batch x grad_accum x num_gpus

    @property
    def num_data_parallel(self) -> int:
        return self.cluster.num_gpus

    @property
    def micro_batch(self) -> int:
        return self.train.micro_batch

    @property
    def grad_accum(self) -> int:
        return self.train.grad_accum

    def label(self) -> str:
        t = self.train
        return (
            f"{t.method.value}, {t.parallelism.label}, micro-batch {t.micro_batch} x accumulation "
            f"{t.grad_accum} x {self.cluster.num_gpus} GPUs, checkpointing {_ckpt(t)}, "
            f"{t.attn_impl.value}"
        )

    def to_dict(self) -> dict:
        return {
            "model": self.model.name,
            "gpu": self.cluster.gpu.name,
            "num_gpus": self.cluster.num_gpus,
            "num_nodes": self.cluster.num_nodes,
            "global_batch_size": self.global_batch_size,
            "train": train_spec_to_dict(self.train),
        }


def _ckpt(t) -> str:
    """Checkpointing in words: on (every layer), torchtitan's selective policy, or off."""
    if t.selective_ac:
        return f"selective ({'op policy' if t.selective_ac == 'op' else '1 layer in ' + t.selective_ac})"
    return "on" if t.grad_checkpointing else "off"
