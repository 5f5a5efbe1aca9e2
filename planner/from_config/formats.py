"""The four formats, each read with its project's own field names and defaults (torchtune's in torchtune_format.py)."""

from __future__ import annotations

from typing import Any

from planner.from_config.compile_fields import hf_compile
from planner.from_config.fields import (
    AXOLOTL_NO_MEMORY,
    HF_NO_MEMORY,
    LLAMAFACTORY_NO_MEMORY,
)
from planner.from_config.fsdp_fields import hf_fsdp
from planner.from_config.loss_fields import axolotl_loss, llamafactory_loss, trl_loss
from planner.from_config.packing_fields import (
    axolotl_packing,
    llamafactory_packing,
    trl_packing,
)
from planner.from_config.posttrain_fields import dpo_task, grpo_task, is_dpo, is_grpo, is_ppo, ppo_task
from planner.from_config.reader import (
    PEFT_DEFAULT_TARGETS,
    Reader,
    attention,
    hf_optimizer,
    lora_alpha,
    packing_note,
    trainer_precision,
)
from planner.from_config.torchtune_format import torchtune
from planner.specs import (
    LoraSpec,
    LossSpec,
    Method,
    Parallelism,
    Precision,
    QuantSpec,
    QuantType,
    TaskSpec,
)

# ---------------------------------------------------------------- LLaMA-Factory


def llamafactory(r: Reader) -> dict[str, Any]:
    """src/llamafactory/hparams: model_args.py, data_args.py, finetuning_args.py, training_args.py."""
    r.no_memory = LLAMAFACTORY_NO_MEMORY
    r.set_model(r.text("model_name_or_path"), "model_name_or_path")
    stage = r.text("stage", "sft")
    if stage not in ("sft", "pt"):
        r.refuse(f"stage: {stage}", "is a reward-model or preference stage (extra models or a second forward), "
                 "which planner does not model; it models sft and pt.")
    finetuning = r.text("finetuning_type", "lora")
    if finetuning not in ("lora", "full"):
        r.refuse(f"finetuning_type: {finetuning}", "is not modelled; planner models lora and full.")
    for key, why in (("use_dora", "(DoRA) keeps a weight-norm vector and its graph, which planner does not model."),
                     ("pissa_init", "changes the frozen base, which planner does not model."),
                     ("use_galore", "projects gradients (GaLore), which planner does not model."),
                     ("use_apollo", "is an optimizer planner has no rule for."),
                     ("use_badam", "is an optimizer planner has no rule for."),
                     ("use_adam_mini", "is an optimizer planner has no rule for."),
                     ("use_muon", "is an optimizer planner has no rule for."),
                     ("use_llama_pro", "expands the model with new blocks, which planner does not model."),
                     ("use_unsloth", "replaces the model's kernels, which planner does not model."),
                     ("use_unsloth_gc", "offloads checkpoints to the CPU, which planner does not model."),
                     ("shift_attn", "(S^2-Attn) is not modelled."),
                     ("mixture_of_depths", "is not modelled."),
                     ("fp8", "training is not modelled."),
                     ("use_dft_loss", "is a loss planner does not model."),
                     ("fsdp", "is not modelled; planner models DDP and DeepSpeed ZeRO."),
                     ("sequence_parallel_size", "is not modelled."),
                     ("upcast_lmhead_output", "upcasts the logits, which planner does not model.")):
        r.refuse_if(key, why)
    method = Method.LORA if finetuning == "lora" else Method.FULL
    bits = r.whole("quantization_bit", None)
    quant = QuantSpec()
    if bits is not None:
        qmethod = r.text("quantization_method", "bnb").lower()
        if bits != 4 or qmethod not in ("bnb", "bitsandbytes"):
            r.refuse(f"quantization_bit: {bits} ({qmethod})", "is not modelled; planner models bitsandbytes 4-bit "
                     "(QLoRA) only.")
        if method is not Method.LORA:
            r.refuse("quantization_bit: 4", "needs finetuning_type lora.")
        method = Method.QLORA
        quant = QuantSpec(quant_type=quant_type(r, "quantization_type"),
                          double_quant=bool(r.flag("double_quantization", True)))
    rank = r.whole("lora_rank", 8)
    targets = r.names("lora_target") or ("all",)
    lora = LoraSpec(rank=rank, alpha=lora_alpha(r, "lora_alpha", rank * 2), dropout=r.prob("lora_dropout", 0.0),
                    targets=("all-linear",) if "all" in targets else targets,
                    modules_to_save=r.names("additional_target") or ())
    ds = r.deepspeed()
    pure = bool(r.flag("pure_bf16", False))
    # LLaMA-Factory casts trainable parameters to fp32 unless pure_bf16 (model/adapter.py init_adapter).
    precision = Precision.BF16 if pure else trainer_precision(r, r.flag("bf16", None), r.flag("fp16", None), ds, method,
                                                        weights_16bit=False)
    if r.has("packing") or r.has("neat_packing") or stage == "pt":
        packing_note(r, bool(r.flag("packing", stage == "pt")) or bool(r.flag("neat_packing", False)), "cutoff_len")
    checkpointing = not r.flag("disable_gradient_checkpointing", False)
    if "disable_gradient_checkpointing" not in r.data:
        r.notes.append("LLaMA-Factory checkpoints every layer unless disable_gradient_checkpointing is set.")
    r.set_fields |= {k for k, f in (("seq_len", "cutoff_len"), ("micro_batch", "per_device_train_batch_size"),
                                    ("grad_accum", "gradient_accumulation_steps")) if r.has(f)}
    return dict(method=method, precision=precision, optimizer=hf_optimizer(r, "optim", "adamw_torch"), lora=lora,
                loss=llamafactory_loss(r), compile=hf_compile(r), packing=llamafactory_packing(r),
                quant=quant, parallelism=Parallelism.from_zero(ds["stage"], ds["offload"]) if ds else Parallelism(),
                micro_batch=r.whole("per_device_train_batch_size", 8), seq_len=r.whole("cutoff_len", 2048),
                grad_accum=r.whole("gradient_accumulation_steps", 1), grad_checkpointing=checkpointing,
                attn_impl=attention(r, None if r.text("flash_attn", "auto") == "auto" else r.text("flash_attn"),
                                "flash_attn"))


def quant_type(r: Reader, key: str) -> QuantType:
    value = r.text(key, "nf4").lower()
    if value not in ("nf4", "fp4"):
        r.refuse(f"{key}: {value}", "is not a bitsandbytes 4-bit type planner models (nf4 or fp4).")
    return QuantType(value)


# ---------------------------------------------------------------- axolotl


def axolotl(r: Reader) -> dict[str, Any]:
    """src/axolotl/utils/schemas/config.py (AxolotlInputConfig), peft.py (LoraConfig), training.py."""
    r.no_memory = AXOLOTL_NO_MEMORY
    r.set_model(r.text("base_model"), "base_model")
    for key, why in (("rl", "is a preference or RL trainer (reference model, extra forwards), not modelled."),
                     ("reward_model", "trains a reward model, not modelled."),
                     ("load_in_8bit", "holds the frozen base in 8 bits, which planner does not model (4-bit only)."),
                     ("peft_use_dora", "(DoRA) is not modelled."),
                     ("fsdp", "is not modelled; planner models DDP and DeepSpeed ZeRO."),
                     ("fsdp_config", "is not modelled; planner models DDP and DeepSpeed ZeRO."),
                     ("unsloth_cross_entropy_loss", "is not modelled."),
                     ("unsloth_lora_mlp", "is not modelled."), ("unsloth_lora_qkv", "is not modelled."),
                     ("unsloth_lora_o", "is not modelled."),
                     ("lora_mlp_kernel", "replaces LoRA's autograd, not modelled."),
                     ("lora_qkv_kernel", "replaces LoRA's autograd, not modelled."),
                     ("lora_o_kernel", "replaces LoRA's autograd, not modelled."),
                     ("flash_attn_cross_entropy", "is a fused loss planner does not model."),
                     ("sequence_parallel_degree", "is not modelled."), ("s2_attention", "is not modelled."),
                     ("xformers_attention", "is not modelled."), ("flex_attention", "is not modelled."),
                     ("fp8", "training is not modelled."), ("gptq", "base weights are not modelled."),
                     ("relora_steps", "(ReLoRA) is not modelled.")):
        r.refuse_if(key, why)
    adapter = r.text("adapter")
    method = {None: Method.FULL, "lora": Method.LORA, "qlora": Method.QLORA}.get(adapter)
    if method is None:
        r.refuse(f"adapter: {adapter}", "is not modelled; planner models lora and qlora.")
    four = r.flag("load_in_4bit", False)
    if four and method is not Method.QLORA:
        r.refuse("load_in_4bit: true", "without adapter: qlora is not a run planner models.")
    if method is Method.QLORA and r.has("bnb_config_kwargs"):
        r.refuse("bnb_config_kwargs", "changes the 4-bit layout; planner models nf4 with double quantization.")
    checkpointing = r.get("gradient_checkpointing", False)
    if checkpointing not in (True, False):
        r.refuse(f"gradient_checkpointing: {checkpointing}", "(offloaded checkpoints) is not modelled.")
    if r.data.get("gradient_checkpointing_kwargs"):
        r.used.add("gradient_checkpointing_kwargs")
    rank = r.whole("lora_r", 8)
    targets = r.names("lora_target_modules") or ()
    if r.flag("lora_target_linear", False):
        targets = ("all-linear",)
    if method is not Method.FULL and not targets:
        r.notes.append(f"No LoRA targets named: peft's default for Llama-like models, {','.join(PEFT_DEFAULT_TARGETS)}.")
        targets = PEFT_DEFAULT_TARGETS
    lora = LoraSpec(rank=rank, alpha=lora_alpha(r, "lora_alpha", rank * 2), dropout=r.prob("lora_dropout", 0.0),
                    targets=targets or ("all-linear",), modules_to_save=r.names("lora_modules_to_save") or ())
    ds = r.deepspeed()
    bf16 = r.get("bf16", "auto")
    if bf16 == "auto":
        r.notes.append("bf16: auto is read as bf16 (axolotl picks it where the GPU supports bf16).")
        bf16 = not r.flag("fp16", False)
    if r.flag("bfloat16", False) or r.flag("float16", False):
        r.refuse("bfloat16/float16", "(16-bit weights without autocast) is not read yet; use bf16.")
    precision = trainer_precision(r, bool(bf16), r.flag("fp16", None), ds, method, weights_16bit=True)
    attn = ("flash_attention_2" if r.flag("flash_attention", False) else "sdpa" if r.flag("sdp_attention", False)
            else "eager" if r.flag("eager_attention", False) else None)
    packing, padded = r.flag("sample_packing", False), r.flag("pad_to_sequence_len", False)
    if r.flag("eval_sample_packing", None) is not None:
        r.ignored["eval_sample_packing"] = "packs the evaluation set only"
    packing_note(r, bool(packing) or bool(padded), "sequence_len")
    r.set_fields |= {k for k, f in (("seq_len", "sequence_len"), ("micro_batch", "micro_batch_size"),
                                    ("grad_accum", "gradient_accumulation_steps")) if r.has(f)}
    return dict(method=method, precision=precision, optimizer=hf_optimizer(r, "optimizer", "adamw_torch_fused"),
                lora=lora, loss=axolotl_loss(r), compile=hf_compile(r), packing=axolotl_packing(r, attn), quant=QuantSpec(), parallelism=Parallelism.from_zero(ds["stage"], ds["offload"]) if ds else Parallelism(),
                micro_batch=r.whole("micro_batch_size", 1),
                seq_len=r.whole("sequence_len", 512), grad_accum=r.whole("gradient_accumulation_steps", 1),
                grad_checkpointing=bool(checkpointing), attn_impl=attention(r, attn, "attention"))


# ---------------------------------------------------------------- Hugging Face TrainingArguments / TRL


def quant_storage(r: Reader, stage: int, precision: Precision) -> None:
    """TRL ModelConfig's ``bnb_4bit_quant_storage``: under ZeRO-3 planner partitions the 4-bit weights stored in the
    compute dtype (peft's QLoRA with ZeRO-3 recipe; estimate/qlora_shard.py), below it the packed bytes are the same
    whatever the storage dtype."""
    storage = r.text("bnb_4bit_quant_storage")
    names = {"bf16": ("bfloat16", "bf16"), "fp16": ("float16", "fp16")}.get(precision.compute_dtype, ())
    if stage == 3 and storage is None:
        r.notes.append("bnb_4bit_quant_storage is unset: under ZeRO-3 planner stores the 4-bit weights in the "
                       f"compute dtype ({precision.compute_dtype}), as peft's QLoRA with ZeRO-3 recipe sets it.")
    elif stage == 3 and storage not in names:
        r.refuse(f"bnb_4bit_quant_storage: {storage}", f"under ZeRO-3 is modelled as the compute dtype "
                 f"({precision.compute_dtype}) only.")




def hf(r: Reader) -> dict[str, Any]:
    """transformers TrainingArguments (training_args.py), TRL SFTConfig (trl/trainer/sft_config.py) and
    ModelConfig (trl/trainer/model_config.py): the fields of a TRL script's --config YAML."""
    r.no_memory = HF_NO_MEMORY
    # TRL's own fields (SFTConfig, ModelConfig); model_name_or_path alone is also in transformers' example scripts.
    trl = any(k in r.data for k in ("max_seq_length", "max_length", "packing", "dataset_text_field", "use_peft",
                                    "lora_r", "completion_only_loss", "assistant_only_loss", "padding_free",
                                    "loss_type", "use_bnb_nested_quant")) or is_dpo(r) or is_grpo(r) or is_ppo(r)
    r.set_model(r.text("model_name_or_path"), "model_name_or_path")
    hf_fsdp(r)  # fsdp, fsdp_config: FSDP2 (fsdp_fields.py)
    for key, why in (("use_liger_kernel", "replaces the loss and MLP kernels (Liger), which planner does not model."),
                     ("load_in_8bit", "holds the frozen base in 8 bits, which planner does not model (4-bit only)."),
                     ("use_dora", "(DoRA) is not modelled."),
                     ("activation_offloading", "moves activations to the CPU, which planner does not model."),
                     ("neftune_noise_alpha", "adds noise tensors to the embeddings, which planner does not model."),
                     ("fp8", "training is not modelled.")):
        r.refuse_if(key, why)
    task = ppo_task(r) if is_ppo(r) else grpo_task(r) if is_grpo(r) else dpo_task(r) if is_dpo(r) else TaskSpec()
    # a DPOConfig's loss_type is DPO's own loss (posttrain_fields.py); an SFTConfig's is SFTTrainer's (loss_fields.py)
    loss = trl_loss(r, trl) if task.is_default else LossSpec()
    peft = bool(r.flag("use_peft", False))
    four = bool(r.flag("load_in_4bit", False))
    if four and not peft:
        r.refuse("load_in_4bit: true", "without use_peft trains a 4-bit base in full, which is not possible.")
    method = Method.QLORA if four else Method.LORA if peft else Method.FULL
    quant = QuantSpec()
    if four:
        quant = QuantSpec(quant_type=quant_type(r, "bnb_4bit_quant_type"),
                          double_quant=bool(r.flag("use_bnb_nested_quant", False)))
    rank = r.whole("lora_r", 16)
    targets = r.names("lora_target_modules")
    if method is not Method.FULL and targets is None:
        r.notes.append(f"lora_target_modules is unset: peft's default for Llama-like models, "
                       f"{','.join(PEFT_DEFAULT_TARGETS)}.")
    lora = LoraSpec(rank=rank, alpha=lora_alpha(r, "lora_alpha", 32), dropout=r.prob("lora_dropout", 0.05),
                    targets=targets or PEFT_DEFAULT_TARGETS, modules_to_save=r.names("lora_modules_to_save") or ())
    dtype_key = "dtype" if r.has("dtype") else "torch_dtype"
    dtype = r.text(dtype_key)
    ds = r.deepspeed()
    bf16, fp16 = r.flag("bf16", None), r.flag("fp16", None)
    if trl and bf16 is None and not fp16:
        r.notes.append("bf16 is unset: TRL's SFTConfig turns it on unless fp16 is set.")
        bf16 = True
    if method is Method.FULL and (ds is None or ds["stage"] == 0) and (bf16 or fp16) and dtype in (None, "auto"):
        r.refuse(f"{dtype_key}: {dtype or 'unset'}", "leaves the weights' dtype to the checkpoint or the library "
                 "version, which decides between pure 16-bit and mixed precision; set it to bfloat16 or float32.")
    precision = trainer_precision(r, bf16, fp16, ds, method, weights_16bit=dtype in ("bfloat16", "float16", "bf16", "fp16"))
    if four:
        quant_storage(r, ds["stage"] if ds else 0, precision)
    checkpointing = r.flag("gradient_checkpointing", None)
    if checkpointing is None:
        checkpointing = trl
        r.notes.append(f"gradient_checkpointing is unset: {'TRL' if trl else 'TrainingArguments'} defaults to "
                       f"{checkpointing}.")
    seq_key = "max_length" if r.has("max_length") else "max_seq_length"
    seq = r.whole(seq_key, None)
    if seq is None:
        if task.grpo is not None:
            r.notes.append("a GRPOConfig has no prompt length (the dataset's prompts are kept whole): the estimate "
                           "uses planner's default sequence, prompt plus max_completion_length (set --seq-len).")
        elif trl:
            r.notes.append("max_length is unset: TRL's SFTConfig truncates at 1024 tokens.")
            seq = 1024
        else:
            r.notes.append("TrainingArguments has no sequence length: the script's tokenizer decides it; the "
                           "estimate uses planner's default (set --seq-len).")
    if r.flag("packing", False) or r.flag("padding_free", False):
        packing_note(r, True, seq_key)
    elif trl:
        packing_note(r, False, seq_key)
    r.set_fields |= {k for k, f in (("micro_batch", "per_device_train_batch_size"),
                                    ("grad_accum", "gradient_accumulation_steps")) if r.has(f)}
    if seq is not None:
        r.set_fields.add("seq_len")
    return dict(method=method, precision=precision, optimizer=hf_optimizer(r, "optim", "adamw_torch_fused"),
                lora=lora, quant=quant, compile=hf_compile(r), packing=trl_packing(r), parallelism=Parallelism.from_zero(ds["stage"], ds["offload"]) if ds else Parallelism(),
                micro_batch=r.whole("per_device_train_batch_size", 8),
                seq_len=seq or 2048, grad_accum=r.whole("gradient_accumulation_steps", 1),
                grad_checkpointing=bool(checkpointing), attn_impl=attention(r, r.text("attn_implementation"),
                                                                        "attn_implementation"), task=task, loss=loss)


__all__ = ["axolotl", "hf", "llamafactory", "quant_storage", "quant_type", "torchtune"]
