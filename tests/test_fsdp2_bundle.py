"""The FSDP2 bundle run end to end (issue 18 item 5): the bundle of an FSDP2 plan (the first FSDP2 validation cell's
shape), its own train.py under torchrun on two CPU ranks over gloo, recorded by `planner profile --from BUNDLE --
torchrun ...`, within the issue-5 bounds of its own estimate (train.py's plain loop wraps the model as the estimate
models it: fully_shard per decoder layer, then the root)."""

from __future__ import annotations

import json

import pytest

from planner import catalog
from planner.emit import write_bundle
from planner.estimate.core import estimate
from planner.specs import Cluster, Plan
from planner.validate.fsdp2_cells import FSDP2_CELLS
from tests.test_profile_command import _free_port, _small_dataset, _tail, check_within_bounds, planner


@pytest.mark.slow
def test_fsdp2_bundle_runs_under_torchrun_within_its_estimate(tmp_path):
    cell = FSDP2_CELLS[0]  # llama, full, bf16-mixed: fp32 shards, bf16 gathers, fp32 reduce; resharding on
    model, train = cell.model_spec(), cell.train_spec()
    cluster = Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=2)
    plan = Plan(model=model, train=train, cluster=cluster, global_batch_size=train.micro_batch * 2)
    bundle = tmp_path / "bundle"
    write_bundle(plan, bundle, estimate=estimate(model, train, cluster))
    data = _small_dataset(tmp_path / "small.jsonl")
    proc = planner("profile", "--from", str(bundle), "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "prof"),
                   "--", "torchrun", "--nproc_per_node", "2", "--master_port", str(_free_port()),
                   str(bundle / "train.py"), "--cpu", "--random-init", str(bundle / "model_config.json"),
                   "--tokenizer", "bytes", "--dataset", str(data), "--max-steps", "3", "--no-save",
                   "--output-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 0, _tail(proc)
    summary = json.loads((tmp_path / "prof" / "summary.json").read_text())
    assert [r["steps_completed"] for r in summary["ranks"]] == [2, 2]
    check_within_bounds(tmp_path / "prof", 2, tmp_path)
