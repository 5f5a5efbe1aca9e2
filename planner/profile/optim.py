"""Optimizers of the profiled workload, the fp32-master mixed-precision wrapper and the DeepSpeed config.

Mixed precision follows the ZeRO paper's recipe (Rajbhandari et al. 2020, arXiv 1910.02054), the one the
estimator models: 16-bit weights and gradients, an fp32 master copy of every 16-bit trainable weight held
by the optimizer, fp32 moments. Without DeepSpeed, ``MasterWeightsOptimizer`` does this the way DeepSpeed's
ZeRO optimizers do at the step (stage_1_and_2.py ``step``): the 16-bit gradients are converted to fp32 all at
once (a step temporary of 4 bytes per trainable 16-bit parameter), the fp32 optimizer updates the masters,
and the masters are copied back into the 16-bit weights. Trainable fp32 parameters (LoRA adapters, which
peft keeps in fp32 on a 16-bit base) are optimized in place, without a master copy, and so are 16-bit LoRA
adapters (``--lora-dtype 16bit``): the HF Trainer steps them as they are, with torch's states in their dtype
(estimate/peft_dtypes.py).

torch's AdamW and SGD run with ``foreach=True`` on every device: CUDA's default implementation, so that a
CPU profile allocates the same optimizer-step temporaries a GPU run does. ``--optimizer adamw-fused`` runs
torch's AdamW with ``fused=True`` (the HF Trainer's ``adamw_torch_fused``), whose CPU kernel exists since
torch 2.4, on every device too.
"""

from __future__ import annotations

from typing import Any

import torch

from planner.errors import PlannerError
from planner.specs import Method, Offload, Optimizer, PeftDtype, Precision, TrainSpec, ZeroConfig

LEARNING_RATE = 1e-4
# Static loss scale for fp16-mixed without DeepSpeed: memory does not depend on its value.
FP16_LOSS_SCALE = 1024.0


def make_torch_optimizer(params: list[torch.Tensor], kind: Optimizer, device: str) -> torch.optim.Optimizer:
    if kind is Optimizer.ADAMW:
        return torch.optim.AdamW(params, lr=LEARNING_RATE, foreach=True)
    if kind is Optimizer.ADAMW_FUSED:
        return torch.optim.AdamW(params, lr=LEARNING_RATE, fused=True)
    if kind is Optimizer.SGD:
        return torch.optim.SGD(params, lr=LEARNING_RATE, momentum=0.9, foreach=True)
    if kind is Optimizer.ADAFACTOR:
        from transformers.optimization import Adafactor

        # The HF Trainer's optim="adafactor" (transformers/trainer_optimizer.py): no first moment (beta1=None).
        return Adafactor(params, lr=LEARNING_RATE, scale_parameter=False, relative_step=False)
    if kind in (Optimizer.PAGED_ADAMW, Optimizer.PAGED_ADAMW_8BIT) and device != "cuda":
        raise PlannerError(
            f"optimizer {kind.value!r} pages its state through CUDA unified memory and needs --device cuda; "
            "use adamw or adamw-8bit on CPU."
        )
    import bitsandbytes as bnb

    # What the HF Trainer builds for adamw_bnb_8bit, paged_adamw_32bit and paged_adamw_8bit
    # (transformers/trainer_optimizer.py: bitsandbytes.optim.AdamW with optim_bits and is_paged).
    # bitsandbytes 0.50.2 steps it on CPU too (backends/cpu/ops.py, torch ops in fp32; planner/estimate/optim_rules.py).
    bits = 32 if kind is Optimizer.PAGED_ADAMW else 8
    paged = kind is not Optimizer.ADAMW_8BIT
    return bnb.optim.AdamW(params, lr=LEARNING_RATE, optim_bits=bits, is_paged=paged)


class MasterWeightsOptimizer:
    """fp32 master weights for 16-bit trainable parameters; the inner optimizer steps the masters."""

    def __init__(self, params: list[torch.nn.Parameter], kind: Optimizer, device: str, loss_scale: float = 1.0,
                 direct: frozenset[int] = frozenset()):
        """``direct``: ids of parameters stepped as they are, whatever their dtype (16-bit LoRA adapters)."""
        self.model_params = params
        self.masters: list[torch.Tensor] = []
        for p in params:
            if p.dtype == torch.float32 or id(p) in direct:
                self.masters.append(p)
            else:
                m = p.detach().to(torch.float32)  # a new fp32 tensor (the dtype differs)
                m.requires_grad_(True)
                self.masters.append(m)
        self.loss_scale = loss_scale
        self.inner = make_torch_optimizer(self.masters, kind, device)

    @property
    def state(self) -> dict:
        return self.inner.state

    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups

    @torch.no_grad()
    def step(self) -> None:
        for p, m in zip(self.model_params, self.masters, strict=True):
            if m is p:
                if p.grad is not None and self.loss_scale != 1.0:
                    p.grad.div_(self.loss_scale)
                continue
            if p.grad is not None:
                m.grad = p.grad.to(torch.float32)
                if self.loss_scale != 1.0:
                    m.grad.div_(self.loss_scale)
        self.inner.step()
        for p, m in zip(self.model_params, self.masters, strict=True):
            if m is not p:
                p.copy_(m)
                m.grad = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.model_params:
            p.grad = None


class InBackwardOptimizers:
    """torchtune's optimizer_in_bwd (torchtune 0.6.1 training/memory.py ``register_optim_in_bwd_hooks``, as its
    full_finetune_single_device recipe sets it up): one torch optimizer per parameter,
    ``{p: optimizer([p]) for p in params}``, stepped in the parameter's post-accumulate-grad hook, which then
    calls ``zero_grad()`` (set_to_none): each gradient is freed as soon as it has been used. The hooks are torch's
    own (``Tensor.register_post_accumulate_grad_hook``); torchtune's function is these five lines, written here
    because its package import pulls in torchao. ``step()`` and ``zero_grad()`` after backward have nothing
    left to do, as torchtune's recipe skips them."""

    def __init__(self, params: list[torch.nn.Parameter], kind: Optimizer, device: str):
        self.optimizers = [make_torch_optimizer([p], kind, device) for p in params]
        optim_dict = dict(zip(params, self.optimizers, strict=True))

        def optim_step(param) -> None:
            optim_dict[param].step()
            optim_dict[param].zero_grad()

        for p in params:
            p.register_post_accumulate_grad_hook(optim_step)

    def step(self) -> None:
        pass

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass


def make_optimizer(params: list[torch.nn.Parameter], train: TrainSpec, device: str,
                   direct: frozenset[int] = frozenset()) -> Any:
    """The optimizer of a run without DeepSpeed, following the precision's recipe; ``direct``: the ids of
    16-bit parameters stepped without a master copy (``adapter_param_ids``)."""
    if train.optimizer_in_backward:
        return InBackwardOptimizers(params, train.optimizer, device)
    if train.precision.has_master_weights:
        scale = FP16_LOSS_SCALE if train.precision is Precision.FP16_MIXED else 1.0
        return MasterWeightsOptimizer(params, train.optimizer, device, loss_scale=scale, direct=direct)
    return make_torch_optimizer(params, train.optimizer, device)


def adapter_param_ids(model: torch.nn.Module, train: TrainSpec) -> frozenset[int]:
    """The trainable LoRA adapter parameters of a ``--lora-dtype 16bit`` run (peft names them ``lora_*``), which
    the HF Trainer steps in their 16-bit dtype; empty otherwise."""
    if train.method is Method.FULL or train.lora_dtype is not PeftDtype.BIT16:
        return frozenset()
    return frozenset(id(p) for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)


def deepspeed_config(train: TrainSpec, num_ranks: int, hidden_size: int) -> dict[str, Any]:
    """The DeepSpeed config of a ZeRO run (stored in meta.json).

    Bucket sizes and the ZeRO-3 persistence threshold are the run's (``--deepspeed-config``, ZeroConfig), by
    default the values the Hugging Face Trainer fills in for ``"auto"`` (transformers/integrations/deepspeed.py ``trainer_config_finalize``): reduce bucket h*h
    elements, ZeRO-3 prefetch bucket 0.9*h*h, parameters under 10*h elements kept gathered. DeepSpeed's own
    defaults (5e8-element buckets, 1e5-element threshold) would make a small model's profile all buckets and
    leave it unsharded.
    """
    if train.precision is Precision.BF16:
        raise PlannerError(
            "--precision bf16 (pure, no master weights) cannot be profiled with DeepSpeed ZeRO, which always "
            "keeps fp32 master weights; use --precision bf16-mixed."
        )
    zc = train.parallelism.zero_config  # a --deepspeed-config's settings; "auto" resolved as the Trainer does
    if train.zero_stage == 0:
        # DeepSpeed's own engine at stage 0 (estimate/ds_stage0.py): no ZeRO buckets or thresholds apply
        zero: dict[str, Any] = {"stage": 0}
    else:
        zero = {"stage": train.zero_stage, "reduce_bucket_size": zc.reduce_bucket(hidden_size)}
    if train.zero_stage == 3:
        zero["stage3_prefetch_bucket_size"] = zc.prefetch_bucket(hidden_size)
        zero["stage3_param_persistence_threshold"] = zc.persistence_threshold(hidden_size)
    defaults = ZeroConfig()
    if zc.overlap_comm is not None:
        zero["overlap_comm"] = zc.overlap_comm
    if not zc.contiguous_gradients:
        zero["contiguous_gradients"] = False  # DeepSpeed's default is true
    for key in ("stage3_max_reuse_distance", "sub_group_size"):
        if getattr(zc, key) != getattr(defaults, key):
            zero[key] = getattr(zc, key)
    if train.offload in (Offload.OPTIMIZER, Offload.OPTIMIZER_PARAMS):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if train.offload is Offload.OPTIMIZER_PARAMS:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.micro_batch,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.micro_batch * train.grad_accum * num_ranks,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        # Offload with a torch optimizer instead of DeepSpeedCPUAdam (which needs a C++ build).
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }
    if train.precision is Precision.BF16_MIXED:
        cfg["bf16"] = {"enabled": True}
    elif train.precision is Precision.FP16_MIXED:
        cfg["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return cfg
