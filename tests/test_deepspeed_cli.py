"""--deepspeed-config (issue 17 item 1): a user's DeepSpeed JSON sets the stage, offload, precision, optimizer and
DeepSpeed's buckets and thresholds of the run estimated, recommended, profiled and reported; what planner does
not model is a note, what it cannot represent a one-sentence refusal; the emitted ds_config.json round-trips."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from cli_harness import run_inprocess

from planner import catalog
from planner.cli import deepspeed_options as dso
from planner.cli import options as o
from planner.emit.ds_config import deepspeed_config
from planner.errors import PlannerError
from planner.estimate.core import estimate
from planner.estimate.sharding import zero3_sub_groups
from planner.estimate.temporaries import deepspeed_bucket_bytes
from planner.models import load_model
from planner.specs import Cluster, Method, Offload, Parallelism, TrainSpec, ZeroConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "deepspeed"
H100 = catalog.gpu("h100-sxm-80gb")


def _write(tmp_path, config: dict, name: str = "ds.json"):
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def test_llamafactory_zero3_config_keeps_auto_and_its_stage():
    """LLaMA-Factory's ds_z3_config.json: stage 3, overlap_comm true, the three "auto" buckets left to the Trainer's
    rule, sub_group_size and the ZeRO-3 limits at 1e9 as written."""
    choice = dso.read_choice(EXAMPLES / "llamafactory_ds_z3_config.json")
    assert (choice.stage, choice.offload, choice.precision, choice.optimizer) == (3, Offload.NONE, None, None)
    assert choice.zero_config == ZeroConfig(overlap_comm=True)  # auto, auto, auto; 1e9 is DeepSpeed's default


def test_deepspeed_tutorial_zero_infinity_config_offloads_both_with_its_buckets():
    """The ZeRO tutorial's ZeRO-Infinity config (deepspeed.ai/tutorials/zero): stage 3, optimizer and parameters
    on the CPU (pin_memory absent: DeepSpeed 0.19's default, true: offload_config.py), 1e7-element reduce and
    prefetch buckets and a 1e5 persistence threshold as written; no precision section (the Trainer's bf16 flag
    decides)."""
    choice = dso.read_choice(EXAMPLES / "deepspeed_tutorial_zero_infinity_offload.json")
    assert (choice.stage, choice.offload, choice.precision, choice.optimizer) == (3, Offload.OPTIMIZER_PARAMS, None,
                                                                                  None)
    assert choice.zero_config == ZeroConfig(reduce_bucket_size=10_000_000, stage3_prefetch_bucket_size=10_000_000,
                                            stage3_param_persistence_threshold=100_000)


def test_unpinned_offload_is_noted(tmp_path):
    """pin_memory false: DeepSpeed allocates pageable host buffers, planner's host figure assumes pinned ones."""
    path = _write(tmp_path, {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu",
                                                                                      "pin_memory": False}}})
    assert any("pin_memory false" in n for n in dso.read_choice(path).notes)
    assert not any("pin_memory" in n for n in dso.read_choice(EXAMPLES / "llamafactory_ds_z3_offload_config.json").notes)


def test_axolotl_zero3_config_reads_its_sub_groups_and_reuse_distance():
    choice = dso.read_choice(EXAMPLES / "axolotl_zero3_bf16.json")
    assert (choice.stage, choice.precision) == (3, "bf16-mixed")
    assert choice.zero_config == ZeroConfig(sub_group_size=0, stage3_max_reuse_distance=0, overlap_comm=True)
    assert any("stage3_max_live_parameters = 0 is not modelled" in n for n in choice.notes)


def test_absent_buckets_are_deepspeeds_own_defaults(tmp_path):
    """A config that leaves the buckets out gets DeepSpeed's defaults (deepspeed/runtime/zero/config.py: reduce
    5e8, prefetch 5e7, persistence 1e5), not the Trainer's "auto" rule, which fills only keys that say auto."""
    choice = dso.read_choice(_write(tmp_path, {"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}))
    assert choice.zero_config == ZeroConfig(reduce_bucket_size=500_000_000, stage3_prefetch_bucket_size=50_000_000,
                                            stage3_param_persistence_threshold=100_000)
    assert choice.precision == "bf16-mixed"


@pytest.mark.parametrize(("config", "words"), [
    ({"zero_optimization": {"stage": 2, "contiguous_gradients": False}}, "contiguous_gradients false at ZeRO stage 1 or 2"),
    ({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme", "nvme_path": "/x"}}}, "NVMe"),
    ({"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}}, "without the optimizer"),
    ({"zero_optimization": {"stage": 2}, "optimizer": {"type": "Lamb"}}, "'lamb' is not modelled"),
])
def test_what_planner_cannot_represent_is_refused(tmp_path, config, words):
    with pytest.raises(PlannerError, match=words):
        dso.read_choice(_write(tmp_path, config))


def test_unknown_keys_are_noted_never_ignored(tmp_path):
    choice = dso.read_choice(_write(tmp_path, {"zero_optimization": {"stage": 1, "not_a_key": 3}, "made_up": 1}))
    assert any("not_a_key" in n for n in choice.notes) and any("made_up" in n for n in choice.notes)


def test_typed_flags_win_over_the_file(tmp_path):
    path = _write(tmp_path, {"zero_optimization": {"stage": 3, "reduce_bucket_size": 1000}, "bf16": {"enabled": True},
                             "optimizer": {"type": "AdamW", "params": {"lr": "auto"}}})
    flags = dso.apply(o.TrainingFlags(deepspeed_config=path, zero=2, precision="fp16-mixed", optimizer="adamw",
                                      typed=frozenset({"zero", "precision", "optimizer"})))
    assert (flags.zero, flags.precision, flags.optimizer) == (2, "fp16-mixed", "adamw")
    assert flags.zero_config.reduce_bucket_size == 1000
    untyped = dso.apply(o.TrainingFlags(deepspeed_config=path))
    assert (untyped.zero, untyped.precision, untyped.optimizer) == (3, "bf16-mixed", "adamw-fused")


def test_the_emitted_ds_config_round_trips(tmp_path):
    """recommend's ds_config.json, read back by --deepspeed-config, gives the estimate of the run it was written
    for, at every stage and offload, with a non-default bucket set too."""
    model = load_model("llama-3.2-1b")
    cluster = Cluster(gpu=H100, num_gpus=8)
    custom = ZeroConfig(reduce_bucket_size=12_345_678, stage3_prefetch_bucket_size=1_000_000, sub_group_size=4096,
                        stage3_param_persistence_threshold=0, stage3_max_reuse_distance=10_000_000, overlap_comm=True)
    for zero_config in (ZeroConfig(), custom):
        for stage, offload in ((1, Offload.NONE), (2, Offload.OPTIMIZER), (3, Offload.NONE),
                               (3, Offload.OPTIMIZER_PARAMS)):
            train = TrainSpec(method=Method.LORA, seq_len=1024,
                              parallelism=Parallelism.from_zero(stage, offload, zero_config))
            path = _write(tmp_path, deepspeed_config(model, train, cluster), f"ds-{stage}-{offload.value}.json")
            flags = dso.apply(o.TrainingFlags(deepspeed_config=path, method="lora", seq_len=1024))
            back = o.build_train_spec(flags, model=model)
            assert back.parallelism.zero_stage == stage and back.offload is offload
            # the file holds numbers where the spec said "auto": the same run, so the same estimate
            assert dataclasses.replace(estimate(model, back, cluster), train=train) == estimate(model, train, cluster)


def test_overlap_comm_doubles_the_zero2_bucket():
    """stage_1_and_2.py setup_buckets: a second reduce_bucket_size buffer with overlap_comm ("double buffers")."""
    base = TrainSpec(parallelism=Parallelism.from_zero(2, zero_config=ZeroConfig(reduce_bucket_size=1000)))
    overlap = TrainSpec(parallelism=Parallelism.from_zero(
        2, zero_config=ZeroConfig(reduce_bucket_size=1000, overlap_comm=True)))
    assert deepspeed_bucket_bytes(base, 4096, 2) == 2000
    assert deepspeed_bucket_bytes(overlap, 4096, 2) == 4000


def test_sub_groups_follow_deepspeeds_grouping():
    """stage3.py _create_fp16_sub_groups: per-parameter partitions of ceil(numel / ranks), a sub-group closing
    once it reaches sub_group_size; 0 makes one per parameter; a size over the whole makes one."""
    numels = (10, 7, 3, 9)  # partitions on 2 ranks: 5, 4, 2, 5
    assert zero3_sub_groups(numels, 2, 0) == (5, 4, 2, 5)
    assert zero3_sub_groups(numels, 2, 6) == (9, 7)
    assert zero3_sub_groups(numels, 2, 9) == (9, 7)
    assert zero3_sub_groups(numels, 2, 16) == (16,)
    assert zero3_sub_groups(numels, 2, 10) == (11, 5)


def test_buckets_need_deepspeed():
    with pytest.raises(PlannerError, match="plain data parallelism"):
        Parallelism(zero_config=ZeroConfig(reduce_bucket_size=10))
    assert Parallelism.from_zero(0, zero_config=ZeroConfig(reduce_bucket_size=10)).zero_config == ZeroConfig()


def test_cli_estimate_reads_the_file_and_says_what_it_did_not_model(tmp_path):
    path = _write(tmp_path, {"zero_optimization": {"stage": 2, "round_robin_gradients": True}, "bf16": {"enabled": True}})
    result = run_inprocess(["estimate", "-m", "llama-3.2-1b", "--gpus", "8", "--deepspeed-config", str(path), "--json"])
    assert result.code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert {r["zero_stage"] for r in payload["rows"]} == {2}
    assert payload["deepspeed_config"]["zero_config"]["reduce_bucket_size"] == 500_000_000
    assert any("round_robin_gradients" in n for n in payload["deepspeed_config"]["notes"])
    missing = run_inprocess(["estimate", "-m", "llama-3.2-1b", "--deepspeed-config", str(tmp_path / "nope.json")])
    assert missing.code == 1 and "cannot read --deepspeed-config" in missing.stderr


def test_contiguous_gradients_false_with_offload_at_stage_2_is_noted(tmp_path):
    """deepspeed 0.19.8 stage_1_and_2.py: ``contiguous_gradients or self.cpu_offload``; the key is not dropped
    silently (issue 17 item 1)."""
    choice = dso.read_choice(_write(tmp_path, {"zero_optimization": {
        "stage": 2, "contiguous_gradients": False, "offload_optimizer": {"device": "cpu"}}}))
    assert choice.zero_config.contiguous_gradients
    assert any("contiguous_gradients false has no effect" in n for n in choice.notes)
