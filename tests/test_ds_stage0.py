"""Issue 16 item 1: DeepSpeed's own engine at ZeRO stage 0 (``--engine deepspeed --zero 0``), estimate/ds_stage0.py.

DeepSpeed 0.19 wraps the HF Trainer's torch AdamW in FP16_UnfusedOptimizer for bf16 at stage 0 (engine.py
``_do_optimizer_sanity_check`` -> DDP_BFLOAT16 -> ``_configure_fp16_optimizer``): per-tensor fp32 masters, every
gradient converted to fp32 at the step, no DDP buckets, and a flat all-reduce bucket at the end of backward. The
CPU cells (validate/ds_stage0_cells.py) check the peak; these tests check the spec, the rules and the shells."""

from __future__ import annotations

import dataclasses
import json

import pytest

from planner import catalog
from planner.emit import deepspeed_config
from planner.errors import PlannerError
from planner.estimate.core import estimate
from planner.estimate.ds_stage0 import ALLREDUCE_BUCKET_ELEMENTS, allreduce_flat_bytes
from planner.models import load_model
from planner.specs import (
    Cluster,
    Engine,
    Method,
    Offload,
    Parallelism,
    Precision,
    TrainSpec,
    ZeroConfig,
    train_spec_from_dict,
    train_spec_to_dict,
)

DS0 = Parallelism.from_zero(0, deepspeed_stage0=True)


def _train(**kw) -> TrainSpec:
    base = dict(precision=Precision.BF16_MIXED, parallelism=DS0, seq_len=512, micro_batch=1)
    return TrainSpec(**{**base, **kw})


def test_stage_zero_is_ddp_unless_deepspeed_is_asked_for():
    assert Parallelism.from_zero(0).engine is Engine.DDP
    assert (DS0.engine, DS0.zero_stage, DS0.label) == (Engine.DEEPSPEED, 0, "DeepSpeed ZeRO-0")
    assert _train().uses_deepspeed and _train().zero_stage == 0


@pytest.mark.parametrize(("make", "message"), [
    (lambda: _train(precision=Precision.FP32), "bf16-mixed only"),
    (lambda: _train(method=Method.LORA), "full fine-tuning only"),
    (lambda: Parallelism(engine=Engine.DEEPSPEED, zero_stage=0, offload=Offload.OPTIMIZER), "needs ZeRO stage 1, 2 or 3"),
    (lambda: Parallelism(engine=Engine.DEEPSPEED, zero_stage=0, zero_config=ZeroConfig(reduce_bucket_size=1000)),
     "ZeRO stages 1-3 only"),
])
def test_what_is_not_modelled_is_refused(make, message):
    with pytest.raises(PlannerError, match=message):
        make()


def test_the_json_train_block_names_the_engine_and_round_trips():
    d = train_spec_to_dict(_train())
    assert (d["zero_stage"], d["engine"]) == (0, "deepspeed")
    assert train_spec_from_dict(d) == _train()
    assert "engine" not in train_spec_to_dict(TrainSpec())  # plain stage 0 writes what it always wrote


def test_the_allreduce_bucket_closes_after_passing_5e8_elements():
    # engine.py allreduce_no_retain: append, then flatten once the count exceeds numel_per_bucket
    assert allreduce_flat_bytes((10, 20, 30), 2) == 120
    half = ALLREDUCE_BUCKET_ELEMENTS // 2
    assert allreduce_flat_bytes((half, half, 1, 7), 2) == 2 * (2 * half + 1)  # then a bucket of 7
    assert allreduce_flat_bytes((half, half, 3 * half), 2) == 2 * 5 * half  # 5e8 is not past it: one bucket


@pytest.mark.parametrize("gpus", [1, 2])
def test_against_plain_data_parallelism(gpus):
    """Same fp32 masters, moments and fp32 gradient copies at the step as planner's DDP recipe; no DDP bucket
    (2 ranks), and the flat bf16 copy of every gradient beside them after backward."""
    model = load_model("llama-3.2-1b")
    cluster = Cluster(gpu=catalog.gpu("h100-sxm-80gb"), num_gpus=gpus)
    ds0 = estimate(model, _train(), cluster)
    ddp = estimate(model, dataclasses.replace(_train(), parallelism=Parallelism.from_zero(0)), cluster)
    for cat in ("params_bytes", "grads_bytes", "optimizer_states_bytes"):
        assert getattr(ds0.phases["optimizer_step"], cat) == getattr(ddp.phases["optimizer_step"], cat)
    grads = ds0.phases["optimizer_step"].grads_bytes
    bucket = grads if gpus > 1 else 0  # torch DDP's bucket copy of the gradients (temporaries.ddp_bucket_bytes)
    assert ds0.phases["optimizer_step"].temporaries_bytes == ddp.phases["optimizer_step"].temporaries_bytes - bucket
    end = ds0.phases["backward"]
    # 1.24e9 trainable elements: flat buckets of just over 5e8 elements each, the largest beside every gradient
    assert end.grads_bytes == grads and 2 * ALLREDUCE_BUCKET_ELEMENTS < end.temporaries_bytes < grads
    assert ds0.peak_phase == "optimizer_step"


def test_the_bundle_writes_stage_zero():
    model = load_model("llama-3.2-1b")
    config = deepspeed_config(model, _train(), Cluster(gpu=catalog.gpu("h100-sxm-80gb"), num_gpus=2))
    assert config["zero_optimization"] == {"stage": 0}
    assert config["bf16"] == {"enabled": True} and config["train_batch_size"] == 2


def test_the_cli_estimates_it_and_says_what_it_refuses(tmp_path):
    from typer.testing import CliRunner

    from planner.cli.app import build_app

    app = build_app(["estimate"])
    args = ["estimate", "-m", "llama-3.2-1b", "--engine", "deepspeed", "--zero", "0", "--method", "full",
            "--gpus", "2", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["rows"]) == 1 and (data["rows"][0]["engine"], data["rows"][0]["zero_stage"]) == ("deepspeed", 0)
    assert data["train"]["engine"] == "deepspeed"
    refused = CliRunner().invoke(app, [a for a in args if a != "--json"][:-2] + ["--method", "lora"] + ["--gpus", "2"])
    assert isinstance(refused.exception, PlannerError) and "full fine-tuning only" in str(refused.exception)


_UNFUSED_CHECK = """
import deepspeed
import deepspeed.comm.torch as ds_torch_comm
import torch
from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

from planner.profile.optim import deepspeed_config as profile_config
from tests.test_ds_stage0 import _train

ds_torch_comm.build_shm_op = lambda: None
deepspeed.init_distributed(dist_backend="gloo")
model = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.Linear(48, 16))
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
cfg = profile_config(_train(), 1, 32)
assert cfg["zero_optimization"] == {"stage": 0}, cfg
engine, wrapped, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
assert isinstance(wrapped, FP16_UnfusedOptimizer), type(wrapped)
masters = [p for g in wrapped.fp32_groups for p in g]
assert [m.dtype for m in masters] == [torch.float32] * 4 and [m.numel() for m in masters] == [1536, 48, 768, 16]
assert all(p.dtype == torch.bfloat16 for p in engine.module.parameters())
"""


@pytest.mark.slow
def test_deepspeed_builds_the_unfused_optimizer_for_the_profiled_config():
    """The installed DeepSpeed, on the CPU accelerator, with the profiler's config (profile/optim.py): the wrapper
    the estimate follows, per-tensor fp32 masters and bf16 weights. In its own process: a process group (and the
    rank variables it reads) must not outlive the test in pytest's process, where later tests launch their own."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    env = os.environ | dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
                            LOCAL_RANK="0", PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-c", _UNFUSED_CHECK], env=env, cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_every_rank_steps_every_parameter():
    """Stage 0 shards nothing: the optimizer step's time is DDP's (not divided by the ranks as under ZeRO), the
    all-reduce after backward is not hidden (buffered_allreduce_fallback runs after the last gradient), and
    torch's fused AdamW keeps one step counter per fp32 master tensor (sharding.fused_step_counter_bytes)."""
    from typer.testing import CliRunner

    from planner.cli.app import build_app

    def step(engine: str, optimizer: str = "adamw") -> dict:
        result = CliRunner().invoke(build_app(["estimate"]), [
            "estimate", "-m", "llama-3.2-1b", "--engine", engine, "--zero", "0", "--method", "full", "--gpus", "2",
            "--optimizer", optimizer, "--tokens", "1000000000", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["rows"][0]

    ds0, ddp = step("deepspeed"), step("ddp")
    assert ds0["throughput"]["step"]["optimizer_s"] == ddp["throughput"]["step"]["optimizer_s"] > 0
    assert ds0["throughput"]["step"]["exposed_communication_s"] > ddp["throughput"]["step"]["exposed_communication_s"]
    fused_ds0, fused_ddp = step("deepspeed", "adamw-fused"), step("ddp", "adamw-fused")
    assert (fused_ds0["per_gpu"]["optimizer_states_bytes"] - ds0["per_gpu"]["optimizer_states_bytes"]
            == fused_ddp["per_gpu"]["optimizer_states_bytes"] - ddp["per_gpu"]["optimizer_states_bytes"] > 0)
