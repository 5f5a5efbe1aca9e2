"""The simulated step's cache key is StepInputs, built in one place from exactly what the simulation reads.

Every TrainSpec (and LoraSpec) field is either read or ignored, with a reason (step/inputs.py TRAIN_FIELDS_*): a new
field fails here until someone decides. Read fields change the key; ignored ones leave it, and the simulation,
unchanged.
"""

from __future__ import annotations

import dataclasses

import pytest

from planner.estimate.step import simulate, tape
from planner.estimate.step.simulate import (
    LORA_FIELDS_IGNORED,
    LORA_FIELDS_READ,
    PARALLELISM_FIELDS_IGNORED,
    PARALLELISM_FIELDS_READ,
    TRAIN_FIELDS_IGNORED,
    TRAIN_FIELDS_READ,
    simulate_step,
    step_inputs,
    trace_step,
)
from planner.models import spec_from_config
from planner.specs import (
    AttnImpl,
    LoraSpec,
    Loss,
    LossSpec,
    Method,
    Offload,
    Optimizer,
    Parallelism,
    PeftDtype,
    Precision,
    QuantSpec,
    QuantType,
    Task,
    TaskSpec,
    TrainSpec,
    ZeroConfig,
)

TINY = spec_from_config(
    {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
     "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 256},
    "tiny-llama",
)
LORA = TrainSpec(method=Method.LORA, micro_batch=2, seq_len=32, parallelism=Parallelism.from_zero(2))


def _names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize(("cls", "read", "ignored"), [
    (TrainSpec, TRAIN_FIELDS_READ, TRAIN_FIELDS_IGNORED),
    (LoraSpec, LORA_FIELDS_READ, LORA_FIELDS_IGNORED),
    (Parallelism, PARALLELISM_FIELDS_READ, PARALLELISM_FIELDS_IGNORED),
])
def test_every_field_is_read_or_ignored_with_a_reason(cls, read, ignored):
    assert not set(read) & set(ignored), "a field is both read and ignored"
    undecided = _names(cls) - set(read) - set(ignored)
    assert not undecided, (
        f"{cls.__name__} fields {sorted(undecided)} are neither read by the simulated step nor ignored: add each to "
        "StepInputs (built in step/inputs.py step_inputs) or to the ignored table with the reason"
    )
    assert set(read) | set(ignored) == _names(cls), "the tables name a field the spec no longer has"
    assert all(reason.strip() for reason in ignored.values())


# One changed value per read field (from LORA), each a different simulation.
READ_VARIANTS = {
    "method": dict(method=Method.QLORA),
    "precision": dict(precision=Precision.FP16_MIXED),
    "micro_batch": dict(micro_batch=3),
    "seq_len": dict(seq_len=64),
    "grad_checkpointing": dict(grad_checkpointing=True),
    "attn_impl": dict(attn_impl=AttnImpl.EAGER),
    "dropout": dict(dropout=0.1),
    "lora": dict(lora=LoraSpec(rank=8)),
    "parallelism": dict(parallelism=Parallelism.from_zero(3)),
    # read as the dtypes they give (peft_dtypes.py): DeepSpeed's bf16 cast makes LORA's ZeRO-2 ignore them
    # (tests/test_peft_dtypes.py), so these change the layout too
    "lora_dtype": dict(lora_dtype=PeftDtype.BIT16, parallelism=Parallelism()),
    "qlora_prep": dict(method=Method.QLORA, qlora_prep=PeftDtype.BIT16, parallelism=Parallelism()),
    "activation_offload": dict(method=Method.LORA, activation_offload=True),
    "loss": dict(loss=LossSpec(Loss.CHUNKED_CE)),
    "optimizer_in_backward": dict(method=Method.FULL, precision=Precision.BF16, parallelism=Parallelism(),
                                  optimizer_in_backward=True),
    # read as the reference the DPO step runs (and the doubled batch); DPO is modelled without DeepSpeed
    "task": dict(task=TaskSpec(Task.DPO), parallelism=Parallelism()),
    # read as one row of micro_batch * seq_len tokens with its mask (packed.py)
    "packing": dict(packing=True),
    # read as the layer policy's checkpointed layers (selective_layers.py)
    "selective_ac": dict(selective_ac="1"),
}
LORA_READ_VARIANTS = {
    "rank": LoraSpec(rank=4),
    "targets": LoraSpec(targets=("q_proj",)),
    "dropout": LoraSpec(dropout=0.0),
    "modules_to_save": LoraSpec(modules_to_save=("lm_head",)),
}
# One changed value per ignored field, each valid with LORA's other fields.
IGNORED_VARIANTS = {
    "optimizer": dict(optimizer=Optimizer.SGD),
    "quant": dict(method=Method.QLORA, quant=QuantSpec(quant_type=QuantType.FP4, double_quant=False, blocksize=128)),
    "grad_accum": dict(grad_accum=4),
    "compile": dict(compile=True),
}


def test_the_variant_tables_cover_every_field():
    assert set(READ_VARIANTS) == set(TRAIN_FIELDS_READ)
    assert set(IGNORED_VARIANTS) == set(TRAIN_FIELDS_IGNORED)
    assert set(LORA_READ_VARIANTS) == set(LORA_FIELDS_READ)


@pytest.mark.parametrize("field", sorted(READ_VARIANTS))
def test_a_read_field_changes_the_key(field):
    assert step_inputs(TINY, dataclasses.replace(LORA, **READ_VARIANTS[field])) != step_inputs(TINY, LORA)


@pytest.mark.parametrize("field", sorted(LORA_READ_VARIANTS))
def test_a_read_lora_field_changes_the_key(field):
    other = dataclasses.replace(LORA, lora=LORA_READ_VARIANTS[field])
    assert step_inputs(TINY, other) != step_inputs(TINY, LORA)


@pytest.mark.parametrize("field", sorted(IGNORED_VARIANTS))
def test_an_ignored_field_changes_neither_the_key_nor_the_step(field):
    changes = IGNORED_VARIANTS[field]
    base = dataclasses.replace(LORA, **{k: v for k, v in changes.items() if k != field})
    other = dataclasses.replace(LORA, **changes)
    assert other != base
    assert step_inputs(TINY, other) == step_inputs(TINY, base)
    assert simulate_step(TINY, other) == simulate_step(TINY, base)


def test_offload_changes_neither_the_key_nor_the_step():
    assert set(PARALLELISM_FIELDS_IGNORED) == {"offload", "zero_config", "fsdp_config"}
    other = dataclasses.replace(LORA, parallelism=Parallelism.from_zero(LORA.zero_stage, Offload.OPTIMIZER))
    assert other != LORA
    assert step_inputs(TINY, other) == step_inputs(TINY, LORA)
    assert simulate_step(TINY, other) == simulate_step(TINY, LORA)


def test_deepspeed_buckets_change_the_step_only_through_hold_grads_over():
    """A --deepspeed-config's buckets and thresholds: the simulated step sees only what the caller passes as
    hold_grads_over (ZeRO-2's reduce bucket), so two runs that differ in them alone share one simulation."""
    buckets = ZeroConfig(reduce_bucket_size=123_456, stage3_prefetch_bucket_size=7, sub_group_size=99,
                         stage3_param_persistence_threshold=0, stage3_max_reuse_distance=5, overlap_comm=True)
    other = dataclasses.replace(LORA, parallelism=Parallelism.from_zero(LORA.zero_stage, zero_config=buckets))
    assert other != LORA
    assert step_inputs(TINY, other) == step_inputs(TINY, LORA)
    assert simulate_step(TINY, other) == simulate_step(TINY, LORA)


def test_lora_alpha_changes_neither_the_key_nor_the_step():
    other = dataclasses.replace(LORA, lora=LoraSpec(alpha=8))
    assert step_inputs(TINY, other) == step_inputs(TINY, LORA)
    assert simulate_step(TINY, other) == simulate_step(TINY, LORA)


def test_the_key_holds_the_raw_config():
    """ModelSpec equality ignores the raw config (family details live there): the key must not."""
    cfg = {**TINY.config, "attention_bias": True}
    biased = spec_from_config(cfg, TINY.name)
    assert biased == TINY
    assert step_inputs(biased, LORA) != step_inputs(TINY, LORA)


def test_trace_step_is_the_uncached_simulation_with_its_trace():
    train = dataclasses.replace(LORA, micro_batch=1)
    traced = trace_step(TINY, train)
    assert traced.run.profile == simulate_step(TINY, train)
    assert traced.backward and all(isinstance(name, str) and live >= 0 for name, live in traced.backward)
    assert traced.storages  # weak references to every storage the step made
    assert not hasattr(tape, "TRACE")  # no module-level switch: tracing is per call


def test_no_step_state_lives_on_the_modules():
    """What used to be set from outside after construction (or patched on) now goes through constructors."""
    sim = tape.Sim(record=True)
    t = tape.Tape(sim, device="cpu", hold_grads_over=7, keep_param_grads=False)
    assert (t.device, t.hold_grads_over, t.keep_param_grads, sim.record, sim.trace) == ("cpu", 7, False, [], None)
    assert not hasattr(simulate, "TRACE")


def test_fsdp2_settings_change_neither_the_key_nor_the_step():
    """FSDP2's resharding and reduce dtype are added per phase (estimate/fsdp2_step.py); the step only splits
    the loss from the rest, the same for every FsdpConfig."""
    from planner.specs import FsdpConfig

    one = dataclasses.replace(LORA, parallelism=Parallelism.fsdp2())
    other = dataclasses.replace(LORA, parallelism=Parallelism.fsdp2(FsdpConfig(reshard_after_forward=False,
                                                                                reduce_dtype=None)))
    assert step_inputs(TINY, other) == step_inputs(TINY, one) != step_inputs(TINY, LORA)
    assert step_inputs(TINY, one).split_loss

