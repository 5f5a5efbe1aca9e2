"""planner.from_config: the training configs people already have, read into TrainSpecs.

Every example under examples/configs/ is a real config copied from its project's repository (the header names
the repository, path and commit). For each one the expected TrainSpec below is written by hand from reading the
file and the project's documented defaults (cited beside each), never by calling the reader twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.errors import PlannerError
from planner.from_config import FromConfig, detect_format, read_training_config
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
    TrainSpec,
)

CONFIGS = Path(__file__).resolve().parent.parent / "examples" / "configs"
ALL_LINEAR = ("all-linear",)
TRL_LOSS = LossSpec(Loss.TRL_FUSED_LM_HEAD)
PEFT_QKVO_MLP = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# (file, format, model, expected TrainSpec). Defaults used where the file is silent:
# LLaMA-Factory (src/llamafactory/hparams): lora_alpha = 2 * lora_rank, lora_dropout 0.0, lora_rank 8,
#   gradient checkpointing on unless disable_gradient_checkpointing, optim adamw_torch, trainable params upcast
#   to fp32 under bf16 autocast (bf16-mixed), flash_attn auto -> transformers' sdpa, quantization_type nf4,
#   double_quantization true.
# axolotl (utils/schemas/config.py): bf16 auto -> bf16 (weights loaded in bf16: pure bf16 for full fine-tuning),
#   lora_target_linear -> all-linear, bnb 4-bit nf4 with double quantization.
# torchtune: dtype bf16 holds every weight in bf16 without autocast (pure bf16), builders' lora_dropout 0.0,
#   lora_attn_modules output_proj -> o_proj, apply_lora_to_mlp -> w1/w2/w3 (gate/down/up), no max_seq_len ->
#   planner's default 2048 (marked unset); LoRA adapters and QLoRA's unquantized layers stay bf16 (built under
#   set_default_dtype, never upcast: --lora-dtype and --qlora-prep 16bit).
# TRL (alignment-handbook recipes): no optim -> TrainingArguments' adamw_torch_fused (torch >= 2.8),
#   ModelConfig use_bnb_nested_quant false, dtype bfloat16 + bf16 without
#   DeepSpeed -> pure bf16 for full fine-tuning; no loss_type -> SFTConfig's "nll", SFTTrainer's fused LM head
#   (TRL 1.16: trl/trainer/sft_config.py, sft_trainer.py add_fused_lm_head).
EXAMPLES = [
    ("llamafactory/llama3_lora_sft.yaml", "llamafactory", "meta-llama/Meta-Llama-3-8B-Instruct",
     TrainSpec(method=Method.LORA, precision=Precision.BF16_MIXED, optimizer=Optimizer.ADAMW,
               lora=LoraSpec(rank=8, alpha=16, dropout=0.0, targets=ALL_LINEAR), micro_batch=1, seq_len=2048,
               grad_accum=8, grad_checkpointing=True, attn_impl=AttnImpl.SDPA)),
    ("llamafactory/llama3_lora_sft_otfq.yaml", "llamafactory", "meta-llama/Meta-Llama-3-8B-Instruct",
     TrainSpec(method=Method.QLORA, precision=Precision.BF16_MIXED, optimizer=Optimizer.ADAMW,
               lora=LoraSpec(rank=8, alpha=16, dropout=0.0, targets=ALL_LINEAR),
               quant=QuantSpec(quant_type=QuantType.NF4, double_quant=True), micro_batch=1, seq_len=2048,
               grad_accum=8, grad_checkpointing=True, attn_impl=AttnImpl.SDPA)),
    ("llamafactory/llama3_full_sft.yaml", "llamafactory", "meta-llama/Meta-Llama-3-8B-Instruct",
     TrainSpec(method=Method.FULL, precision=Precision.BF16_MIXED, optimizer=Optimizer.ADAMW,
               lora=LoraSpec(rank=8, alpha=16, dropout=0.0, targets=ALL_LINEAR), parallelism=Parallelism.from_zero(3), micro_batch=1,
               seq_len=2048, grad_accum=2, grad_checkpointing=True, attn_impl=AttnImpl.SDPA)),
    ("llamafactory/llama3_lora_sft_ds3.yaml", "llamafactory", "meta-llama/Meta-Llama-3-8B-Instruct",
     TrainSpec(method=Method.LORA, precision=Precision.BF16_MIXED, optimizer=Optimizer.ADAMW,
               lora=LoraSpec(rank=8, alpha=16, dropout=0.0, targets=ALL_LINEAR), parallelism=Parallelism.from_zero(3), micro_batch=1,
               seq_len=2048, grad_accum=2, grad_checkpointing=True, attn_impl=AttnImpl.SDPA)),
    ("axolotl/lora-1b.yml", "axolotl", "llama-3.2-1b",
     TrainSpec(method=Method.LORA, precision=Precision.BF16_MIXED, optimizer=Optimizer.ADAMW_8BIT,
               lora=LoraSpec(rank=16, alpha=32, dropout=0.05,
                             targets=("gate_proj", "down_proj", "up_proj", "q_proj", "v_proj", "k_proj", "o_proj")),
               micro_batch=2, seq_len=2048, grad_accum=2, grad_checkpointing=True,
               attn_impl=AttnImpl.FLASH_ATTENTION_2, packing=True)),
    ("axolotl/qlora.yml", "axolotl", "NousResearch/Meta-Llama-3-8B",
     TrainSpec(method=Method.QLORA, precision=Precision.BF16_MIXED, optimizer=Optimizer.PAGED_ADAMW,
               lora=LoraSpec(rank=32, alpha=16, dropout=0.05, targets=ALL_LINEAR),
               quant=QuantSpec(quant_type=QuantType.NF4, double_quant=True), micro_batch=2, seq_len=4096,
               grad_accum=4, grad_checkpointing=True, attn_impl=AttnImpl.FLASH_ATTENTION_2, packing=True)),
    ("axolotl/fft-8b.yaml", "axolotl", "meta-llama/Meta-Llama-3-8B",
     TrainSpec(method=Method.FULL, precision=Precision.BF16, optimizer=Optimizer.PAGED_ADAMW_8BIT,
               lora=LoraSpec(rank=8, alpha=16, dropout=0.0, targets=ALL_LINEAR), micro_batch=1, seq_len=8192,
               grad_accum=8, grad_checkpointing=True, attn_impl=AttnImpl.FLASH_ATTENTION_2, packing=True)),
    ("torchtune/llama2_7B_qlora_single_device.yaml", "torchtune", "llama-2-7b",
     TrainSpec(method=Method.QLORA, precision=Precision.BF16, optimizer=Optimizer.ADAMW,
               lora=LoraSpec(rank=8, alpha=16, dropout=0.0,
                             targets=("q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "down_proj", "up_proj")),
               quant=QuantSpec(quant_type=QuantType.NF4, double_quant=True), micro_batch=2, seq_len=2048,
               grad_accum=16, grad_checkpointing=True, attn_impl=AttnImpl.SDPA,
               lora_dtype=PeftDtype.BIT16, qlora_prep=PeftDtype.BIT16)),
    ("torchtune/llama2_7B_full_single_device.yaml", "torchtune", "llama-2-7b",
     TrainSpec(method=Method.FULL, precision=Precision.BF16, optimizer=Optimizer.SGD,
               lora=LoraSpec(rank=8, alpha=16, dropout=0.0, targets=ALL_LINEAR), micro_batch=2, seq_len=2048,
               grad_accum=1, grad_checkpointing=True, attn_impl=AttnImpl.SDPA)),
    ("torchtune/mistral_7B_qlora_single_device.yaml", "torchtune", "mistralai/Mistral-7B-v0.1",
     TrainSpec(method=Method.QLORA, precision=Precision.BF16, optimizer=Optimizer.ADAMW,
               lora=LoraSpec(rank=64, alpha=16, dropout=0.0,
                             targets=("q_proj", "k_proj", "v_proj", "gate_proj", "down_proj", "up_proj")),
               quant=QuantSpec(quant_type=QuantType.NF4, double_quant=True), micro_batch=4, seq_len=2048,
               grad_accum=4, grad_checkpointing=True, attn_impl=AttnImpl.SDPA,
               lora_dtype=PeftDtype.BIT16, qlora_prep=PeftDtype.BIT16)),
    ("hf/zephyr-7b-beta_sft_config_full.yaml", "hf", "mistralai/Mistral-7B-v0.1",
     TrainSpec(method=Method.FULL, precision=Precision.BF16, optimizer=Optimizer.ADAMW_FUSED,
               lora=LoraSpec(rank=16, alpha=32, dropout=0.05, targets=("q_proj", "v_proj")), micro_batch=16,
               seq_len=2048, grad_accum=1, grad_checkpointing=True, attn_impl=AttnImpl.FLASH_ATTENTION_2,
               loss=TRL_LOSS)),
    ("hf/zephyr-7b-beta_sft_config_lora.yaml", "hf", "mistralai/Mistral-7B-v0.1",
     TrainSpec(method=Method.LORA, precision=Precision.BF16_MIXED, optimizer=Optimizer.ADAMW_FUSED,
               lora=LoraSpec(rank=16, alpha=16, dropout=0.05, targets=PEFT_QKVO_MLP), micro_batch=4,
               seq_len=2048, grad_accum=2, grad_checkpointing=True, attn_impl=AttnImpl.SDPA, loss=TRL_LOSS)),
    ("hf/zephyr-7b-beta_sft_config_qlora.yaml", "hf", "mistralai/Mistral-7B-v0.1",
     TrainSpec(method=Method.QLORA, precision=Precision.BF16_MIXED, optimizer=Optimizer.ADAMW_FUSED,
               lora=LoraSpec(rank=16, alpha=16, dropout=0.05, targets=PEFT_QKVO_MLP),
               quant=QuantSpec(quant_type=QuantType.NF4, double_quant=False), micro_batch=4, seq_len=2048,
               grad_accum=2, grad_checkpointing=True, attn_impl=AttnImpl.FLASH_ATTENTION_2, loss=TRL_LOSS)),
]


@pytest.mark.parametrize(("rel", "fmt", "model", "expected"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_every_example_reads_as_its_explicit_train_spec(rel, fmt, model, expected):
    got = read_training_config(CONFIGS / rel)
    assert isinstance(got, FromConfig)
    assert got.format == fmt
    assert got.model == model
    assert got.train == expected
    assert got.num_gpus is None and got.num_nodes is None  # no accelerate config given


def test_three_accepted_examples_per_format():
    per_format: dict[str, int] = {}
    for _, fmt, _, _ in EXAMPLES:
        per_format[fmt] = per_format.get(fmt, 0) + 1
    assert per_format == {"llamafactory": 4, "axolotl": 3, "torchtune": 3, "hf": 3}


def test_every_example_names_its_source():
    for path in sorted(CONFIGS.rglob("*.y*ml")):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# Source: ") and "commit " in first, path


@pytest.mark.parametrize("rel", [e[0] for e in EXAMPLES])
def test_no_field_is_dropped_silently(rel):
    """Every top-level field of the file is either used or listed as ignored with a reason."""
    import yaml

    got = read_training_config(CONFIGS / rel)
    fields = set(yaml.safe_load((CONFIGS / rel).read_text(encoding="utf-8")))
    accounted = set(got.used) | {k for k, _ in got.ignored}
    assert fields <= accounted, sorted(fields - accounted)
    assert all(reason for _, reason in got.ignored)


def test_ignored_fields_carry_their_reasons():
    got = read_training_config(CONFIGS / "llamafactory/llama3_lora_sft.yaml")
    ignored = dict(got.ignored)
    assert ignored["learning_rate"] == "does not change memory or time"
    assert ignored["template"] == "does not change memory or time"
    assert "cutoff_len" in got.used and "lora_rank" in got.used
    # The DeepSpeed file's other keys are listed under its name.
    full = dict(read_training_config(CONFIGS / "llamafactory/llama3_full_sft.yaml").ignored)
    assert full["ds_z3_config.json:zero_optimization.reduce_bucket_size"].startswith("planner takes the Hugging Face")


def test_unknown_field_is_listed_not_dropped(tmp_path):
    cfg = tmp_path / "lf.yaml"
    cfg.write_text("model_name_or_path: Qwen/Qwen2.5-7B-Instruct\nstage: sft\nfinetuning_type: lora\n"
                   "cutoff_len: 1024\nmy_custom_knob: 3\n")
    got = read_training_config(cfg)
    assert dict(got.ignored)["my_custom_knob"] == "not a field planner reads"
    assert got.model == "qwen2.5-7b"  # the catalog entry with the hub id's architecture
    assert got.model_as_written == "Qwen/Qwen2.5-7B-Instruct"
    # Silent fields take LLaMA-Factory's defaults (per_device_train_batch_size 8 from TrainingArguments).
    assert got.train.micro_batch == 8 and got.train.grad_accum == 1
    assert got.unset == frozenset({"micro_batch", "grad_accum"})


def test_accelerate_config_gives_gpus_and_deepspeed():
    """alignment-handbook launches config_full with accelerate's DeepSpeed ZeRO-3 config on 8 processes: the
    Trainer's bf16 wins over accelerate's mixed_precision and DeepSpeed keeps fp32 masters (bf16-mixed)."""
    got = read_training_config(CONFIGS / "hf/zephyr-7b-beta_sft_config_full.yaml",
                               accelerate_config=CONFIGS / "hf/accelerate/deepspeed_zero3.yaml")
    assert (got.num_gpus, got.num_nodes) == (8, 1)
    assert got.train == TrainSpec(method=Method.FULL, precision=Precision.BF16_MIXED, optimizer=Optimizer.ADAMW_FUSED,
                                  lora=LoraSpec(rank=16, alpha=32, dropout=0.05, targets=("q_proj", "v_proj")),
                                  parallelism=Parallelism.from_zero(3), micro_batch=16, seq_len=2048, grad_accum=1,
                                  grad_checkpointing=True, attn_impl=AttnImpl.FLASH_ATTENTION_2, loss=TRL_LOSS)
    assert any("overrides the accelerate config's mixed_precision fp16" in n for n in got.notes)
    assert str(CONFIGS / "hf/accelerate/deepspeed_zero3.yaml") in got.files

    ddp = read_training_config(CONFIGS / "hf/zephyr-7b-beta_sft_config_qlora.yaml",
                               accelerate_config=CONFIGS / "hf/accelerate/multi_gpu.yaml")
    assert (ddp.num_gpus, ddp.train.zero_stage) == (8, 0)

    z2 = read_training_config(CONFIGS / "hf/zephyr-7b-beta_sft_config_lora.yaml",
                              accelerate_config=CONFIGS / "hf/accelerate/deepspeed_zero2.yaml")
    assert (z2.train.zero_stage, z2.train.offload, z2.train.method) == (2, Offload.NONE, Method.LORA)


def test_deepspeed_offload_json(tmp_path):
    ds = CONFIGS / "llamafactory/examples/deepspeed/ds_z2_offload_config.json"
    cfg = tmp_path / "lf.yaml"
    cfg.write_text(f"model_name_or_path: meta-llama/Llama-3.1-8B\nstage: sft\nfinetuning_type: full\n"
                   f"deepspeed: {ds}\nbf16: true\nper_device_train_batch_size: 2\ncutoff_len: 4096\n")
    got = read_training_config(cfg)
    assert got.model == "llama-3.1-8b"
    assert got.train == TrainSpec(method=Method.FULL, precision=Precision.BF16_MIXED, parallelism=Parallelism.from_zero(2, Offload.OPTIMIZER), micro_batch=2, seq_len=4096, grad_accum=1,
                                  lora=LoraSpec(rank=8, alpha=16, dropout=0.0), grad_checkpointing=True)
    assert str(ds) in got.files


REFUSALS = [
    (CONFIGS / "axolotl/lora-8b.yml", "load_in_8bit"),
    (CONFIGS / "torchtune/llama3_8B_lora_single_device.yaml", "LinearCrossEntropyLoss"),
]


@pytest.mark.parametrize(("path", "word"), REFUSALS, ids=[p.name for p, _ in REFUSALS])
def test_real_configs_planner_cannot_represent_are_refused(path, word):
    with pytest.raises(PlannerError, match=word):
        read_training_config(path)


@pytest.mark.parametrize(("text", "word"), [
    ("model_name_or_path: x/y\nstage: dpo\nfinetuning_type: lora\n", "stage: dpo"),
    ("model_name_or_path: x/y\nstage: sft\nfinetuning_type: lora\nuse_unsloth: true\n", "use_unsloth"),
    ("model_name_or_path: x/y\nstage: sft\nfinetuning_type: freeze\n", "freeze"),
    ("model_name_or_path: x/y\nstage: sft\nfinetuning_type: lora\nquantization_bit: 8\n", "quantization_bit: 8"),
    ("model_name_or_path: x/y\nstage: sft\nfinetuning_type: full\noptim: lion_32bit\n", "lion_32bit"),
    ("base_model: x/y\nadapter: lora\nsequence_len: 512\nmicro_batch_size: 1\nrl: dpo\n", "rl: dpo"),
    ("base_model: x/y\nmicro_batch_size: 1\nsequence_len: 512\nfsdp: [full_shard]\n", "FSDP|fsdp"),
    ("base_model: x/y\nadapter: lora\nmicro_batch_size: 1\nsequence_len: 512\n"
     "plugins: [axolotl.integrations.spectrum.SpectrumPlugin]\n", "SpectrumPlugin"),
    ("model_name_or_path: x/y\nper_device_train_batch_size: 1\nmax_length: 512\nuse_peft: true\n"
     "loss_type: dft\n", "dft"),
    ("model_name_or_path: x/y\nper_device_train_batch_size: 1\nmax_length: 512\nuse_peft: true\n"
     "label_smoothing_factor: 0.1\n", "label_smoothing_factor"),
    ("model_name_or_path: x/y\nper_device_train_batch_size: 1\nmax_length: 512\npacking: true\n"
     "use_liger_kernel: true\n", "Liger"),
    ("model_name_or_path: x/y\nper_device_train_batch_size: 1\nmax_length: 512\n", "dtype"),
])
def test_refusals_are_one_sentence(tmp_path, text, word):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    with pytest.raises(PlannerError, match=word) as info:
        read_training_config(cfg)
    message = str(info.value)
    assert "\n" not in message and message.rstrip().endswith(".")


def test_torchtune_optimizer_in_bwd_reads_as_optimizer_in_backward(tmp_path):
    cfg = tmp_path / "tt.yaml"
    cfg.write_text("model:\n  _component_: torchtune.models.llama3_2.llama3_2_1b\n"
                   "loss:\n  _component_: torch.nn.CrossEntropyLoss\noptimizer:\n  _component_: torch.optim.AdamW\n"
                   "batch_size: 2\ndtype: bf16\noptimizer_in_bwd: true\n")
    got = read_training_config(cfg)
    assert got.train.optimizer_in_backward and got.train.precision is Precision.BF16 and "optimizer_in_bwd" in got.used


def test_torchtune_distributed_and_in_backward_optimizer_are_refused(tmp_path):
    base = ("model:\n  _component_: torchtune.models.llama3_2.lora_llama3_2_1b\n  lora_attn_modules: [q_proj]\n"
            "loss:\n  _component_: torch.nn.CrossEntropyLoss\noptimizer:\n  _component_: torch.optim.AdamW\n"
            "batch_size: 1\ndtype: bf16\n")
    # tensor parallelism is refused (FSDP2: test_fsdp2_cli.py); optimizer_in_bwd is read and refused with LoRA
    for extra, word in (("tensor_parallel_dim: 2\n", "FSDP2"), ("optimizer_in_bwd: true\n", "--optimizer-in-backward")):
        cfg = tmp_path / "tt.yaml"
        cfg.write_text(base + extra)
        with pytest.raises(PlannerError, match=word):
            read_training_config(cfg)
    cfg.write_text(base + "tokenizer:\n  _component_: x\n  max_seq_len: 4096\n")
    got = read_training_config(cfg)
    assert got.model == "llama-3.2-1b" and got.train.seq_len == 4096 and "seq_len" not in got.unset
    assert got.train.lora.targets == ("q_proj",)


def test_torchtune_activation_offloading_maps_to_activation_offload(tmp_path):
    """torchtune's enable_activation_offloading (OffloadActivations) reads as --activation-offload, with a note
    that planner follows save_on_cpu (which also copies parameters and small tensors)."""
    base = ("model:\n  _component_: torchtune.models.llama3_2.lora_llama3_2_1b\n  lora_attn_modules: [q_proj]\n"
            "loss:\n  _component_: torch.nn.CrossEntropyLoss\noptimizer:\n  _component_: torch.optim.AdamW\n"
            "batch_size: 1\ndtype: bf16\nenable_activation_checkpointing: true\n")
    cfg = tmp_path / "tt.yaml"
    for text, expected in ((base + "enable_activation_offloading: true\n", True),
                           (base + "enable_activation_offloading: false\n", False), (base, False)):
        cfg.write_text(text)
        got = read_training_config(cfg)
        assert got.train.activation_offload is expected and got.train.grad_checkpointing
        assert any("OffloadActivations" in n for n in got.notes) is expected


def test_accelerate_fsdp_and_lone_launch_files_are_refused(tmp_path):
    acc = tmp_path / "fsdp.yaml"
    acc.write_text("distributed_type: FSDP\nnum_processes: 8\nnum_machines: 1\nmixed_precision: bf16\n")
    with pytest.raises(PlannerError, match="FSDP"):
        read_training_config(CONFIGS / "axolotl/lora-1b.yml", accelerate_config=acc)
    with pytest.raises(PlannerError, match="accelerate config"):
        read_training_config(CONFIGS / "hf/accelerate/multi_gpu.yaml")
    with pytest.raises(PlannerError, match="DeepSpeed config"):
        read_training_config(CONFIGS / "llamafactory/examples/deepspeed/ds_z3_config.json")


def test_bad_files_and_values(tmp_path):
    with pytest.raises(PlannerError, match="not a readable file"):
        read_training_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(PlannerError, match="not valid YAML"):
        read_training_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(PlannerError, match="not a mapping"):
        read_training_config(bad)
    bad.write_text("hello: world\n")
    with pytest.raises(PlannerError, match="name its format"):
        read_training_config(bad)
    bad.write_text("base_model: x/y\nmicro_batch_size: -2\nsequence_len: 512\n")
    with pytest.raises(PlannerError, match="micro_batch_size is -2"):
        read_training_config(bad)
    bad.write_text("model_name_or_path: x/y\nfinetuning_type: lora\ncutoff_len: 1024\n"
                   "deepspeed: nowhere/ds.json\n")
    with pytest.raises(PlannerError, match="DeepSpeed config 'nowhere/ds.json' is not found"):
        read_training_config(bad)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * 1_000_001)
    with pytest.raises(PlannerError, match="far larger"):
        read_training_config(big)


def test_bitsandbytes_optimizer_with_zero_is_refused_by_the_spec(tmp_path):
    cfg = tmp_path / "ax.yaml"
    ds = CONFIGS / "llamafactory/examples/deepspeed/ds_z3_config.json"
    cfg.write_text(f"base_model: x/y\nmicro_batch_size: 1\nsequence_len: 512\noptimizer: adamw_bnb_8bit\n"
                   f"deepspeed: {ds}\n")
    with pytest.raises(PlannerError, match="ax.yaml: optimizer 'adamw-8bit' is a bitsandbytes optimizer"):
        read_training_config(cfg)


def test_hf_training_arguments_json(tmp_path):
    """TrainingArguments as JSON (HfArgumentParser.parse_json_file): no sequence-length field, so seq_len is
    left to planner (unset); gradient_checkpointing's TrainingArguments default is False."""
    cfg = tmp_path / "args.json"
    cfg.write_text(json.dumps({"output_dir": "out", "per_device_train_batch_size": 4,
                               "gradient_accumulation_steps": 4, "optim": "adamw_torch", "fp16": True,
                               "torch_dtype": "float32"}))
    got = read_training_config(cfg)
    assert got.format == "hf" and got.model is None
    # fp32 weights, fp16 and no DeepSpeed: the Trainer's fp16 autocast (accelerate), planner's fp16-autocast
    assert got.train == TrainSpec(method=Method.FULL, precision=Precision.FP16_AUTOCAST, micro_batch=4,
                                  grad_accum=4, seq_len=2048, lora=LoraSpec(rank=16, alpha=32, dropout=0.05,
                                                                            targets=("q_proj", "v_proj")))
    assert "seq_len" in got.unset
    assert any("names no model" in n for n in got.notes)


def test_detect_format():
    assert detect_format({"finetuning_type": "lora", "cutoff_len": 1}) == "llamafactory"
    assert detect_format({"base_model": "x", "micro_batch_size": 1}) == "axolotl"
    assert detect_format({"model": {"_component_": "torchtune.models.llama2.llama2_7b"}}) == "torchtune"
    assert detect_format({"per_device_train_batch_size": 1}) == "hf"


# Catalog entries with the same layer shapes as the examples' hub models, for an offline estimate (Llama 3 and
# 3.1 8B differ only in RoPE scaling and position limit; Mistral 7B v0.1 and v0.3 in vocabulary, 32000 vs 32768).
SAME_SHAPES = {"meta-llama/Meta-Llama-3-8B-Instruct": "llama-3.1-8b", "meta-llama/Meta-Llama-3-8B": "llama-3.1-8b",
               "NousResearch/Meta-Llama-3-8B": "llama-3.1-8b", "mistralai/Mistral-7B-v0.1": "mistral-7b-v0.3"}


@pytest.mark.parametrize("rel", [e[0] for e in EXAMPLES])
def test_the_estimator_accepts_every_example(rel):
    """The TrainSpec a config gives is one the estimator takes (LoRA target names, precision, offload)."""
    from planner import catalog
    from planner.estimate.core import estimate
    from planner.models import load_model
    from planner.specs import Cluster

    got = read_training_config(CONFIGS / rel)
    model = load_model(SAME_SHAPES.get(got.model, got.model))
    result = estimate(model, got.train, Cluster(gpu=catalog.gpu("h100-sxm-80gb"), num_gpus=8 if got.train.zero_stage
                                                else 1))
    assert result is not None


def test_unknown_4bit_type_is_refused(tmp_path):
    cfg = tmp_path / "lf.yaml"
    cfg.write_text("model_name_or_path: x/y\nfinetuning_type: lora\nquantization_bit: 4\nquantization_type: int4\n")
    with pytest.raises(PlannerError, match="quantization_type: int4"):
        read_training_config(cfg)


def test_hf_names_are_transformers_own():
    """The TrainingArguments fields and optimizer names the reader maps exist in the pinned transformers."""
    from dataclasses import fields

    pytest.importorskip("transformers")
    from transformers.training_args import OptimizerNames, TrainingArguments

    from planner.from_config.fields import HF_OPTIMIZERS

    names = {f.name for f in fields(TrainingArguments)}
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "gradient_checkpointing", "bf16",
                "fp16", "optim", "deepspeed", "torch_compile", "use_liger_kernel", "fsdp", "fsdp_config"):
        assert key in names, key
    known = {o.value for o in OptimizerNames}
    older = {"adamw_hf", "adamw_apex_fused"}  # transformers 4.x names (AdamW), still found in older configs
    assert set(HF_OPTIMIZERS) - older <= known, sorted(set(HF_OPTIMIZERS) - known)
