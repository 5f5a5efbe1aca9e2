"""Issue 15 item 3: the typed parallelism spec (engine, ZeRO stage, offload) validated in one place."""

from __future__ import annotations

import dataclasses

import pytest

from planner.cli import from_options
from planner.errors import PlannerError
from planner.specs import (
    Engine,
    Method,
    Offload,
    Parallelism,
    Precision,
    TrainSpec,
    train_spec_from_dict,
    train_spec_to_dict,
)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage_zero_is_plain_data_parallel_and_the_rest_deepspeed(stage):
    p = Parallelism.from_zero(stage)
    assert p.engine is (Engine.DDP if stage == 0 else Engine.DEEPSPEED)
    assert p.uses_deepspeed == (stage > 0)
    train = TrainSpec(parallelism=p)
    assert (train.zero_stage, train.offload, train.uses_deepspeed) == (stage, Offload.NONE, stage > 0)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(engine=Engine.DDP, zero_stage=2), "plain data parallelism has stage 0"),
    (dict(engine=Engine.DEEPSPEED, zero_stage=0, offload=Offload.OPTIMIZER), "needs ZeRO stage 1, 2 or 3"),
    (dict(engine=Engine.DEEPSPEED, zero_stage=4), "must be 0, 1, 2 or 3"),
    (dict(engine=Engine.DDP, offload=Offload.OPTIMIZER), "needs ZeRO stage 1, 2 or 3"),
    (dict(engine=Engine.DEEPSPEED, zero_stage=2, offload=Offload.OPTIMIZER_PARAMS), "needs ZeRO stage 3"),
    (dict(engine="fsdp"), "unknown parallelism engine"),
])
def test_invalid_combinations_are_one_sentence(kwargs, message):
    with pytest.raises(PlannerError, match=message):
        Parallelism(**kwargs)


def test_the_train_spec_refuses_what_the_engine_cannot_run():
    TrainSpec(method=Method.QLORA, parallelism=Parallelism.from_zero(3))  # the 4-bit base partitioned (qlora_shard.py)
    with pytest.raises(PlannerError, match="QLoRA with ZeRO-3 parameter offload"):
        TrainSpec(method=Method.QLORA, parallelism=Parallelism.from_zero(3, Offload.OPTIMIZER_PARAMS))
    with pytest.raises(PlannerError, match="Parallelism spec"):
        TrainSpec(parallelism=3)


@pytest.mark.parametrize(("stage", "offload"), [(0, Offload.NONE), (2, Offload.OPTIMIZER),
                                                (3, Offload.OPTIMIZER_PARAMS)])
def test_the_json_train_block_round_trips(stage, offload):
    train = TrainSpec(parallelism=Parallelism.from_zero(stage, offload))
    d = train_spec_to_dict(train)
    assert (d["zero_stage"], d["offload"]) == (stage, offload.value)
    assert train_spec_from_dict(d) == train


def test_a_typed_zero_keeps_the_configs_offload_and_a_typed_offload_its_stage():
    config = TrainSpec(parallelism=Parallelism.from_zero(3, Offload.OPTIMIZER_PARAMS))
    flags = TrainSpec(parallelism=Parallelism.from_zero(2, Offload.OPTIMIZER))
    assert from_options.merge_from_config(config, flags, {"offload"}).parallelism == Parallelism.from_zero(
        3, Offload.OPTIMIZER)
    stage_only = dataclasses.replace(config, parallelism=Parallelism.from_zero(3, Offload.OPTIMIZER))
    assert from_options.merge_from_config(stage_only, flags, {"zero"}).parallelism == Parallelism.from_zero(
        2, Offload.OPTIMIZER)
    with pytest.raises(PlannerError, match="needs ZeRO stage 3"):
        from_options.merge_from_config(config, flags, {"zero"})


# ---------------------------------------------------------------- FSDP2 (issue 18)


def test_fsdp2_is_its_own_engine_with_its_settings_round_tripping():
    from planner.specs import FsdpConfig

    cfg = FsdpConfig(reshard_after_forward=False, reduce_dtype=None, cpu_offload=True)
    train = TrainSpec(parallelism=Parallelism.fsdp2(cfg))
    assert train.uses_fsdp2 and not train.uses_deepspeed and train.zero_stage == 0
    d = train_spec_to_dict(train)
    assert d["engine"] == "fsdp2" and d["fsdp"]["cpu_offload"] is True
    assert train_spec_from_dict(d) == train
    assert Parallelism.fsdp2(cfg).label == "FSDP2, no reshard, CPU offload"
    # DDP and DeepSpeed train blocks keep their keys (the golden file's JSON does not move)
    assert "engine" not in train_spec_to_dict(TrainSpec()) and "fsdp" not in train_spec_to_dict(TrainSpec())


@pytest.mark.parametrize(("make", "message"), [
    (lambda F: Parallelism(engine=Engine.FSDP2, zero_stage=3), "takes no ZeRO stage"),
    (lambda F: Parallelism(engine=Engine.DDP, fsdp_config=F(cpu_offload=True)), "fsdp2 engine only"),
    (lambda F: F(reduce_dtype="bf16"), "reduce dtype must be fp32 or none"),
    (lambda F: F(replicate_degree=0), "whole number from 1"),
    (lambda F: F(replicate_degree=4).shard_size(6), "HSDP's replicate degree 4 must divide the 6 GPUs"),
    (lambda F: F(reshard_after_forward="yes"), "true or false"),
    (lambda F: F.from_dict({"prefetch": 2}), "unknown FSDP2 setting"),
    (lambda F: TrainSpec(method=Method.QLORA, parallelism=Parallelism.fsdp2(F(cpu_offload=True))), "QLoRA with FSDP2"),
    (lambda F: TrainSpec(method=Method.QLORA, precision=Precision.BF16, parallelism=Parallelism.fsdp2()),
     "QLoRA with FSDP2"),
])
def test_fsdp2_settings_are_validated_in_one_place(make, message):
    from planner.specs import FsdpConfig

    with pytest.raises(PlannerError, match=message):
        make(FsdpConfig)


def test_fsdp2_estimates_its_own_division_of_states():
    from planner import catalog
    from planner.estimate.core import estimate
    from planner.models import load_model
    from planner.specs import Cluster

    model = load_model("llama-3.2-1b")
    cluster = Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=8)
    fsdp = estimate(model, TrainSpec(seq_len=512, parallelism=Parallelism.fsdp2()), cluster)
    ddp = estimate(model, TrainSpec(seq_len=512), cluster)
    # fp32 sharded parameters (1/8 each) against DDP's bf16 weights on every rank
    assert fsdp.per_gpu.params_bytes < ddp.per_gpu.params_bytes / 3
    assert fsdp.phases["optimizer_step"].optimizer_states_bytes < ddp.phases["optimizer_step"].optimizer_states_bytes
    assert any("FSDP2" in n for n in fsdp.notes)
