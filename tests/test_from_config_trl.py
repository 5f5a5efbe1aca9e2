"""`--from` on TRL SFTConfig files, checked against TRL's own config classes (TRL 1.16, in the lock).

The reader never imports TRL; here TRL parses the same files (``HfArgumentParser`` over ``SFTConfig`` and
``ModelConfig``, what ``TrlParser`` builds on) and planner's reading must agree with what TRL parsed, defaults
included (SFTConfig's ``gradient_checkpointing``, ``bf16``, ``max_length`` 1024 and ``loss_type`` "nll", which
SFTTrainer runs through its fused LM head: ``--loss trl-fused-lm-head``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from planner.from_config import read_training_config
from planner.specs import Loss, Method, Optimizer, Precision

CONFIGS = Path(__file__).resolve().parent.parent / "examples" / "configs"
ZEPHYR = ("hf/zephyr-7b-beta_sft_config_full.yaml", "hf/zephyr-7b-beta_sft_config_lora.yaml",
          "hf/zephyr-7b-beta_sft_config_qlora.yaml")
# Fields the alignment-handbook files (written for an older TRL) use under names TRL 1.16 renamed: SFTConfig's
# max_seq_length is max_length, ModelConfig's torch_dtype is dtype. planner reads both spellings.
RENAMED = {"max_seq_length": "max_length", "torch_dtype": "dtype"}
OPTIMIZERS = {"adamw_torch_fused": Optimizer.ADAMW_FUSED, "adamw_torch": Optimizer.ADAMW}


def _trl_parse(data: dict):
    pytest.importorskip("trl")
    from transformers import HfArgumentParser
    from trl import ModelConfig, SFTConfig

    data = {RENAMED.get(k, k): v for k, v in data.items()}
    # use_cpu: TrainingArguments refuses bf16 where no device has it; nothing planner reads depends on it
    sft, model = HfArgumentParser((SFTConfig, ModelConfig)).parse_dict({**data, "use_cpu": True},
                                                                      allow_extra_keys=True)
    return sft, model


def _check_agrees(got, sft, model) -> None:
    train = got.train
    assert train.micro_batch == sft.per_device_train_batch_size
    assert train.grad_accum == sft.gradient_accumulation_steps
    assert train.seq_len == sft.max_length
    assert train.grad_checkpointing == sft.gradient_checkpointing
    assert train.optimizer is OPTIMIZERS[str(getattr(sft.optim, "value", sft.optim))]
    assert sft.loss_type == "nll" and train.loss.kind is Loss.TRL_FUSED_LM_HEAD
    want_method = Method.QLORA if model.load_in_4bit else Method.LORA if model.use_peft else Method.FULL
    assert train.method is want_method
    if model.use_peft:
        assert train.lora.rank == model.lora_r and train.lora.alpha == model.lora_alpha
        assert train.lora.dropout == model.lora_dropout
        if model.lora_target_modules:
            assert list(train.lora.targets) == list(model.lora_target_modules)
    assert sft.bf16 and train.precision in (Precision.BF16, Precision.BF16_MIXED)
    if model.attn_implementation:
        assert train.attn_impl.value == model.attn_implementation


@pytest.mark.parametrize("rel", ZEPHYR)
def test_the_example_sft_configs_read_as_trl_parses_them(rel):
    data = yaml.safe_load((CONFIGS / rel).read_text())
    sft, model = _trl_parse(data)
    got = read_training_config(CONFIGS / rel)
    assert got.model == model.model_name_or_path
    _check_agrees(got, sft, model)


@pytest.mark.parametrize("fields", [
    # dataset_text_field: an SFTConfig field (a file with only TrainingArguments' fields is read as the Trainer's)
    {"model_name_or_path": "mistral-7b-v0.3", "dtype": "bfloat16", "per_device_train_batch_size": 2,
     "dataset_text_field": "text"},
    {"model_name_or_path": "llama-3.1-8b", "dtype": "bfloat16", "use_peft": True, "lora_r": 8,
     "lora_target_modules": ["q_proj", "v_proj"], "max_length": 4096, "gradient_checkpointing": False,
     "loss_type": "nll", "optim": "adamw_torch", "gradient_accumulation_steps": 4},
    {"model_name_or_path": "llama-3.1-8b", "dtype": "bfloat16", "use_peft": True, "load_in_4bit": True,
     "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.1, "lora_target_modules": ["q_proj", "k_proj", "v_proj"],
     "max_length": 512, "per_device_train_batch_size": 4},
])  # fmt: skip
def test_a_trl_116_sft_config_reads_with_trls_own_defaults(tmp_path, fields):
    """A config in TRL 1.16's own field names, silent where TRL has defaults: planner's reading equals TRL's
    parse, whose defaults (SFTConfig: gradient checkpointing on, bf16 on, max_length 1024, loss_type nll,
    optim adamw_torch_fused) it must apply too."""
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump(fields))
    sft, model = _trl_parse(fields)
    got = read_training_config(cfg)
    _check_agrees(got, sft, model)


def test_trl_loss_types_are_the_ones_planner_reads():
    """SFTConfig's loss_type values: nll (and its deprecated alias chunked_nll, turned into nll) are read as the
    fused LM head; dft is refused."""
    pytest.importorskip("trl")
    from trl import SFTConfig

    with pytest.warns(FutureWarning):
        assert SFTConfig(output_dir="x", use_cpu=True, loss_type="chunked_nll").loss_type == "nll"
    assert SFTConfig(output_dir="x", use_cpu=True).loss_type == "nll"


@pytest.mark.parametrize("storage", ["bfloat16", None, "uint8"])
def test_trl_bnb_4bit_quant_storage_under_zero3(tmp_path, storage):
    """ModelConfig's bnb_4bit_quant_storage (trl/trainer/model_config.py): QLoRA under ZeRO-3 is read with the 4-bit
    weights stored in the compute dtype (estimate/qlora_shard.py), said in a note when unset; uint8 is refused."""
    from planner.errors import PlannerError

    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 3}, "bf16": {"enabled": "auto"}}')
    fields = {"model_name_or_path": "Qwen/Qwen2.5-0.5B", "use_peft": True, "load_in_4bit": True, "bf16": True,
              "dtype": "bfloat16", "deepspeed": str(tmp_path / "ds.json")}
    if storage:
        fields["bnb_4bit_quant_storage"] = storage
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump(fields))
    if storage == "uint8":
        with pytest.raises(PlannerError, match="bnb_4bit_quant_storage"):
            read_training_config(cfg)
        return
    got = read_training_config(cfg)
    assert got.train.method is Method.QLORA and got.train.zero_stage == 3
    assert any("bnb_4bit_quant_storage is unset" in n for n in got.notes) is (storage is None)
