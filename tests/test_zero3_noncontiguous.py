"""DeepSpeed ZeRO-3 with ``contiguous_gradients: false`` (issue 17 item 2): read from a --deepspeed-config, written
back by the bundle and the profiler, refused at stages 1-2 (where DeepSpeed reduces each gradient in place, not
modelled) unless offload turns it on again, and estimated as stage3.py runs it: no bucket buffer, each gradient
in its own tensor until its bucket is reduced (estimate/step/tape.py ``_hold_in_bucket``)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from planner import catalog
from planner.cli import deepspeed_options as dso
from planner.emit.ds_config import deepspeed_config
from planner.errors import PlannerError
from planner.estimate.core import estimate
from planner.specs import Cluster, Offload, Parallelism, ZeroConfig
from planner.validate.ds_contiguous_cells import DS_CONTIGUOUS_CELLS

CLUSTER = Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=2)


def _write(tmp_path, zero: dict):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": zero, "bf16": {"enabled": True}}))
    return path


def test_the_flag_is_read_at_stage_3_and_refused_at_stage_2_unless_offloaded(tmp_path):
    choice = dso.read_choice(_write(tmp_path, {"stage": 3, "contiguous_gradients": False}))
    assert choice.zero_config.contiguous_gradients is False
    with pytest.raises(PlannerError, match="contiguous_gradients false at ZeRO stage 1 or 2"):
        dso.read_choice(_write(tmp_path, {"stage": 2, "contiguous_gradients": False}))
    # stage_1_and_2.py: contiguous_gradients or cpu_offload
    offloaded = dso.read_choice(_write(tmp_path, {"stage": 2, "contiguous_gradients": False,
                                                  "offload_optimizer": {"device": "cpu"}}))
    assert offloaded.zero_config.contiguous_gradients is True and offloaded.offload is Offload.OPTIMIZER
    with pytest.raises(PlannerError, match="stage 3 only"):
        Parallelism.from_zero(2, zero_config=ZeroConfig(contiguous_gradients=False))


def test_the_dict_names_it_only_when_off():
    """Cells and bundles written before the field keep their JSON (validation cells are named by it)."""
    assert "contiguous_gradients" not in ZeroConfig().to_dict()
    off = ZeroConfig(contiguous_gradients=False)
    assert ZeroConfig.from_dict(off.to_dict()) == off
    with pytest.raises(PlannerError, match="true or false"):
        ZeroConfig(contiguous_gradients="no")


def test_the_bundle_writes_it_and_reads_it_back(tmp_path):
    cell = DS_CONTIGUOUS_CELLS[0]
    cfg = deepspeed_config(cell.model_spec(), cell.train_spec(), CLUSTER)
    assert cfg["zero_optimization"]["contiguous_gradients"] is False
    path = tmp_path / "emitted.json"
    path.write_text(json.dumps(cfg))
    assert dso.read_choice(path).zero_config.contiguous_gradients is False


def test_gradients_wait_in_their_own_tensors_instead_of_a_bucket():
    """Under a bucket larger than the model, every 16-bit gradient is still alive after backward (grads), beside the
    two flat copies gloo's reduction makes on CPU; with contiguous gradients the 5e8-element buffer is there instead."""
    cell = DS_CONTIGUOUS_CELLS[1]
    train = cell.train_spec()
    off = estimate(cell.model_spec(), train, CLUSTER, device="cpu", rank=0)
    on_config = dataclasses.replace(train.parallelism.zero_config, contiguous_gradients=True)
    on = estimate(cell.model_spec(), dataclasses.replace(
        train, parallelism=dataclasses.replace(train.parallelism, zero_config=on_config)), CLUSTER, device="cpu", rank=0)
    model_16bit = 2 * off.num_trainable_params
    assert off.peak_phase == "backward" and off.per_gpu.activations_bytes == 0
    assert off.per_gpu.grads_bytes == on.per_gpu.grads_bytes + model_16bit
    # the two flat copies and the gathered embedding (vocab 1000 x hidden 96, bf16); a few bytes of loss scalars
    assert 0 <= off.per_gpu.temporaries_bytes - 2 * model_16bit - 2 * 1000 * 96 < 64
    assert on.phases["optimizer_step"].temporaries_bytes - off.phases["optimizer_step"].temporaries_bytes == 10**9


def test_small_buckets_are_reduced_during_backward():
    """With the "auto" h*h bucket the gradients are reduced as backward goes: far fewer wait than the model has."""
    cell = DS_CONTIGUOUS_CELLS[0]
    est = estimate(cell.model_spec(), cell.train_spec(), CLUSTER, device="cpu", rank=0)
    assert est.phases["backward"].grads_bytes - est.phases["optimizer_step"].grads_bytes < est.num_trainable_params
