"""FSDP2 reaching the user (issue 18 item 5): the engine flags read into the spec, the table's FSDP2 rows, the
time model's FSDP2 collectives. Fast: no model runs."""

from __future__ import annotations

import dataclasses

import pytest

from planner.cli import options as o
from planner.errors import PlannerError
from planner.estimate import fsdp2_traffic
from planner.estimate.count.params import count_params, split_params
from planner.models import load_model
from planner.specs import Engine, FsdpConfig, Offload, Parallelism
from planner.units import nbytes


def _spec(**values):
    return o.build_train_spec(o.TrainingFlags(), **values)


def test_engine_flags_make_the_fsdp2_spec():
    t = _spec(engine="fsdp2", reshard=False, fsdp_offload=True, reduce_dtype="bf16")
    assert t.parallelism.engine is Engine.FSDP2
    assert t.parallelism.fsdp_config == FsdpConfig(reshard_after_forward=False, reduce_dtype=None, cpu_offload=True)
    assert _spec(engine="fsdp2").parallelism.fsdp_config == FsdpConfig()  # reshard on, fp32 reduce
    assert _spec(zero=2).parallelism.engine is Engine.DEEPSPEED and _spec().parallelism.engine is Engine.DDP
    assert _spec(engine="deepspeed", zero=3).zero_stage == 3


@pytest.mark.parametrize("values, words", [
    ({"engine": "fsdp2", "zero": 2}, "--zero 2 is DeepSpeed's"),
    ({"engine": "fsdp2", "offload": "optimizer"}, "use --fsdp-offload"),
    ({"engine": "ddp", "reshard": False}, "needs --engine fsdp2"),
    ({"engine": "deepspeed", "zero": 2, "fsdp_offload": True}, "needs --engine fsdp2"),
    ({"engine": "deepspeed"}, "--engine deepspeed needs --zero"),
    ({"engine": "ddp", "zero": 1}, "use --engine deepspeed"),
    ({"engine": "megatron"}, "--engine 'megatron' is not valid"),
    ({"engine": "fsdp2", "reduce_dtype": "fp16"}, "--reduce-dtype 'fp16' is not valid"),
    ({"engine": "fsdp2", "reduce_dtype": "bf16", "precision": "fp32"}, "bf16-mixed only"),
    ({"engine": "fsdp2", "method": "qlora", "fsdp_offload": True}, "QLoRA with FSDP2"),
])
def test_engine_flag_errors_are_one_sentence(values, words):
    with pytest.raises(PlannerError, match=words.replace("(", r"\(")) as info:
        _spec(**values)
    assert str(info.value).count(". ") == 0


def test_profile_refuses_fsdp2_flags_without_the_engine():
    from planner.cli.fsdp_options import check_one_run

    flags = o.TrainingFlags(reshard=False, typed=frozenset({"reshard"}))
    with pytest.raises(PlannerError, match="add --engine fsdp2"):
        check_one_run(flags, o.build_train_spec(flags))
    check_one_run(dataclasses.replace(flags, engine="fsdp2"), o.build_train_spec(flags, engine="fsdp2"))


def test_fsdp2_time_model_counts_its_gathers_and_reduce_scatters():
    """Per micro-batch and rank, ring (N-1)/N of: two bf16 all-gathers of every parameter with resharding (one
    without) and one reduce-scatter of the trainable gradients in fp32 (reduce_dtype) or bf16."""
    model = load_model("llama-3.2-1b")
    counts = count_params(model)
    base = _spec(engine="fsdp2", grad_accum=2)
    split = split_params(counts, base)
    n, ring = 8, 7 / 8
    p16, g32 = nbytes(split.num_params, "bf16"), nbytes(split.num_trainable, "fp32")
    assert fsdp2_traffic.communication_bytes(base, split, n, 2.0) == pytest.approx(2 * ring * (2 * p16 + g32))
    nr = dataclasses.replace(base, parallelism=Parallelism.fsdp2(FsdpConfig(reshard_after_forward=False,
                                                                            reduce_dtype=None)))
    assert fsdp2_traffic.communication_bytes(nr, split, n, 2.0) == pytest.approx(2 * ring * (p16 + p16))
    assert fsdp2_traffic.reduction_bytes(base, split, n, 2.0) == pytest.approx(2 * ring * g32)
    assert fsdp2_traffic.communication_bytes(base, split, 1, 2.0) == 0.0
    assert fsdp2_traffic.host_transfer_bytes(base, split, n, 2.0) == 0.0
    off = dataclasses.replace(base, parallelism=Parallelism.fsdp2(FsdpConfig(cpu_offload=True)))
    assert fsdp2_traffic.host_transfer_bytes(off, split, n, 2.0) == pytest.approx(
        2 * (2 * nbytes(split.num_params, "fp32") / n + g32 / n))


def test_table_has_fsdp2_rows_beside_deepspeed():
    from planner.catalog import gpu
    from planner.cli.estimate_cmd import estimate_rows
    from planner.specs import Cluster

    model = load_model("gpt2")
    flags = o.TrainingFlags(method="full")
    base = o.build_train_spec(flags, model=model)
    rows = estimate_rows(model, Cluster(gpu=gpu("h100-sxm-80gb"), num_gpus=4), base, flags, num_tokens=0)
    engines = [(r.train.parallelism.engine, r.train.parallelism.fsdp_config.reshard_after_forward) for r in rows]
    assert engines[-2:] == [(Engine.FSDP2, True), (Engine.FSDP2, False)]
    assert all(r.throughput is not None for r in rows)
    row = rows[-1].row()
    assert row["engine"] == "fsdp2" and row["fsdp"]["reshard_after_forward"] is False
    assert rows[0].row()["engine"] == "ddp" and "fsdp" not in rows[0].row()
    # --zero fixes DeepSpeed: no FSDP2 rows; --engine fsdp2: only them
    fixed = dataclasses.replace(flags, zero=2)
    assert all(r.train.uses_deepspeed for r in estimate_rows(model, Cluster(gpu=gpu("h100-sxm-80gb"), num_gpus=4),
                                                              o.build_train_spec(fixed, model=model), fixed,
                                                              num_tokens=0))
    only = dataclasses.replace(flags, engine="fsdp2")
    one = estimate_rows(model, Cluster(gpu=gpu("h100-sxm-80gb"), num_gpus=1), o.build_train_spec(only, model=model),
                        only, num_tokens=0)
    assert one and all(r.train.uses_fsdp2 and r.train.offload is Offload.NONE for r in one)


def test_recommend_weighs_fsdp2_against_deepspeed_and_says_why():
    from planner.catalog import gpu
    from planner.cli.fsdp_options import search_space
    from planner.plan.recommend import recommend
    from planner.specs import Cluster, Precision

    model = load_model("qwen2.5-0.5b")
    cluster = Cluster(gpu=gpu("h100-sxm-80gb"), num_gpus=8)
    base = o.build_train_spec(o.TrainingFlags(), model=model)
    space = search_space(o.TrainingFlags(), Precision.BF16_MIXED)
    assert [c.reshard_after_forward for c in space["fsdp_configs"]] == [True, False] and "zero_stages" not in space
    rec = recommend(model, base, cluster, global_batch_size=64, method="full", **space)
    assert any(line.startswith("Engine: ") and "FSDP2" in line and "ZeRO" in line for line in rec.why)
    only = search_space(o.TrainingFlags(engine="fsdp2", reshard=False), Precision.BF16_MIXED)
    assert only["zero_stages"] == ()
    rec = recommend(model, base, cluster, global_batch_size=64, method="full", **only)
    assert rec.plan.train.uses_fsdp2 and not rec.plan.train.parallelism.fsdp_config.reshard_after_forward
    assert not any(line.startswith("Engine: ") for line in rec.why)  # one engine asked: nothing to weigh
    assert search_space(o.TrainingFlags(zero=2), Precision.BF16_MIXED) == {}
    assert search_space(o.TrainingFlags(engine="deepspeed"), Precision.BF16_MIXED) == {"zero_stages": (1, 2, 3)}


def test_the_bundle_writes_accelerate_fsdp2_as_the_alternative_launch():
    from planner.catalog import gpu
    from planner.emit.accelerate_config import accelerate_config, render_accelerate_yaml
    from planner.specs import Cluster

    train = _spec(engine="fsdp2", reshard=False)
    cluster = Cluster(gpu=gpu("h100-sxm-80gb"), num_gpus=2)
    cfg = accelerate_config(train, cluster)
    assert cfg["distributed_type"] == "FSDP" and cfg["mixed_precision"] == "bf16"
    assert cfg["fsdp_config"]["fsdp_version"] == 2 and cfg["fsdp_config"]["fsdp_reshard_after_forward"] is False
    assert cfg["fsdp_config"]["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "ALTERNATIVE launch" in render_accelerate_yaml(train, cluster)


def test_from_reads_fsdp2_from_accelerate_trainingarguments_and_torchtune(tmp_path):
    from planner.from_config import read_training_config

    acc = tmp_path / "fsdp2.yaml"
    acc.write_text("distributed_type: FSDP\nnum_processes: 4\nnum_machines: 1\nmixed_precision: bf16\nfsdp_config:\n"
                   "  fsdp_version: 2\n  fsdp_reshard_after_forward: false\n  fsdp_offload_params: true\n"
                   "  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n")
    hf = tmp_path / "sft.yaml"
    hf.write_text("model_name_or_path: Qwen/Qwen2.5-0.5B\ntorch_dtype: bfloat16\nper_device_train_batch_size: 2\nbf16: true\n"
                  "optim: adamw_torch\n")
    got = read_training_config(hf, accelerate_config=acc)
    assert got.train.uses_fsdp2 and got.num_gpus == 4
    assert got.train.parallelism.fsdp_config == FsdpConfig(reshard_after_forward=False, reduce_dtype=None,
                                                           cpu_offload=True)
    assert got.train.precision.value == "bf16-mixed" and any("upcasts trainable" in n for n in got.notes)
    hf.write_text("model_name_or_path: Qwen/Qwen2.5-0.5B\ntorch_dtype: bfloat16\nbf16: true\nfsdp: shard_grad_op auto_wrap\n"
                  "fsdp_config:\n  fsdp_version: 2\n")
    got = read_training_config(hf)
    assert got.train.uses_fsdp2 and not got.train.parallelism.fsdp_config.reshard_after_forward
    hf.write_text("model_name_or_path: Qwen/Qwen2.5-0.5B\ntorch_dtype: bfloat16\nfsdp: full_shard\nfsdp_config:\n  version: 1\n")
    with pytest.raises(PlannerError, match="FSDP1"):
        read_training_config(hf)
    acc.write_text("distributed_type: FSDP\nnum_processes: 4\nfsdp_config:\n  fsdp_version: 1\n")
    with pytest.raises(PlannerError, match="FSDP1"):
        read_training_config(tmp_path / "sft.yaml", accelerate_config=acc)
    tt = tmp_path / "tt.yaml"
    tt.write_text("model:\n  _component_: torchtune.models.llama3_2.lora_llama3_2_1b\n  lora_attn_modules: [q_proj]\n"
                  "loss:\n  _component_: torch.nn.CrossEntropyLoss\noptimizer:\n  _component_: torch.optim.AdamW\n"
                  "batch_size: 1\ndtype: bf16\nfsdp_cpu_offload: true\nfsdp_reshard_after_forward: false\n")
    got = read_training_config(tt)
    assert got.train.uses_fsdp2 and got.train.parallelism.fsdp_config == FsdpConfig(
        reshard_after_forward=False, reduce_dtype=None, cpu_offload=True)
    assert got.train.precision.value == "bf16"  # torchtune builds the model in dtype, no policy


def test_estimate_from_an_fsdp2_config_shows_its_fsdp2_row(tmp_path):
    from planner.catalog import gpu
    from planner.cli.estimate_cmd import estimate_rows, table_base
    from planner.from_config import read_training_config
    from planner.specs import Cluster

    tt = tmp_path / "tt.yaml"
    tt.write_text("model:\n  _component_: torchtune.models.llama3_2.lora_llama3_2_1b\n  lora_attn_modules: [q_proj]\n"
                  "loss:\n  _component_: torch.nn.CrossEntropyLoss\noptimizer:\n  _component_: torch.optim.AdamW\n"
                  "batch_size: 1\ndtype: bf16\nfsdp_cpu_offload: false\nfsdp_reshard_after_forward: false\n")
    fc = read_training_config(tt)
    model = load_model(fc.model)
    cluster = Cluster(gpu=gpu("h100-sxm-80gb"), num_gpus=4)

    def rows(**typed):
        flags = dataclasses.replace(o.TrainingFlags(gpus=4), **typed, typed=frozenset(typed) | {"gpus"})
        base, flags = table_base(flags, model, fc)
        return [(r.train.parallelism.engine.value, r.train.zero_stage, r.train.parallelism.fsdp_config)
                for r in estimate_rows(model, cluster, base, flags, num_tokens=0)]

    assert rows() == [("fsdp2", 0, FsdpConfig(reshard_after_forward=False, reduce_dtype=None))]
    assert rows(reshard=True) == [("fsdp2", 0, FsdpConfig(reshard_after_forward=True, reduce_dtype=None))]
    assert [r[:2] for r in rows(engine="deepspeed")] == [("deepspeed", 1), ("deepspeed", 2), ("deepspeed", 3)]
    assert [r[:2] for r in rows(zero=2)] == [("deepspeed", 2)]


def test_reports_and_tables_name_the_engine():
    from planner.cli.engine_cells import offload_cell, zero_cell
    from planner.report.engine_text import layout_words
    from planner.report.engine_text import zero_column as report_zero
    from planner.specs import train_spec_to_dict

    nr = _spec(engine="fsdp2", reshard=False, fsdp_offload=True)
    assert (zero_cell(nr), offload_cell(nr), report_zero(nr)) == ("FSDP2-nr", "cpu", "FSDP2 nr")
    assert layout_words(train_spec_to_dict(nr)) == "FSDP2, no reshard, CPU offload"
    ds = _spec(zero=3, offload="optimizer")
    assert (zero_cell(ds), offload_cell(ds), report_zero(ds)) == ("3", "optimizer", "3")
    assert layout_words(train_spec_to_dict(ds)) == "ZeRO-3, offload optimizer"
    assert nr.parallelism.label == "FSDP2, no reshard, CPU offload"


def test_recommend_out_writes_an_fsdp2_bundle_launched_by_torchrun(tmp_path):
    from planner.from_config import read_training_config
    from tests.cli_harness import run_inprocess

    res = run_inprocess(["recommend", "-m", "gpt2", "-s", "512", "-g", "8", "--gpus", "2", "--engine", "fsdp2",
                         "--no-reshard", "--out", str(tmp_path / "c")])
    assert res.code == 0, res.stderr
    launch = (tmp_path / "c" / "launch.sh").read_text()
    assert "-m torch.distributed.run --nproc_per_node 2" in launch and "train.py --engine fsdp2" in launch
    back = read_training_config(tmp_path / "c")  # PLAN's fsdp wins over the accelerate config beside it
    assert back.train.uses_fsdp2 and back.train.parallelism.fsdp_config.reshard_after_forward is False
    assert back.train.parallelism.fsdp_config.reduce_dtype == "fp32" and back.num_gpus == 2


def test_compare_gpus_searches_fsdp2_with_its_engine_flag():
    """--compare-gpus --engine fsdp2 searches FSDP2's layouts (resharding on and off) in place of DeepSpeed's;
    --hsdp is refused there (the GPU counts searched start at 1). The search itself: tests/test_compare_gpus_fsdp2.py."""
    from tests.cli_harness import run_inprocess

    res = run_inprocess(["estimate", "-m", "gpt2", "-s", "512", "--compare-gpus", "--engine", "fsdp2", "--method",
                         "lora", "--json"])
    assert res.code == 0, res.stderr
    import json

    rows = json.loads(res.stdout)["rows"]
    assert rows and all(r["engine"] == "fsdp2" and r["fsdp"] for r in rows if r["fits"])
    res = run_inprocess(["estimate", "-m", "gpt2", "--compare-gpus", "--engine", "fsdp2", "--hsdp", "2"])
    assert res.code == 1 and "drop --hsdp" in res.stderr
