"""write_bundle: the bundle appears atomically and never clobbers a directory planner did not write."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from planner.emit import MARKER, write_bundle
from planner.errors import PlannerError
from planner.plan.types import Recommendation
from planner.specs import Plan
from tests.bundle_helpers import tiny_plan


def _recommendation(plan: Plan, est) -> Recommendation:
    return Recommendation(plan=plan, estimate=est, why=("test",), runners_up=(), rejected=(), margin=0.1, mfu=0.4,
                          num_tokens=0, price_per_gpu_hour=0.0, num_estimates=1)


def _plan_object(**kwargs):
    model, train, cluster, est, gbs = tiny_plan(**kwargs)
    return Plan(model, train, cluster, gbs), est


def test_write_bundle_new_directory(tmp_path):
    plan, est = _plan_object(zero=2, num_gpus=2)
    written = write_bundle(plan, tmp_path / "a" / "b", estimate=est)
    assert [p.name for p in written] == sorted(
        ["PLAN.md", "accelerate_config.yaml", "ds_config.json", "launch.sh", "model_config.json", "sample.jsonl",
         "train.py"]
    )  # fmt: skip
    recorded = json.loads((tmp_path / "a" / "b" / MARKER).read_text())["files"]
    assert recorded == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in written}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b"]  # no staging directory left behind


def test_write_bundle_refuses_a_foreign_non_empty_directory(tmp_path):
    plan, est = _plan_object()
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    (target / "train.py").write_text("# my own script\n")
    with pytest.raises(PlannerError, match="not empty.*--force"):
        write_bundle(plan, target, estimate=est)
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt", "train.py"]
    assert (target / "train.py").read_text() == "# my own script\n"
    write_bundle(plan, target, estimate=est, force=True)
    assert (target / "notes.txt").read_text() == "keep me"  # force replaces bundle names only
    assert "PLAN = " in (target / "train.py").read_text()


def test_write_bundle_into_an_empty_directory_and_over_its_own_bundle(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    plan, est = _plan_object(zero=3, num_gpus=2)
    write_bundle(plan, target, estimate=est)
    assert (target / "ds_config.json").exists()
    (target / "output").mkdir()  # a training run's output beside the bundle
    plan, est = _plan_object(zero=0, num_gpus=1)
    write_bundle(plan, target, estimate=est)  # planner's own bundle: no --force needed
    assert not (target / "ds_config.json").exists()  # stale file of the previous plan removed
    assert (target / "output").is_dir()
    assert yaml.safe_load((target / "accelerate_config.yaml").read_text())["distributed_type"] == "NO"


def test_write_bundle_errors_are_sentences(tmp_path):
    plan, est = _plan_object()
    (tmp_path / "file").write_text("x")
    with pytest.raises(PlannerError, match="is a file"):
        write_bundle(plan, tmp_path / "file", estimate=est)
    with pytest.raises(PlannerError, match="empty path"):
        write_bundle(plan, "  ", estimate=est)
    with pytest.raises(PlannerError, match="estimate"):
        write_bundle(plan, tmp_path / "x")


def test_write_bundle_failure_leaves_nothing(tmp_path, monkeypatch):
    import planner.emit.bundle as bundle_module

    plan, est = _plan_object()

    def broken_rename(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle_module.os, "rename", broken_rename)
    with pytest.raises(PlannerError, match="No space left"):
        write_bundle(plan, tmp_path / "new", estimate=est)
    assert list(tmp_path.iterdir()) == []


def test_write_bundle_parent_not_creatable(tmp_path):
    plan, est = _plan_object()
    (tmp_path / "file").write_text("x")
    with pytest.raises(PlannerError, match="cannot create --out directory"):
        write_bundle(plan, tmp_path / "file" / "sub" / "bundle", estimate=est)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_write_bundle_takes_a_recommendation(tmp_path):
    plan, est = _plan_object(method="lora", zero=2, num_gpus=2)
    written = write_bundle(_recommendation(plan, est), tmp_path / "rec")
    assert {p.name for p in written} >= {"ds_config.json", "launch.sh", "train.py"}
    assert json.loads((tmp_path / "rec" / "ds_config.json").read_text())["zero_optimization"]["stage"] == 2
