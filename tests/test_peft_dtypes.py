"""--lora-dtype and --qlora-prep (issue 16 item 6): the states rule against counts worked out by hand, the
refusals, and the real peft + bitsandbytes model the profiler builds against the estimator's parameter bytes."""

from __future__ import annotations

import dataclasses

import pytest

from planner.errors import PlannerError
from planner.estimate.count.params import count_params, split_params
from planner.estimate.peft_dtypes import adapter_dtype, adapters_stepped_in_16bit, unquantized_dtype
from planner.estimate.quant import quantized_weight_bytes
from planner.estimate.states import unsharded_states
from planner.models import load_model, spec_from_config
from planner.specs import Method, Parallelism, PeftDtype, Precision, TrainSpec

# Llama 3.1 8B (catalog config: hidden 4096, 8 KV heads of 128, intermediate 14336, 32 layers, vocab 128256,
# untied head). LoRA r = 16 on every linear adds r * (d_in + d_out) per projection (Hu et al. 2021):
# q, o 16 * 8192; k, v 16 * 5120; gate, up, down 16 * 18432 -> 1,310,720 per layer, x 32.
NUM_ADAPTER_8B = 32 * (2 * 16 * 8192 + 2 * 16 * 5120 + 3 * 16 * 18432)
# Its parameters that stay 16-bit under QLoRA: embeddings and head (2 x 128256 x 4096) and the RMSNorm weights
# (2 per layer + the final one, 4096 each).
NUM_UNQUANTIZED_8B = 2 * 128256 * 4096 + (2 * 32 + 1) * 4096


def _states(train: TrainSpec, model=None):
    model = model or load_model("llama-3.1-8b")
    counts = count_params(model)
    return unsharded_states(counts, split_params(counts, train), train)


def test_16bit_adapters_halve_weights_grads_and_states_and_need_no_master():
    fp32 = _states(TrainSpec(method=Method.LORA))
    b16 = _states(TrainSpec(method=Method.LORA, lora_dtype=PeftDtype.BIT16))
    assert fp32.num_trainable == b16.num_trainable == NUM_ADAPTER_8B
    # weights and gradients: 4 -> 2 bytes each; AdamW's two moments (torch.zeros_like(p)): 8 -> 4 bytes; no
    # master copy either way (fp32 adapters need none, the HF Trainer makes none for 16-bit ones)
    assert fp32.params_bytes - b16.params_bytes == 2 * NUM_ADAPTER_8B
    assert (fp32.grads_bytes, b16.grads_bytes) == (4 * NUM_ADAPTER_8B, 2 * NUM_ADAPTER_8B)
    assert (fp32.optimizer_states_bytes, b16.optimizer_states_bytes) == (8 * NUM_ADAPTER_8B, 4 * NUM_ADAPTER_8B)
    assert fp32.master_bytes == b16.master_bytes == 0
    assert b16.num_stepped_16bit == NUM_ADAPTER_8B


def test_deepspeed_casts_the_adapters_whatever_the_setting():
    # engine._configure_distributed_model casts the module to bf16; ZeRO-2 keeps fp32 masters of all of them
    z2 = dict(method=Method.LORA, parallelism=Parallelism.from_zero(2))
    a = _states(TrainSpec(**z2))
    b = _states(TrainSpec(**z2, lora_dtype=PeftDtype.BIT16))
    assert a == b
    assert a.grads_bytes == 2 * NUM_ADAPTER_8B and a.master_bytes == 4 * NUM_ADAPTER_8B
    assert adapter_dtype(TrainSpec(**z2)) == "bf16" and not adapters_stepped_in_16bit(TrainSpec(**z2))


def test_qlora_prep_16bit_keeps_the_unquantized_parameters_in_bf16():
    fp32 = _states(TrainSpec(method=Method.QLORA))
    b16 = _states(TrainSpec(method=Method.QLORA, qlora_prep=PeftDtype.BIT16))
    assert fp32.params_bytes - b16.params_bytes == 2 * NUM_UNQUANTIZED_8B
    assert fp32.optimizer_states_bytes == b16.optimizer_states_bytes  # only the frozen layers change
    assert unquantized_dtype(TrainSpec(method=Method.QLORA)) == "fp32"
    assert unquantized_dtype(TrainSpec(method=Method.QLORA, parallelism=Parallelism.from_zero(1))) == "bf16"


def test_pure_bf16_keeps_fp32_moments_for_peft_fp32_adapters():
    # torch's AdamW makes its moments with zeros_like(p): fp32 for peft's fp32 adapters even in pure bf16
    pure = _states(TrainSpec(method=Method.LORA, precision=Precision.BF16))
    assert pure.optimizer_states_bytes == 8 * NUM_ADAPTER_8B
    pure16 = _states(TrainSpec(method=Method.LORA, precision=Precision.BF16, lora_dtype=PeftDtype.BIT16))
    assert pure16.optimizer_states_bytes == 4 * NUM_ADAPTER_8B


@pytest.mark.parametrize(("precision", "parallelism", "fragment"), [
    (Precision.FP32, Parallelism(), "--precision fp32 has none"),
    (Precision.FP16_MIXED, Parallelism(), "GradScaler"),
])
def test_16bit_adapters_refused_where_they_cannot_train(precision, parallelism, fragment):
    with pytest.raises(PlannerError, match=fragment):
        TrainSpec(method=Method.LORA, precision=precision, parallelism=parallelism, lora_dtype=PeftDtype.BIT16)
    # full fine-tuning has no adapters: the setting is carried, not refused (estimate's tables of every method)
    TrainSpec(method=Method.FULL, precision=precision, parallelism=parallelism, lora_dtype=PeftDtype.BIT16)
    # DeepSpeed's fp16 optimizer steps fp16 adapters with fp32 masters
    TrainSpec(method=Method.LORA, precision=Precision.FP16_MIXED, parallelism=Parallelism.from_zero(2),
              lora_dtype=PeftDtype.BIT16)


def test_json_train_block_round_trips_both():
    from planner.specs import train_spec_from_dict, train_spec_to_dict

    train = TrainSpec(method=Method.QLORA, lora_dtype=PeftDtype.BIT16, qlora_prep=PeftDtype.BIT16)
    d = train_spec_to_dict(train)
    assert (d["lora_dtype"], d["qlora_prep"]) == ("16bit", "16bit")
    assert train_spec_from_dict(d) == train
    del d["lora_dtype"], d["qlora_prep"]  # a train block from before the keys: peft's defaults
    assert train_spec_from_dict(d) == dataclasses.replace(train, lora_dtype=PeftDtype.FP32, qlora_prep=PeftDtype.FP32)


TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 128}


@pytest.mark.parametrize("lora_dtype", list(PeftDtype))
@pytest.mark.parametrize("prep", list(PeftDtype))
def test_the_real_peft_model_holds_the_estimated_bytes(lora_dtype, prep):
    """The profiler's model (transformers' bitsandbytes loader, peft's prepare call and get_peft_model) holds
    exactly the non-4-bit parameter bytes the estimator counts, in the dtypes peft_dtypes.py names."""
    pytest.importorskip("bitsandbytes")
    import torch

    from planner.profile.workload import build_model

    train = TrainSpec(method=Method.QLORA, lora_dtype=lora_dtype, qlora_prep=prep, seq_len=16)
    built = build_model(TINY, train, "cpu", seed=0)
    params = list(built.model.named_parameters())
    adapters = {p.dtype for n, p in params if "lora_" in n}
    others = {p.dtype for n, p in params if "lora_" not in n and p.__class__.__name__ != "Params4bit"}
    names = {"fp32": torch.float32, "bf16": torch.bfloat16}
    assert adapters == {names[adapter_dtype(train)]}
    assert others == {names[unquantized_dtype(train)]}
    model = spec_from_config(TINY, "tiny")
    counts = count_params(model)
    estimated = unsharded_states(counts, split_params(counts, train), train).params_bytes
    measured = sum(p.numel() * p.element_size() for _, p in params if p.__class__.__name__ != "Params4bit")
    assert measured == estimated - quantized_weight_bytes(counts, train.quant)


def test_the_bundle_passes_both_to_peft():
    """train.py's PLAN carries the settings and its argparse defaults to them; the code hands them to peft."""
    import ast

    from planner import catalog
    from planner.emit.bundle import render_bundle
    from planner.estimate.core import estimate
    from planner.specs import Cluster

    model = spec_from_config(TINY, "tiny")
    train = TrainSpec(method=Method.QLORA, lora_dtype=PeftDtype.BIT16, qlora_prep=PeftDtype.BIT16, seq_len=16)
    cluster = Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=1)
    files = render_bundle(model, train, cluster, estimate(model, train, cluster), global_batch_size=1)
    script = files["train.py"]
    plan = next(ast.literal_eval(n.value) for n in ast.parse(script).body
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "PLAN")
    assert (plan["lora_dtype"], plan["qlora_prep"]) == ("16bit", "16bit")
    assert 'autocast_adapter_dtype=args.lora_dtype == "fp32"' in script
    assert 'args.qlora_prep == "fp32"' in script
    assert "prepare_model_for_kbit_training is not called" in files["PLAN.md"]
