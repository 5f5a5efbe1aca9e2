"""A small, self-contained CPU memory probe for the activation/peak tests (not the `planner profile` workload).

It builds a tiny transformers model from a config dict with random weights, optionally wraps it with peft LoRA,
and runs training steps under ``torch.profiler.profile(profile_memory=True)``. Every allocation and free of the
CPU allocator is a ``[memory]`` event with a signed byte count and a timestamp; summing them in time order gives
the live tensor bytes, and ``record_function`` markers split the step into phases (forward, backward, optimizer
step). Figures are reported relative to the live bytes at the start of the measured step, so they count only what
the step allocates (activations, logits, gradients, step scratch), not the weights that existed before.

Conventions that match the estimator's phase model (planner/estimate/peak.py) and `planner profile`: weights in
the training dtype (fp32 or bf16, no autocast), torch AdamW with ``foreach=True``, for 16-bit trainable weights an
fp32 master copy stepped with fp32 copies of the gradients (``master_weights=True``), ``zero_grad(set_to_none=True)``
after each step, the model output dropped before backward (only the loss is kept, as the HF Trainer does).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build_model(config: dict, *, attn: str = "eager", dtype: str = "fp32", seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=TORCH_DTYPES[dtype])
    return model


def apply_lora(model, *, rank: int = 8, alpha: int = 16, dropout: float = 0.0, targets=("all-linear",)):
    from peft import LoraConfig, get_peft_model

    target = "all-linear" if "all-linear" in targets else list(targets)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target, task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


@dataclass(frozen=True)
class StepMemory:
    """Live tensor bytes during one training step, relative to the step's start (``base_bytes``)."""

    base_bytes: int  # live bytes of the process' tensors at step start (tracked since the probe began)
    forward_end_bytes: int  # after forward + loss, before backward
    forward_peak_bytes: int
    backward_peak_bytes: int
    backward_end_bytes: int  # gradients (and anything else) left after backward
    step_peak_bytes: int  # during optimizer.step()
    peak_bytes: int  # max over the whole step
    peak_phase: str


def _timeline(prof, markers: tuple[str, ...]):
    events = prof.profiler.kineto_results.events()
    mem = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    spans = {}
    for e in events:
        if e.name() in markers:
            spans[e.name()] = (e.start_ns(), e.end_ns())
    return mem, spans


class MasterWeights:
    """fp32 masters for 16-bit trainable weights: gradients converted to fp32 all at once at the step."""

    def __init__(self, params, lr: float):
        self.params = params
        self.masters = [p if p.dtype == torch.float32 else p.detach().float().requires_grad_(True) for p in params]
        self.inner = torch.optim.AdamW(self.masters, lr=lr, foreach=True)

    @torch.no_grad()
    def step(self) -> None:
        for p, m in zip(self.params, self.masters, strict=True):
            if m is not p and p.grad is not None:
                m.grad = p.grad.float()
        self.inner.step()
        for p, m in zip(self.params, self.masters, strict=True):
            if m is not p:
                p.copy_(m)
                m.grad = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None


def run_steps(
    model,
    *,
    micro_batch: int,
    seq_len: int,
    steps: int = 2,
    checkpointing: bool = False,
    master_weights: bool = False,
    lr: float = 1e-4,
    seed: int = 0,
) -> StepMemory:
    """Train ``steps`` steps; measure the last one (earlier ones create the optimizer states)."""
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    model.config.use_cache = False
    params = [p for p in model.parameters() if p.requires_grad]
    opt = MasterWeights(params, lr) if master_weights else torch.optim.AdamW(params, lr=lr, foreach=True)
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size

    def one_step(prof_ctx):
        ids = torch.randint(0, vocab, (micro_batch, seq_len), generator=gen)
        with prof_ctx:
            with torch.profiler.record_function("probe::forward"):
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            with torch.profiler.record_function("probe::backward"):
                loss.backward()
            del loss
            with torch.profiler.record_function("probe::step"):
                opt.step()
            opt.zero_grad(set_to_none=True)

    for _ in range(steps - 1):
        one_step(contextlib.nullcontext())
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False)
    one_step(prof)
    mem, spans = _timeline(prof, ("probe::forward", "probe::backward", "probe::step"))
    return _summarise(mem, spans)


def _summarise(mem, spans) -> StepMemory:
    f0, f1 = spans["probe::forward"]
    b0, b1 = spans["probe::backward"]
    s0, s1 = spans["probe::step"]
    live = 0
    peaks = {"forward": 0, "backward": 0, "optimizer_step": 0}
    at = {}
    for t, nb in mem:
        live += nb
        if t <= f1:
            peaks["forward"] = max(peaks["forward"], live)
            at["forward_end"] = live
        elif t <= b1:
            peaks["backward"] = max(peaks["backward"], live)
            at["backward_end"] = live
        elif s0 <= t <= s1:
            peaks["optimizer_step"] = max(peaks["optimizer_step"], live)
    at.setdefault("backward_end", at.get("forward_end", 0))
    peak_phase = max(peaks, key=lambda p: peaks[p])
    return StepMemory(
        base_bytes=0,
        forward_end_bytes=at.get("forward_end", 0),
        forward_peak_bytes=peaks["forward"],
        backward_peak_bytes=peaks["backward"],
        backward_end_bytes=at["backward_end"],
        step_peak_bytes=peaks["optimizer_step"],
        peak_bytes=peaks[peak_phase],
        peak_phase=peak_phase,
    )


def build_qlora_model(config: dict, *, attn: str = "eager", dtype: str = "bf16", quant_type: str = "nf4",
                      double_quant: bool = True, seed: int = 0, prepare: bool = True):
    """A 4-bit base as transformers' bitsandbytes path builds it (random weights saved, then loaded quantized),
    then peft's prepare_model_for_kbit_training unless ``prepare`` is False."""
    import tempfile

    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    cfg = AutoConfig.for_model(**config)
    torch.manual_seed(seed)
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                             bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=TORCH_DTYPES[dtype])
    with tempfile.TemporaryDirectory(prefix="memprobe-") as tmp:
        base = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=TORCH_DTYPES[dtype])
        base.save_pretrained(tmp)
        del base
        model = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=bnb, dtype=TORCH_DTYPES[dtype],
                                                     attn_implementation=attn, device_map={"": "cpu"})
    with torch.no_grad():  # weights may still point into the memory-mapped file
        for module in model.modules():
            for p in list(module.parameters(recurse=False)):
                if not hasattr(p, "quant_state"):
                    p.data = p.data.clone()
    if prepare:  # peft's QLoRA recipe (what planner profile runs): non-4-bit parameters become fp32
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model
