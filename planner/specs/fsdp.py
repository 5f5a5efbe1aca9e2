"""FSDP2's settings (torch.distributed.fsdp.fully_shard): what changes what a rank allocates, validated here.

torch 2.13's ``fully_shard`` (torch/distributed/fsdp/_fully_shard/_fully_shard.py) takes ``reshard_after_forward``,
a ``MixedPrecisionPolicy`` (_fsdp_api.py: ``param_dtype``, ``reduce_dtype``, ``output_dtype``, all default None)
and an ``offload_policy`` (``CPUOffloadPolicy``); a 2-D device mesh (replicate x shard) makes it HSDP. planner
applies it as torchtune and torchtitan do: one ``fully_shard`` per decoder layer, then one on the root model
(which keeps the embeddings, the final norm and the output head).

The policy's ``param_dtype`` follows the training precision: ``bf16-mixed`` keeps fp32 sharded parameters (the
master copy the optimizer steps) and all-gathers bf16 compute copies (``param_dtype`` bf16), torchtitan's
default; ``bf16`` and ``fp32`` store the parameters in that dtype and set no ``param_dtype`` (torchtune's bf16
recipe). ``reduce_dtype`` is the dtype gradients are reduce-scattered in: ``fp32`` (torchtitan's
``mixed_precision_reduce`` default) or ``None``, the gradients' own dtype (MixedPrecisionPolicy's default).
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.errors import PlannerError

REDUCE_DTYPES = (None, "fp32")


@dataclass(frozen=True)
class FsdpConfig:
    """``fully_shard``'s knobs. ``reshard_after_forward`` True frees each layer's all-gathered parameters after
    its forward (re-gathered in backward, ZeRO-3-like); False keeps them until backward (ZeRO-2-like).
    ``cpu_offload`` is ``CPUOffloadPolicy()``: sharded parameters, gradients and optimizer states on the host.
    ``replicate_degree`` R > 1 is HSDP: a 2-D ``(R, N / R)`` device mesh (replicate x shard), the states sharded
    over the N / R ranks of a shard group and each gradient shard all-reduced over the R replicas
    (torchtitan's ``data_parallel_replicate_degree``, accelerate's ``dp_replicate_size``)."""

    reshard_after_forward: bool = True
    reduce_dtype: str | None = "fp32"
    cpu_offload: bool = False
    replicate_degree: int = 1

    def __post_init__(self) -> None:
        for name in ("reshard_after_forward", "cpu_offload"):
            if not isinstance(getattr(self, name), bool):
                raise PlannerError(f"FSDP2's {name} must be true or false, got {getattr(self, name)!r}.")
        if self.reduce_dtype not in REDUCE_DTYPES:
            raise PlannerError(f"FSDP2's reduce dtype must be fp32 or none (the gradients' own dtype), got "
                               f"{self.reduce_dtype!r}.")
        if isinstance(self.replicate_degree, bool) or not isinstance(self.replicate_degree, int) or \
                self.replicate_degree < 1:
            raise PlannerError(f"FSDP2's replicate degree must be a whole number from 1, got "
                               f"{self.replicate_degree!r}.")

    def shard_size(self, num_ranks: int) -> int:
        """The ranks one shard group spans (the mesh's shard dim): ``num_ranks / replicate_degree``, which must
        divide evenly (``init_device_mesh`` refuses a mesh whose product is not the world size)."""
        if num_ranks % self.replicate_degree:
            raise PlannerError(f"HSDP's replicate degree {self.replicate_degree} must divide the {num_ranks} GPUs "
                               f"evenly (a replicate x shard mesh of {self.replicate_degree} x N / "
                               f"{self.replicate_degree}).")
        return num_ranks // self.replicate_degree

    @property
    def is_default(self) -> bool:
        return self == FsdpConfig()

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_dict(cls, d: dict) -> FsdpConfig:
        unknown = set(d) - set(_FIELDS)
        if unknown:
            raise PlannerError(f"unknown FSDP2 setting(s) {', '.join(sorted(unknown))}.")
        return cls(**d)


_FIELDS = ("reshard_after_forward", "reduce_dtype", "cpu_offload", "replicate_degree")
