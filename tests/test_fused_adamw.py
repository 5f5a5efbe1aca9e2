"""torch's fused AdamW (``--optimizer adamw-fused``, issue 16 item 2): the estimator's rule against the real optimizer.

The rule (planner/estimate/temporaries.py ``ADAMW_FUSED_SCRATCH_COPIES``, states.py ``FUSED_STEP_COUNTER_BYTES``,
sharding.py ``fused_step_counter_bytes``): the fused step allocates no full-size scratch, where foreach makes a
copy of the second moment; the state is the same two moments plus one float32 step counter per stepped tensor on
the parameter's device. The independent numbers come from running the optimizer the profiler builds
(planner/profile/optim.py ``make_torch_optimizer``) under torch.profiler's memory events; the validation matrix
(planner/validate/matrix.py ``OPTIMIZER_CELLS``) checks whole training steps.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from planner import catalog
from planner.estimate.core import estimate
from planner.estimate.sharding import fused_step_counter_bytes
from planner.estimate.states import FUSED_STEP_COUNTER_BYTES
from planner.estimate.temporaries import optimizer_scratch_bytes
from planner.models import load_model
from planner.specs import Cluster, Method, Offload, Optimizer, Parallelism, Precision, TrainSpec

# Tensor sizes of a small "model": uneven, so no kernel gets a round shape.
SIZES = (1000, 3000, 517, 64, 77, 99)
# On CPU, foreach ops with a Python number take the per-tensor slow path, which wraps the number in an 8-byte
# 0-d tensor and converts it to the dtype of the tensor it meets, one tensor at a time: fused's
# ``torch._foreach_add_(state_steps, 1)`` meets the float32 counters (8 + 4 bytes); foreach's peak comes during
# an op on its second-moment copy (8 + the moment's bytes). Bytes the estimator does not count (CUDA's foreach
# kernels take the number as a kernel argument).
CPU_WRAPPED_SCALAR_BYTES = 8


def _measure(kind: Optimizer, precision: Precision) -> tuple[int, int, list]:
    """(peak bytes allocated inside a steady-state step above its start, state bytes, step counters) of the
    profiler's torch optimizer over SIZES."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from planner.profile.optim import make_torch_optimizer

    dtype = torch.bfloat16 if precision is Precision.BF16 else torch.float32
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(n, generator=gen, dtype=dtype).requires_grad_(True) for n in SIZES]
    opt = make_torch_optimizer(params, kind, "cpu")
    peak = None
    for step in range(3):  # step 0 creates the state; the later steps are the steady state
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
        if step < 2:
            opt.step()
            continue
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            opt.step()
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                        if e.name() == "[memory]")  # fmt: skip
        live = peak = 0
        for _, nbytes in events:
            live += nbytes
            peak = max(peak, live)
    state = [t for s in opt.state.values() for t in s.values()]
    return peak, sum(t.numel() * t.element_size() for t in state), [s["step"] for s in opt.state.values()]


@pytest.mark.parametrize("precision", [Precision.FP32, Precision.BF16], ids=["fp32", "pure-bf16"])
@pytest.mark.parametrize("kind", [Optimizer.ADAMW, Optimizer.ADAMW_FUSED], ids=["foreach", "fused"])
def test_step_scratch_and_state_are_what_torch_allocates(kind, precision):
    import torch

    train = TrainSpec(optimizer=kind, precision=precision)
    moment_bytes = 2 if precision is Precision.BF16 else 4  # pure bf16 keeps the moments in bf16
    num = sum(SIZES)
    measured_peak, measured_state, counters = _measure(kind, precision)
    rule = optimizer_scratch_bytes(train, num_trainable_on_gpu=num, moment_bytes=moment_bytes,
                                   largest_trainable=max(SIZES))  # fmt: skip
    wrapped = CPU_WRAPPED_SCALAR_BYTES + (4 if kind is Optimizer.ADAMW_FUSED else moment_bytes)
    assert measured_peak == rule + wrapped
    # foreach: a copy of the second moment (exp_avg_sq.sqrt) for every tensor at once; fused: none
    assert rule == (num * moment_bytes if kind is Optimizer.ADAMW else 0)
    # the state: exp_avg and exp_avg_sq, plus one float32 counter per tensor; fused puts the counter on the
    # parameter's device (foreach on the host: the same CPU here, but not the GPU's memory on a CUDA run)
    assert all(c.dtype == torch.float32 and c.numel() == 1 and c.device.type == "cpu" for c in counters)
    assert measured_state == 2 * num * moment_bytes + FUSED_STEP_COUNTER_BYTES * len(SIZES)
    if kind is Optimizer.ADAMW_FUSED:
        assert fused_step_counter_bytes(train, len(SIZES), num) == FUSED_STEP_COUNTER_BYTES * len(SIZES)
    else:
        assert fused_step_counter_bytes(train, len(SIZES), num) == 0


def test_fused_counters_follow_what_the_torch_optimizer_steps():
    fused = TrainSpec(optimizer=Optimizer.ADAMW_FUSED)
    assert fused_step_counter_bytes(fused, 291, 8 * 10**9) == 4 * 291  # every trainable tensor, no DeepSpeed
    for stage in (1, 2):  # one flat fp32 partition per param group
        assert fused_step_counter_bytes(dataclasses.replace(fused, parallelism=Parallelism.from_zero(stage)), 291, 10**9) == 4
    zero3 = dataclasses.replace(fused, parallelism=Parallelism.from_zero(3))
    assert fused_step_counter_bytes(zero3, 291, 10**9) == 4  # one sub-group of sub_group_size (1e9) elements
    assert fused_step_counter_bytes(zero3, 291, 2 * 10**9 + 1) == 12
    offload = dataclasses.replace(fused, parallelism=Parallelism.from_zero(2, Offload.OPTIMIZER))
    assert fused_step_counter_bytes(offload, 291, 10**9) == 0  # stepped on the host


def test_estimate_differs_from_foreach_by_the_second_moment_copy_and_the_counters():
    model = load_model("llama-3.1-8b")
    cluster = Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=1)
    base = TrainSpec(seq_len=512, grad_checkpointing=True)
    foreach = estimate(model, base, cluster)
    fused = estimate(model, dataclasses.replace(base, optimizer=Optimizer.ADAMW_FUSED), cluster)
    p = foreach.num_trainable_params
    assert foreach.peak_phase == fused.peak_phase == "optimizer_step"
    assert foreach.per_gpu.temporaries_bytes - fused.per_gpu.temporaries_bytes == 4 * p  # fp32 sqrt(exp_avg_sq)
    # Llama 3.1 8B: 32 layers x 9 tensors + embedding + final norm + untied head = 291 trainable tensors
    assert fused.per_gpu.optimizer_states_bytes - foreach.per_gpu.optimizer_states_bytes == 4 * 291
    lora = dataclasses.replace(base, method=Method.LORA, optimizer=Optimizer.ADAMW_FUSED)
    lora_foreach = estimate(model, dataclasses.replace(lora, optimizer=Optimizer.ADAMW), cluster)
    # LoRA all-linear: A and B on 7 projections x 32 layers
    assert estimate(model, lora, cluster).per_gpu.optimizer_states_bytes - \
        lora_foreach.per_gpu.optimizer_states_bytes == 4 * 2 * 7 * 32


def test_cli_takes_adamw_fused_into_the_train_block(cli):
    r = cli("estimate", "-m", "gpt2", "--method", "full", "--zero", "0", "--optimizer", "adamw-fused", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["train"]["optimizer"] == "adamw-fused"
    foreach = json.loads(cli("estimate", "-m", "gpt2", "--method", "full", "--zero", "0", "--json").stdout)
    assert foreach["train"]["optimizer"] == "adamw"  # the default stays foreach
    # GPT-2 full, bf16-mixed, 1024 tokens: foreach peaks at the step with its copy of the second moment; fused
    # has none, so its step is lower and the loss backward becomes the peak
    assert foreach["rows"][0]["peak_phase"] == "optimizer_step" and data["rows"][0]["peak_phase"] == "backward"
    assert data["rows"][0]["per_gpu"]["total_bytes"] < foreach["rows"][0]["per_gpu"]["total_bytes"]
    bad = cli("estimate", "-m", "gpt2", "--optimizer", "adamw-fuzed")
    assert bad.returncode == 1 and "--optimizer" in bad.stderr


@pytest.mark.parametrize(("optimizer", "optim", "fused"), [("adamw", "adamw_torch", None),
                                                          ("adamw-fused", "adamw_torch_fused", True)])
def test_the_bundle_trains_with_the_planned_adamw(optimizer, optim, fused):
    """The emitted train.py maps the plan's optimizer to TrainingArguments.optim, and transformers builds
    torch's AdamW from it with the planned implementation (fused=True, or torch's default: foreach on CUDA)."""
    import ast

    from transformers import Trainer, TrainingArguments

    from planner.emit import render_bundle
    from tests.bundle_helpers import tiny_plan

    model, train, cluster, _, gbs = tiny_plan()
    train = dataclasses.replace(train, optimizer=Optimizer(optimizer))
    files = render_bundle(model, train, cluster, estimate(model, train, cluster), global_batch_size=gbs)
    literals = {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(files["train.py"]).body
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) in ("PLAN", "OPTIMIZERS")}
    assert literals["PLAN"]["optimizer"] == optimizer
    assert literals["OPTIMIZERS"][optimizer] == optim
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(TrainingArguments(output_dir="unused", optim=optim,
                                                                         use_cpu=True, report_to="none"))
    assert cls.__name__ == "AdamW" and cls.__module__.startswith("torch.optim")
    assert kwargs.get("fused") is fused and "foreach" not in kwargs
