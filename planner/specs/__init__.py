"""Frozen specifications: what is trained (ModelSpec), how (TrainSpec), on what (GpuSpec, Cluster), as what run
(Plan). Every spec validates itself at construction and raises PlannerError with the offending values. Memory is
int bytes; counts start with ``num_``.

Module map: ``enums`` (method, precision, optimizer, adapter dtype, offload, attention, 4-bit type; the margin's check),
``parallelism`` (Engine, Parallelism, DeepSpeed's ZeroConfig), ``fsdp`` (FSDP2's FsdpConfig), ``loss`` (Loss, LossSpec), ``task`` (Task, Reference, TaskSpec: sft, DPO or GRPO), ``grpo`` (Generation, GrpoSpec), ``ppo`` (PpoSpec), ``selective_ac`` (torchtitan's selective checkpointing policies), ``model`` (ModelSpec), ``train`` (LoraSpec, QuantSpec, TrainSpec and the
JSON ``train`` block), ``hardware`` (GpuSpec, Cluster), ``plan`` (Plan). Import them from here.
"""

from __future__ import annotations

from planner.specs.enums import (
    AttnImpl,
    Method,
    Offload,
    Optimizer,
    PeftDtype,
    Precision,
    QuantType,
    validate_margin,
)
from planner.specs.fsdp import FsdpConfig
from planner.specs.grpo import Generation, GrpoSpec
from planner.specs.hardware import Cluster, GpuSpec
from planner.specs.loss import DEFAULT_LOSS_CHUNKS, LOSS_CHUNKS_HELP, LOSS_HELP, Loss, LossSpec
from planner.specs.model import ModelSpec
from planner.specs.parallelism import Engine, Parallelism, ZeroConfig
from planner.specs.plan import Plan
from planner.specs.ppo import PpoSpec
from planner.specs.selective_ac import SELECTIVE_AC_HELP
from planner.specs.task import REFERENCE_HELP, TASK_HELP, Reference, Task, TaskSpec
from planner.specs.train import LoraSpec, QuantSpec, TrainSpec, train_spec_from_dict, train_spec_to_dict

__all__ = [
    "AttnImpl", "Cluster", "DEFAULT_LOSS_CHUNKS", "Engine", "FsdpConfig", "LOSS_CHUNKS_HELP", "LOSS_HELP", "Generation", "GpuSpec", "GrpoSpec", "LoraSpec", "PpoSpec",
    "Loss", "LossSpec", "Method", "ModelSpec", "Offload", "Optimizer", "Parallelism", "PeftDtype", "Plan", "Precision",
    "QuantSpec", "QuantType", "REFERENCE_HELP", "Reference", "SELECTIVE_AC_HELP", "TASK_HELP", "Task", "TaskSpec", "TrainSpec", "train_spec_from_dict", "train_spec_to_dict", "validate_margin", "ZeroConfig",
]
