"""The autocast recipe (``--precision bf16-autocast`` / ``fp16-autocast``) as the HF Trainer runs it.

The Trainer (transformers 5.24 trainer.py) hands the model to ``Accelerator.prepare``, whose ``prepare_model``
(accelerate 1.16 accelerator.py) replaces ``model.forward`` with ``convert_outputs_to_fp32(autocast(forward))``
(torch.autocast with the Accelerator's ``mixed_precision``) and, on several processes, wraps the model in torch's
DistributedDataParallel. The profiler builds the same Accelerator and calls the same ``prepare_model`` on the
fp32 model; the Trainer's ``compute_loss`` passes the labels to the model, so the loss is computed inside the
autocast region (loss_run.py). planner/estimate/step/autocast.py models what this allocates.
"""

from __future__ import annotations

import torch

from planner.errors import PlannerError
from planner.specs import TrainSpec


def prepare(model: torch.nn.Module, train: TrainSpec, device: str) -> torch.nn.Module:
    """``Accelerator(mixed_precision=...).prepare_model(model)``: the autocast-wrapped forward (and DDP on
    several processes), the model left where it is."""
    from accelerate import Accelerator

    mixed = {"bf16": "bf16", "fp16": "fp16"}[train.precision.autocast_dtype]
    if mixed == "fp16" and device != "cuda":
        raise PlannerError("--precision fp16-autocast trains with torch's GradScaler on a GPU (the HF Trainer refuses "
                           "fp16 on CPU); profile bf16-autocast on CPU.")
    accelerator = Accelerator(mixed_precision=mixed, cpu=device == "cpu")
    return accelerator.prepare_model(model, device_placement=False)
