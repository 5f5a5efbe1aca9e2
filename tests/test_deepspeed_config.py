"""planner.deepspeed_config: real DeepSpeed JSON read as DeepSpeed 0.19.8 under the HF Trainer reads it.

The examples under examples/deepspeed/ (SOURCES.md) parse to hand-written expectations; the defaults match
DeepSpeed's pydantic models instantiated empty; "auto" matches transformers' HfTrainerDeepSpeedConfig fed the
same dict; every key lands in exactly one class; bad values are refused naming the key; planner's own
ds_config.json round-trips. The DeepSpeed and transformers comparisons skip, test by test, without them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from planner.deepspeed_config import (
    BF16_DEFAULTS,
    DEEPSPEED_OPTIMIZERS,
    FP16_DEFAULTS,
    GRADIENT_CLIPPING_DEFAULT,
    OFFLOAD_OPTIMIZER_DEFAULTS,
    OFFLOAD_PARAM_DEFAULTS,
    ZERO_BOOL_FIELDS,
    ZERO_FIELD_NAMES,
    ZERO_FORCE_DS_CPU_OPTIMIZER_DEFAULT,
    ZERO_INT_FIELDS,
    ZERO_NOTED,
    ZERO_STAGE_DEFAULT,
    ZERO_UNSUPPORTED,
    DeepSpeedSettings,
    Fp16LossScaling,
    OffloadDevice,
    OffloadOptimizer,
    OffloadParam,
    read_deepspeed_config,
)
from planner.emit import deepspeed_config
from planner.errors import PlannerError
from tests.bundle_helpers import TINY_LLAMA, tiny_plan

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "deepspeed"
H = 4096  # a Llama-7B/8B hidden size: the "auto" buckets are h*h = 16,777,216, 0.9*h*h and 10*h
H2, H2_90, H10 = 16_777_216, 15_099_494, 40_960  # int(0.9 * 4096 * 4096) = int(15099494.4)
DS_BUCKET = 500_000_000  # DeepSpeedZeroConfig.reduce_bucket_size / allgather_bucket_size default, 5e8
BATCH_AUTO = ("gradient_accumulation_steps", "gradient_clipping", "train_batch_size",
              "train_micro_batch_size_per_gpu")
NO_OFFLOAD_OPT, NO_OFFLOAD_PARAM = OffloadOptimizer(), OffloadParam()
CPU_OPT = OffloadOptimizer(device=OffloadDevice.CPU, pin_memory=True)
CPU_PARAM = OffloadParam(device=OffloadDevice.CPU, pin_memory=True)
LF_FP16 = Fp16LossScaling(0.0, 16, 1000, 2, False, 1)  # LLaMA-Factory's fp16 section (DeepSpeed's defaults)
AXOLOTL_FP16 = Fp16LossScaling(0.0, 32, 1000, 2, False, 1)  # axolotl's: initial_scale_power 32

# Hand-written: what each shipped file means with h = 4096 (read the JSON next to SOURCES.md).
EXPECTED: dict[str, dict] = {
    "llamafactory_ds_z0_config.json": dict(
        zero_stage=0, reduce_bucket_size=DS_BUCKET, allgather_bucket_size=DS_BUCKET, overlap_comm=False,
        round_robin_gradients=True, contiguous_gradients=True, reduce_scatter=True, allgather_partitions=True,
        offload_optimizer=NO_OFFLOAD_OPT, offload_param=NO_OFFLOAD_PARAM, bf16_enabled=None, fp16_enabled=None,
        fp16_loss_scaling=LF_FP16, optimizer_type=None, stage3_gather_16bit_weights_on_model_save=False,
        from_trainer=("bf16.enabled", "fp16.enabled", *BATCH_AUTO), unknown_keys=(), unsupported_keys=()),
    "llamafactory_ds_z2_config.json": dict(
        zero_stage=2, reduce_bucket_size=DS_BUCKET, allgather_bucket_size=DS_BUCKET, overlap_comm=True,
        round_robin_gradients=True, offload_optimizer=NO_OFFLOAD_OPT, bf16_enabled=None, fp16_enabled=None,
        fp16_loss_scaling=LF_FP16, from_trainer=("bf16.enabled", "fp16.enabled", *BATCH_AUTO), unknown_keys=()),
    "llamafactory_ds_z3_config.json": dict(
        zero_stage=3, reduce_bucket_size=H2, stage3_prefetch_bucket_size=H2_90,
        stage3_param_persistence_threshold=H10, stage3_max_live_parameters=10**9, stage3_max_reuse_distance=10**9,
        sub_group_size=10**9, overlap_comm=True, contiguous_gradients=True, allgather_bucket_size=DS_BUCKET,
        stage3_gather_16bit_weights_on_model_save=True, offload_optimizer=NO_OFFLOAD_OPT,
        offload_param=NO_OFFLOAD_PARAM, round_robin_gradients=False, unknown_keys=()),
    "llamafactory_ds_z3_offload_config.json": dict(
        zero_stage=3, reduce_bucket_size=H2, stage3_prefetch_bucket_size=H2_90,
        stage3_param_persistence_threshold=H10, overlap_comm=False, sub_group_size=10**9,
        offload_optimizer=CPU_OPT, offload_param=CPU_PARAM, stage3_gather_16bit_weights_on_model_save=True),
    # DeepSpeed's ZeRO tutorial, ZeRO-Infinity: numbers written out, pin_memory absent (DeepSpeed's default true)
    "deepspeed_tutorial_zero_infinity_offload.json": dict(
        zero_stage=3, contiguous_gradients=True, stage3_max_live_parameters=10**9, stage3_max_reuse_distance=10**9,
        stage3_prefetch_bucket_size=10**7, stage3_param_persistence_threshold=10**5, reduce_bucket_size=10**7,
        sub_group_size=10**9, offload_optimizer=OffloadOptimizer(device=OffloadDevice.CPU),
        offload_param=OffloadParam(device=OffloadDevice.CPU), unknown_keys=(), unsupported_keys=()),
    "axolotl_zero1.json": dict(
        zero_stage=1, overlap_comm=True, reduce_bucket_size=DS_BUCKET, allgather_bucket_size=DS_BUCKET,
        contiguous_gradients=True, round_robin_gradients=False, offload_optimizer=NO_OFFLOAD_OPT,
        fp16_loss_scaling=AXOLOTL_FP16, bf16_enabled=None, fp16_enabled=None, gradient_clipping=None,
        noted_keys=("fp16.auto_cast", "wall_clock_breakdown"), unknown_keys=(), unsupported_keys=()),
    "axolotl_zero2.json": dict(
        zero_stage=2, overlap_comm=True, reduce_bucket_size=DS_BUCKET, allgather_bucket_size=DS_BUCKET,
        offload_optimizer=OffloadOptimizer(device=OffloadDevice.CPU), fp16_loss_scaling=AXOLOTL_FP16),
    "axolotl_zero3_bf16.json": dict(
        zero_stage=3, sub_group_size=0, stage3_max_live_parameters=0, stage3_max_reuse_distance=0,
        reduce_bucket_size=H2, stage3_prefetch_bucket_size=H2_90, stage3_param_persistence_threshold=H10,
        bf16_enabled=True, fp16_enabled=False, overlap_comm=True, stage3_gather_16bit_weights_on_model_save=True,
        offload_optimizer=NO_OFFLOAD_OPT, from_trainer=BATCH_AUTO),
    "axolotl_zero3_bf16_cpuoffload_all.json": dict(
        zero_stage=3, sub_group_size=0, stage3_max_live_parameters=0, offload_optimizer=CPU_OPT,
        offload_param=CPU_PARAM, zero_force_ds_cpu_optimizer=False, bf16_enabled=True, overlap_comm=True,
        noted_keys=("wall_clock_breakdown", "zero_allow_untested_optimizer")),
    "transformers_ds_config_zero3.json": dict(
        zero_stage=3, sub_group_size=10**14, offload_optimizer=CPU_OPT, offload_param=CPU_PARAM,
        stage3_gather_16bit_weights_on_model_save=True,  # from the deprecated ..._fp16_weights_... key
        optimizer_type="adamw", optimizer_params=(("betas", None), ("eps", None), ("lr", None),
                                                  ("weight_decay", None)),
        bf16_enabled=False, fp16_enabled=None, unknown_keys=(), unsupported_keys=(),
        noted_keys=("scheduler", "steps_per_print", "wall_clock_breakdown")),
    "deepspeedexamples_autotp_ds_config.json": dict(
        zero_stage=2, stage3_gather_16bit_weights_on_model_save=True, overlap_comm=False,
        reduce_bucket_size=DS_BUCKET, optimizer_type="adamw", unsupported_keys=("tensor_parallel",),
        unknown_keys=()),
}


def read_example(name: str, hidden_size: int | None = H) -> DeepSpeedSettings:
    return read_deepspeed_config(EXAMPLES / name, hidden_size=hidden_size)


def test_every_example_has_a_source_and_an_expectation():
    shipped = {p.name for p in EXAMPLES.glob("*.json")}
    assert shipped == set(EXPECTED)
    sources = (EXAMPLES / "SOURCES.md").read_text()
    assert all(f"`{name}`" in sources for name in shipped)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_parses_to_what_it_says(name):
    settings = read_example(name)
    got = {key: getattr(settings, key) for key in EXPECTED[name]}
    assert got == EXPECTED[name]


def _key_paths(config: dict) -> set[str]:
    """Every key of the file down to the sections planner reads key by key."""
    out = set()
    for key, value in config.items():
        out.add(key)
        if key in ("zero_optimization", "fp16", "bf16", "optimizer") and isinstance(value, dict):
            for sub, subvalue in value.items():
                out.add(f"{key}.{sub}")
                if sub.startswith("offload_") and isinstance(subvalue, dict):
                    out |= {f"{key}.{sub}.{k}" for k in subvalue}
    return out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_key_of_an_example_is_accounted_for_once(name):
    settings = read_example(name)
    classes = [settings.used_keys, settings.noted_keys, settings.unsupported_keys, settings.unknown_keys]
    flat = [k for c in classes for k in c]
    assert len(flat) == len(set(flat)), "a key in two classes"
    config = json.loads((EXAMPLES / name).read_text())
    assert _key_paths(config) == set(flat)


# ---------------------------------------------------------------- DeepSpeed's defaults


@pytest.fixture
def ds():
    """DeepSpeed's config classes, or a skip for this test alone."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime import config as runtime_config
    from deepspeed.runtime import constants, precision_config
    from deepspeed.runtime.zero import config as zero_config
    from deepspeed.runtime.zero import offload_config

    return SimpleNamespace(zero=zero_config, offload=offload_config, precision=precision_config,
                           constants=constants, runtime=runtime_config)


def _ds_field(name: str) -> str:
    """DeepSpeedZeroConfig's field name for a key written under its alias."""
    reverse = {alias: field for field, alias in ZERO_FIELD_NAMES.items()}
    return reverse.get(name, name)


def test_zero_defaults_match_deepspeed(ds):
    empty = read_deepspeed_config({}, hidden_size=None)
    for stage in (0, 1, 2, 3):
        theirs = ds.zero.DeepSpeedZeroConfig(stage=stage)
        ours = read_deepspeed_config({"zero_optimization": {"stage": stage}}, hidden_size=None)
        assert ours.overlap_comm is theirs.overlap_comm is (stage == 3)  # overlap_comm_valid
        for key, (attr, _, _) in ZERO_INT_FIELDS.items():
            assert getattr(ours, attr) == getattr(theirs, _ds_field(key)), key
        for key, (attr, _) in ZERO_BOOL_FIELDS.items():
            assert getattr(ours, attr) == getattr(theirs, _ds_field(key)), key
    theirs = ds.zero.DeepSpeedZeroConfig()
    assert empty.zero_stage == ZERO_STAGE_DEFAULT == theirs.stage
    assert theirs.offload_optimizer is None and empty.offload_optimizer.device is OffloadDevice.NONE
    assert theirs.offload_param is None and empty.offload_param.device is OffloadDevice.NONE
    for key, default in ZERO_UNSUPPORTED.items():  # sub-sections (zenflow, leaf_module): any value is noted
        value = getattr(theirs, _ds_field(key))
        assert default is None if hasattr(value, "model_dump") or value is None else value == default, key


def test_every_deepspeed_zero_field_is_classified(ds):
    """A DeepSpeed upgrade that adds a ZeRO key fails here until the key is sorted into a class."""
    known = (set(ZERO_INT_FIELDS) | set(ZERO_BOOL_FIELDS) | set(ZERO_NOTED) | set(ZERO_UNSUPPORTED)
             | {"stage", "offload_optimizer", "offload_param", "cpu_offload", "cpu_offload_param",
                "stage3_gather_fp16_weights_on_model_save"})
    fields = ds.zero.DeepSpeedZeroConfig.model_fields
    written = {info.alias or name for name, info in fields.items()}
    assert written == known


def test_offload_and_precision_defaults_match_deepspeed(ds):
    for cls, ours_defaults, ours in (
        (ds.offload.DeepSpeedZeroOffloadOptimizerConfig, OFFLOAD_OPTIMIZER_DEFAULTS, OffloadOptimizer()),
        (ds.offload.DeepSpeedZeroOffloadParamConfig, OFFLOAD_PARAM_DEFAULTS, OffloadParam()),
    ):
        theirs = cls().model_dump()
        assert {k: getattr(v, "value", v) for k, v in theirs.items()} == ours_defaults
        for field in dataclasses.fields(ours):  # the dataclass defaults are the same numbers
            value = getattr(ours, field.name)
            assert getattr(value, "value", value) == ours_defaults[field.name], field.name
    assert ds.precision.DeepSpeedFP16Config().model_dump() == FP16_DEFAULTS
    assert ds.precision.DeepSpeedBF16Config().model_dump() == BF16_DEFAULTS
    empty = read_deepspeed_config({}, hidden_size=None)
    fp16 = ds.precision.DeepSpeedFP16Config()
    assert dataclasses.asdict(empty.fp16_loss_scaling) == {k: getattr(fp16, k) for k in
                                                          dataclasses.asdict(empty.fp16_loss_scaling)}
    assert empty.bf16_enabled is False and empty.fp16_enabled is False
    assert GRADIENT_CLIPPING_DEFAULT == ds.constants.GRADIENT_CLIPPING_DEFAULT == empty.gradient_clipping
    assert ZERO_FORCE_DS_CPU_OPTIMIZER_DEFAULT == ds.constants.ZERO_FORCE_DS_CPU_OPTIMIZER_DEFAULT
    assert DEEPSPEED_OPTIMIZERS == set(ds.runtime.DEEPSPEED_OPTIMIZERS)
    assert empty.optimizer_type is None and ds.constants.OPTIMIZER_TYPE_DEFAULT is None
    assert (empty.train_batch_size, empty.train_micro_batch_size_per_gpu, empty.gradient_accumulation_steps) \
        == (None, None, None)


# ---------------------------------------------------------------- "auto" as transformers resolves it

ARGS = SimpleNamespace(  # the TrainingArguments fields trainer_config_process/finalize read
    world_size=1, per_device_train_batch_size=3, gradient_accumulation_steps=4, max_grad_norm=0.5,
    learning_rate=1e-4, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, weight_decay=0.1,
    save_on_each_node=False, fp16=False, fp16_full_eval=False, bf16=True, bf16_full_eval=False,
    get_warmup_steps=lambda num_steps: 0,
)


@pytest.fixture
def hf_resolve(ds):
    """transformers' own "auto" filling (HfTrainerDeepSpeedConfig), then DeepSpeed's own parse of the result."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    def resolve(config: dict, hidden_size: int):
        hf = HfTrainerDeepSpeedConfig(copy.deepcopy(config))
        hf.trainer_config_process(ARGS)
        hf.trainer_config_finalize(ARGS, SimpleNamespace(config=SimpleNamespace(hidden_size=hidden_size)), 10)
        return hf.config, ds.runtime.DeepSpeedConfig(copy.deepcopy(hf.config))

    yield resolve
    unset_hf_deepspeed_config()  # HfDeepSpeedConfig registers itself in a module global


def _fill(value, trainer_value):
    return trainer_value if value is None else value


def assert_matches_deepspeed(ours: DeepSpeedSettings, theirs) -> None:
    """Our settings, with the Trainer's values where we say "from the trainer", equal DeepSpeed's parse."""
    z = theirs.zero_config
    assert ours.zero_stage == z.stage
    for key, (attr, _, _) in ZERO_INT_FIELDS.items():
        assert getattr(ours, attr) == getattr(z, _ds_field(key)), key
    for key, (attr, _) in ZERO_BOOL_FIELDS.items():
        assert getattr(ours, attr) == getattr(z, _ds_field(key)), key
    opt = z.offload_optimizer
    assert ours.offload_optimizer.device.value == (opt.device if opt else "none")
    if opt:
        assert (ours.offload_optimizer.pin_memory, ours.offload_optimizer.buffer_count, ours.offload_optimizer.ratio) \
            == (opt.pin_memory, opt.buffer_count, opt.ratio)
    param = z.offload_param if z.stage == 3 else None  # DeepSpeed reads offload_param at stage 3 only
    assert ours.offload_param.device.value == (param.device if param else "none")
    assert _fill(ours.bf16_enabled, ARGS.bf16) == theirs.bfloat16_config.enabled
    assert _fill(ours.fp16_enabled, ARGS.fp16) == theirs.float16_config.enabled
    fp16 = theirs.float16_config
    assert dataclasses.asdict(ours.fp16_loss_scaling) == {k: getattr(fp16, k) for k in
                                                         dataclasses.asdict(ours.fp16_loss_scaling)}
    assert ours.optimizer_type == theirs.optimizer_name
    assert _fill(ours.gradient_clipping, ARGS.max_grad_norm) == theirs.gradient_clipping
    for key, trainer_value in (("train_micro_batch_size_per_gpu", ARGS.per_device_train_batch_size),
                               ("gradient_accumulation_steps", ARGS.gradient_accumulation_steps)):
        if key in ours.from_trainer:
            assert getattr(ours, key) is None and getattr(theirs, key) == trainer_value
        elif getattr(ours, key) is not None:  # None and not "auto": absent, DeepSpeed derives it
            assert getattr(ours, key) == getattr(theirs, key)
    assert ours.zero_force_ds_cpu_optimizer == theirs.zero_force_ds_cpu_optimizer


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("hidden_size", [64, H])
def test_example_matches_transformers_and_deepspeed(hf_resolve, name, hidden_size):
    config = json.loads((EXAMPLES / name).read_text())
    if "train_batch_size" not in config and "train_micro_batch_size_per_gpu" not in config:
        # the tutorial's config takes its batch from the launcher; DeepSpeedConfig asserts one is given
        config["train_micro_batch_size_per_gpu"] = "auto"
    filled, theirs = hf_resolve(config, hidden_size)
    ours = read_deepspeed_config(config, hidden_size=hidden_size)
    assert_matches_deepspeed(ours, theirs)
    trainer_params = {"lr": ARGS.learning_rate, "betas": [ARGS.adam_beta1, ARGS.adam_beta2],
                      "eps": ARGS.adam_epsilon, "weight_decay": ARGS.weight_decay}
    for key, value in ours.optimizer_params:
        want = filled["optimizer"]["params"][key]
        assert _fill(value, trainer_params[key]) == (tuple(want) if isinstance(want, list) else want) or \
            list(_fill(value, trainer_params[key])) == want


@pytest.mark.parametrize(
    "zero",
    [
        {"stage": 2, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
         "stage3_param_persistence_threshold": "auto", "allgather_bucket_size": "auto"},
        {"stage": 3, "reduce_bucket_size": "auto", "prefetch_bucket_size": "auto",  # field name: not filled
         "overlap_comm": "auto", "sub_group_size": "auto"},
        {"stage": 1, "offload_optimizer": {"device": "cpu", "pin_memory": "auto", "buffer_count": 8}},
        {"stage": 3, "stage3_param_persistence_threshold": "auto", "contiguous_gradients": False,
         "offload_optimizer": {"device": "cpu", "ratio": 0.3}, "offload_param": {"device": "cpu"}},
    ],
)
def test_auto_corner_cases_match_transformers_and_deepspeed(hf_resolve, zero):
    config = {"zero_optimization": zero, "train_micro_batch_size_per_gpu": "auto", "bf16": {"enabled": True}}
    _, theirs = hf_resolve(config, 96)
    assert_matches_deepspeed(read_deepspeed_config(config, hidden_size=96), theirs)


def test_auto_buckets_follow_the_cited_formulas():
    """transformers trainer_config_finalize: h*h, int(0.9*h*h), 10*h; the stage-3 two only at stage 3."""
    zero = {"reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto"}
    s3 = read_deepspeed_config({"zero_optimization": {"stage": 3, **zero}}, hidden_size=5120)
    assert (s3.reduce_bucket_size, s3.stage3_prefetch_bucket_size, s3.stage3_param_persistence_threshold) == \
        (26_214_400, 23_592_960, 51_200)
    s2 = read_deepspeed_config({"zero_optimization": {"stage": 2, **zero}}, hidden_size=5120)
    assert (s2.reduce_bucket_size, s2.stage3_prefetch_bucket_size, s2.stage3_param_persistence_threshold) == \
        (26_214_400, 50_000_000, 100_000)  # DeepSpeed drops the unfilled "auto": its defaults 5e7 and 1e5
    assert any("does not fill" in n for n in s2.notes)


def test_auto_that_needs_the_hidden_size_is_refused_without_one():
    with pytest.raises(PlannerError, match="zero_optimization.reduce_bucket_size.*hidden size") as info:
        read_example("llamafactory_ds_z3_config.json", hidden_size=None)
    assert "\n" not in str(info.value)
    # Below stage 3 the stage-3 "auto" keys fall to DeepSpeed's defaults: no hidden size needed.
    s = read_deepspeed_config({"zero_optimization": {"stage": 2, "stage3_prefetch_bucket_size": "auto"}},
                              hidden_size=None)
    assert s.stage3_prefetch_bucket_size == 50_000_000
    assert read_example("axolotl_zero1.json", hidden_size=None).reduce_bucket_size == DS_BUCKET


def test_batch_auto_is_left_to_the_trainer_and_world_size_derives_the_rest(ds):
    s = read_example("axolotl_zero3_bf16.json")
    assert (s.train_batch_size, s.train_micro_batch_size_per_gpu, s.gradient_accumulation_steps) == (None,) * 3
    assert any(n.startswith("Set by the HF Trainer") and "train_batch_size" in n for n in s.notes)
    config = {"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4}
    s = read_deepspeed_config(config, hidden_size=None, world_size=2)
    assert (s.train_batch_size, s.train_micro_batch_size_per_gpu, s.gradient_accumulation_steps) == (32, 4, 4)
    theirs = ds.runtime.DeepSpeedConfig(dict(config, train_batch_size=16))  # world size 1 without a group
    assert theirs.gradient_accumulation_steps == read_deepspeed_config(
        dict(config, train_batch_size=16), hidden_size=None, world_size=1).gradient_accumulation_steps
    with pytest.raises(PlannerError, match="disagree"):
        read_deepspeed_config({**config, "gradient_accumulation_steps": 3}, hidden_size=None, world_size=2)


# ---------------------------------------------------------------- unknown, unsupported, refused


def test_unknown_and_unsupported_keys_are_noted_never_dropped():
    config = {"zero_optimization": {"stage": 3, "stage3_prefetch_bucket_sise": 10, "zero_quantized_weights": True,
                                    "memory_efficient_linear": True, "offload_param": {"device": "cpu",
                                                                                        "pin_memroy": False}},
              "my_trainer_flag": 1, "communication_data_type": "fp32", "steps_per_print": 10,
              "optimizer": {"type": "Lion", "params": {"lr": 1e-4, "betas": [0.9, 0.99]}, "foo": 1}}
    s = read_deepspeed_config(config, hidden_size=None)
    assert s.unknown_keys == ("my_trainer_flag", "optimizer.foo", "zero_optimization.offload_param.pin_memroy",
                              "zero_optimization.stage3_prefetch_bucket_sise")
    assert s.unsupported_keys == ("communication_data_type", "zero_optimization.zero_quantized_weights")
    assert "zero_optimization.memory_efficient_linear" in s.noted_keys  # DeepSpeed's default: nothing to model
    for key in s.unknown_keys + s.unsupported_keys:
        assert sum(key in note for note in s.notes) == 1, key
    assert "refuses it" in next(n for n in s.notes if "prefetch_bucket_sise" in n)
    assert s.stage3_prefetch_bucket_size == 50_000_000 and s.offload_param.pin_memory is True
    assert s.optimizer_type == "lion" and s.optimizer_params == (("betas", (0.9, 0.99)), ("lr", 1e-4))


def test_optimizer_without_a_type_is_ignored_as_deepspeed_ignores_it(ds):
    config = {"optimizer": {"params": {"lr": 1e-3, "betas": [[0.9], 0.99]}}}
    s = read_deepspeed_config(config, hidden_size=None)
    theirs = ds.runtime.DeepSpeedConfig(dict(config, train_micro_batch_size_per_gpu=1))
    assert s.optimizer_type is theirs.optimizer_name is None and theirs.optimizer_params is None
    assert s.optimizer_params == () and any("no type" in n for n in s.notes)
    nested = read_deepspeed_config({"optimizer": {"type": "Adam", "params": config["optimizer"]["params"]}},
                                   hidden_size=None)
    assert nested.optimizer_params == (("betas", ((0.9,), 0.99)), ("lr", 1e-3)) and hash(nested)


def test_deprecated_and_ignored_keys_read_as_deepspeed_reads_them(ds):
    s = read_deepspeed_config({"zero_optimization": {"stage": 2, "cpu_offload": True,
                                                     "offload_param": {"device": "cpu"}}}, hidden_size=None)
    theirs = ds.zero.DeepSpeedZeroConfig(stage=2, cpu_offload=True)
    assert s.offload_optimizer.device.value == theirs.offload_optimizer.device == "cpu"
    assert s.offload_param.device is OffloadDevice.NONE  # stage 2 never offloads parameters
    assert any("offload_param is ignored" in n for n in s.notes)
    assert read_deepspeed_config({"zero_optimization": True}, hidden_size=None).zero_stage == 1


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"zero_optimization": {"stage": 4}}, "zero_optimization.stage"),
        ({"zero_optimization": {"stage": "two"}}, "zero_optimization.stage"),
        ({"zero_optimization": {"stage": True}}, "zero_optimization.stage"),
        ({"zero_optimization": {"reduce_bucket_size": 0}}, "zero_optimization.reduce_bucket_size"),
        ({"zero_optimization": {"allgather_bucket_size": -1}}, "zero_optimization.allgather_bucket_size"),
        ({"zero_optimization": {"sub_group_size": 1.5}}, "zero_optimization.sub_group_size"),
        ({"zero_optimization": {"sub_group_size": "5e8"}}, "zero_optimization.sub_group_size"),
        ({"zero_optimization": {"stage3_max_live_parameters": float("inf")}},
         "zero_optimization.stage3_max_live_parameters"),
        ({"zero_optimization": {"overlap_comm": "yes"}}, "zero_optimization.overlap_comm"),
        ({"zero_optimization": {"offload_optimizer": {"device": "gpu"}}}, "zero_optimization.offload_optimizer.device"),
        ({"zero_optimization": {"stage": 3, "offload_optimizer": {"ratio": 1.5}}}, "offload_optimizer.ratio"),
        ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "ratio": 0.5}}},
         "offload_optimizer.ratio"),
        ({"zero_optimization": {"offload_param": {"buffer_count": -2}}}, "offload_param.buffer_count"),
        ({"zero_optimization": {"offload_param": "cpu"}}, "zero_optimization.offload_param"),
        ({"zero_optimization": [3]}, "zero_optimization"),
        ({"zero_optimization": {"mics_shard_size": 2}}, "mics_shard_size"),
        ({"zero_optimization": {"max_live_parameters": 1, "stage3_max_live_parameters": 2}}, "max_live_parameters"),
        ({"bf16": {"enabled": True}, "fp16": {"enabled": True}}, "bf16 and fp16"),
        ({"fp16": {"enabled": True, "loss_scale_window": 0}}, "fp16.loss_scale_window"),
        ({"fp16": {"loss_scale": -1}}, "fp16.loss_scale"),
        ({"bf16": {"enabled": 1}}, "bf16.enabled"),
        ({"gradient_clipping": "1.0"}, "gradient_clipping"),
        ({"train_micro_batch_size_per_gpu": 0}, "train_micro_batch_size_per_gpu"),
        ({"gradient_accumulation_steps": 2.5}, "gradient_accumulation_steps"),
        ({"optimizer": {"type": 3}}, "optimizer.type"),
        ({"amp": {"enabled": True}}, "amp"),
        ({"zero_force_ds_cpu_optimizer": "false"}, "zero_force_ds_cpu_optimizer"),
    ],
)
def test_bad_values_are_refused_naming_the_key(config, key):
    with pytest.raises(PlannerError) as info:
        read_deepspeed_config(config, hidden_size=128)
    message = str(info.value)
    assert key in message and "\n" not in message and len(message) <= 400


def test_bad_files_are_refused(tmp_path):
    (tmp_path / "broken.json").write_text("{'stage': 3")
    (tmp_path / "list.json").write_text("[1, 2]")
    for name, match in (("broken.json", "not valid JSON"), ("list.json", "JSON object"), ("absent.json", "Cannot read")):
        with pytest.raises(PlannerError, match=match):
            read_deepspeed_config(tmp_path / name, hidden_size=64)
    with pytest.raises(PlannerError, match="hidden_size"):
        read_deepspeed_config({}, hidden_size=0)


def test_settings_are_frozen_and_hashable():
    s = read_example("transformers_ds_config_zero3.json")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.zero_stage = 2  # type: ignore[misc]
    assert hash(s) == hash(read_example("transformers_ds_config_zero3.json"))


def test_reader_never_imports_torch_or_deepspeed():
    code = ("import sys, planner.deepspeed_config as m; m.read_deepspeed_config({'zero_optimization': {'stage': 3}},"
            " hidden_size=8); heavy = [x for x in ('torch', 'deepspeed', 'transformers', 'pydantic') "
            "if x in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------- planner's own ds_config.json round-trips


@pytest.mark.parametrize(
    ("zero", "offload", "precision"),
    [(1, "none", "bf16-mixed"), (2, "none", "fp16-mixed"), (2, "optimizer", "bf16-mixed"), (3, "none", "fp32"),
     (3, "optimizer", "bf16-mixed"), (3, "optimizer+params", "bf16-mixed")],
)
def test_planner_bundle_config_round_trips(tmp_path, zero, offload, precision):
    model, train, cluster, _, _ = tiny_plan(zero=zero, offload=offload, precision=precision, num_gpus=4,
                                            grad_accum=3)
    written = deepspeed_config(model, train, cluster)
    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps(written, indent=2))
    s = read_deepspeed_config(path, hidden_size=model.hidden_size, world_size=cluster.num_gpus)
    h = TINY_LLAMA["hidden_size"]
    assert s.zero_stage == train.zero_stage == zero
    assert s.offload_optimizer.device is (OffloadDevice.NONE if offload == "none" else OffloadDevice.CPU)
    assert s.offload_param.device is (OffloadDevice.CPU if offload == "optimizer+params" else OffloadDevice.NONE)
    assert s.offload_optimizer.pin_memory and s.offload_param.pin_memory
    assert s.reduce_bucket_size == h * h
    assert s.allgather_bucket_size == (h * h if zero < 3 else DS_BUCKET)
    if zero == 3:
        assert (s.stage3_prefetch_bucket_size, s.stage3_param_persistence_threshold) == (int(0.9 * h * h), 10 * h)
        assert s.sub_group_size == written["zero_optimization"]["sub_group_size"]
    assert s.overlap_comm is (zero == 3) and s.contiguous_gradients
    assert (s.train_micro_batch_size_per_gpu, s.gradient_accumulation_steps, s.train_batch_size) == \
        (train.micro_batch, train.grad_accum, train.micro_batch * train.grad_accum * cluster.num_gpus)
    assert s.bf16_enabled is (precision == "bf16-mixed") and s.fp16_enabled is (precision == "fp16-mixed")
    assert s.unknown_keys == () and s.unsupported_keys == ()
    assert set(s.from_trainer) <= {f"optimizer.params.{k}" for k in ("lr", "betas", "eps", "weight_decay")}
