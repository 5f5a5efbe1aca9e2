"""One training step behind one interface: a single process, DistributedDataParallel, or DeepSpeed ZeRO.

``make_engine`` is called inside the ``setup::wrap`` window, so that buffers the data-parallel engine keeps
(DDP gradient buckets, DeepSpeed flat buffers) are told apart from the model's own setup.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from planner.profile import autocast_run
from planner.profile.loss_run import LossRun
from planner.profile.optim import FP16_LOSS_SCALE, adapter_param_ids, deepspeed_config, make_optimizer
from planner.profile.workload import Built
from planner.specs import Precision, TrainSpec


class Engine:
    """forward -> what the loss takes (logits; for chunked and fused losses loss_run.py's outputs),
    backward(loss), step() (which also drops the gradients). ``loss_run`` is set by ``make_engine``."""

    name = "single"
    loss_run: LossRun

    def __init__(self, built: Built, train: TrainSpec, device: str):
        self.built = built
        self.train = train
        params = [p for p in built.model.parameters() if p.requires_grad]
        self.optimizer: Any = make_optimizer(params, train, device, adapter_param_ids(built.model, train))
        self.loss_scale = FP16_LOSS_SCALE if train.precision is Precision.FP16_MIXED else 1.0
        self.module: torch.nn.Module = built.model
        if train.precision.autocast_dtype and not isinstance(self, DDPEngine):
            self.module = autocast_run.prepare(built.model, train, device)
        self.config: dict[str, Any] | None = None

    def forward(self, ids: torch.Tensor, micro_batch: int):
        return self.loss_run.forward(self.module, ids)

    def backward(self, loss: torch.Tensor, micro_batch: int) -> None:
        scaled = loss / self.train.grad_accum
        if self.loss_scale != 1.0:
            scaled = scaled * self.loss_scale
        scaled.backward()

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def identity_optimizer(self) -> Any:
        return self.optimizer


class DDPEngine(Engine):
    name = "ddp"

    def __init__(self, built: Built, train: TrainSpec, device: str, local_rank: int):
        super().__init__(built, train, device)
        kwargs = {"device_ids": [local_rank]} if device == "cuda" else {}
        if train.precision.autocast_dtype:  # accelerate wraps the autocast forward, then DDP (autocast_run.py)
            self.module = autocast_run.prepare(built.model, train, device)
        else:
            self.module = torch.nn.parallel.DistributedDataParallel(built.model, **kwargs)

    def backward(self, loss: torch.Tensor, micro_batch: int) -> None:
        last = micro_batch == self.train.grad_accum - 1
        ctx = contextlib.nullcontext() if last else self.module.no_sync()
        with ctx:
            super().backward(loss, micro_batch)


class DeepSpeedEngine(Engine):
    name = "deepspeed"

    def __init__(self, built: Built, train: TrainSpec, device: str, num_ranks: int):
        import deepspeed

        from planner.profile.optim import make_torch_optimizer

        self.built = built
        self.train = train
        self.loss_scale = 1.0  # DeepSpeed scales fp16 losses itself
        self.config = deepspeed_config(train, num_ranks, int(built.hf_model.config.hidden_size))
        params = [p for p in built.model.parameters() if p.requires_grad]
        base_opt = make_torch_optimizer(params, train.optimizer, device)
        engine, optimizer, _, _ = deepspeed.initialize(model=built.model, optimizer=base_opt, config=self.config)
        self.module = engine
        self.optimizer = optimizer

    def backward(self, loss: torch.Tensor, micro_batch: int) -> None:
        self.module.backward(loss)
        if micro_batch < self.train.grad_accum - 1:
            self.module.step()  # DeepSpeed counts micro-steps; it only updates at the boundary

    def step(self) -> None:
        self.module.step()

    def on_gradients_complete(self, callback) -> None:
        """Run ``callback`` when backward has made every gradient, before ZeRO 1/2 copy this rank's partition
        out of them and drop the ``.grad`` tensors (stage_1_and_2.py ``independent_gradient_partition_epilogue``,
        at the end of backward): an identity probe there sees the full gradients, which no probe after
        backward can."""
        probe_when_gradients_complete(self.optimizer, callback)


def probe_when_gradients_complete(optimizer: Any, callback) -> None:
    """``callback()`` at the start of a ZeRO 1/2 optimizer's ``independent_gradient_partition_epilogue`` (also
    used by the injected recording of a user's command, inject.py); nothing for any other optimizer."""
    original = getattr(optimizer, "independent_gradient_partition_epilogue", None)
    if original is None:
        return

    def epilogue(*args, **kwargs):
        callback()
        return original(*args, **kwargs)

    optimizer.independent_gradient_partition_epilogue = epilogue


def make_engine(built: Built, train: TrainSpec, device: str, num_ranks: int, local_rank: int) -> Engine:
    if train.uses_deepspeed:
        engine: Engine = DeepSpeedEngine(built, train, device, num_ranks)
    elif train.uses_fsdp2:
        from planner.profile.fsdp2 import FSDP2Engine

        engine = FSDP2Engine(built, train, device, num_ranks)  # type: ignore[assignment]
    elif num_ranks > 1:
        engine = DDPEngine(built, train, device, local_rank)
    else:
        engine = Engine(built, train, device)
    engine.loss_run = LossRun(built, train)
    if train.compile:
        compile_engine(engine)
    return engine


def compile_engine(engine: Engine) -> None:
    """--compile as the HF Trainer does it (trainer.py ``create_accelerator_and_postprocess`` hands accelerate a
    ``TorchDynamoPlugin(backend="inductor")``): accelerate's ``Accelerator.prepare_model`` wraps the model, after
    DDP, in ``torch.compile(model, backend="inductor")`` (the plugin's other fields are its defaults, which
    ``to_kwargs`` leaves out); with DeepSpeed ``Accelerator._prepare_deepspeed`` calls
    ``engine.compile(backend="inductor", compile_kwargs={})``, which compiles the wrapped module in place.
    Compilation happens at the first forward, inside step 0's forward window."""
    if isinstance(engine, DeepSpeedEngine):
        engine.module.compile(backend="inductor", compile_kwargs={})
    else:
        engine.module = torch.compile(engine.module, backend="inductor")


def init_distributed(device: str, with_deepspeed: bool) -> None:
    """Join the process group torchrun set up: gloo on CPU, nccl on CUDA (DeepSpeed's wrapper for ZeRO)."""
    backend = "nccl" if device == "cuda" else "gloo"
    if device != "cuda":
        from planner.profile import gloo_settle

        gloo_settle.install()
    if with_deepspeed:
        import deepspeed
        import deepspeed.comm.torch as ds_torch_comm

        if device != "cuda":
            # DeepSpeed's CPU accelerator JIT-builds a shared-memory all-reduce kernel (a C++ compile of a
            # minute or more); plain gloo collectives allocate the same tensors, so skip the build.
            ds_torch_comm.build_shm_op = lambda: None
        deepspeed.init_distributed(dist_backend=backend)
    else:
        torch.distributed.init_process_group(backend=backend)
