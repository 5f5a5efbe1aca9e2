"""train.py, the model part: the config (random init, dropout), the model as planned, the LoRA adapters.

Mixed-precision full fine-tuning keeps fp32 weights, QLoRA loads the base in 4 bits through bitsandbytes.
"""

from __future__ import annotations

MODEL = r'''# ---------------------------------------------------------------- model


def torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name, torch.float32)


def load_config(args: argparse.Namespace, vocab_size: int | None):
    from transformers import AutoConfig

    if args.random_init:
        raw = json.loads(Path(args.random_init).read_text())
        config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    else:
        config = AutoConfig.from_pretrained(args.model)
    if vocab_size is not None and vocab_size > config.vocab_size:
        fail(f"the tokenizer has {vocab_size} ids but the model's vocab_size is {config.vocab_size}.")
    if args.dropout is not None:
        for key, value in config.to_dict().items():
            if isinstance(value, float) and ("dropout" in key or key.endswith("pdrop")):
                setattr(config, key, args.dropout)
    return config


def build_model(args: argparse.Namespace, vocab_size: int | None, training_args):
    import torch
    from transformers import AutoModelForCausalLM

    config = load_config(args, vocab_size)
    compute = {"bf16-mixed": "bf16", "bf16-autocast": "bf16", "bf16": "bf16", "fp16-mixed": "fp16",
               "fp16-autocast": "fp16", "bf16-base-autocast": "bf16"}.get(args.precision, "fp32")
    # Full fine-tuning in mixed precision keeps fp32 weights (the master copy: DeepSpeed casts its working
    # copy to 16 bits; without DeepSpeed the Trainer autocasts them, --precision bf16-autocast); a frozen
    # (Q)LoRA base and pure bf16 hold 16-bit weights, and peft keeps the adapters in fp32; under
    # --precision bf16-autocast a LoRA base stays fp32 too (the Trainer autocasts its forward); under
    # bf16-base-autocast the LoRA base is loaded in bf16 and the Trainer autocasts its forward.
    autocast = args.precision.endswith("-autocast") and args.precision != "bf16-base-autocast"
    weights = compute if args.precision == "bf16" or (args.method != "full" and not autocast) else "fp32"
    kwargs = {"attn_implementation": args.attn_impl, "dtype": torch_dtype(weights)}
    source, scratch = args.model, None
    if args.random_init:
        torch.manual_seed(args.seed)  # every rank builds the same weights
        model = AutoModelForCausalLM.from_config(config, **kwargs)
        if args.method != "qlora":
            return model
        # bitsandbytes quantizes while loading: rank 0 saves the random weights, then every rank loads them
        # in 4 bits (several nodes need a shared --output-dir for this).
        source = scratch = str(Path(args.output_dir) / "random-init-weights")
        whole = contextlib.nullcontext()
        if hasattr(next(model.parameters()), "ds_id"):
            # ZeRO-3: from_config built it partitioned under zero.Init; every rank gathers it to save whole tensors
            import deepspeed

            whole = deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
        with whole, training_args.main_process_first(local=False, desc="saving random weights"):
            model.save_pretrained(source)  # writes on rank 0 only
        del model
    if args.method == "qlora":
        from transformers import BitsAndBytesConfig
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

        # ZeRO-3 partitions the packed 4-bit weights like any 16-bit parameter: peft's "PEFT QLoRA and DeepSpeed
        # with ZeRO3" recipe stores them in the compute dtype (bnb_4bit_quant_storage), and transformers refuses
        # a device_map under ZeRO-3 (integrations/accelerate.py): DeepSpeed moves and partitions the model.
        zero3 = is_deepspeed_zero3_enabled()
        storage = {"bnb_4bit_quant_storage": torch_dtype(compute)} if zero3 else {}
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=args.quant_type,
            bnb_4bit_use_double_quant=args.double_quant,
            bnb_4bit_compute_dtype=torch_dtype(compute),
            **storage,
        )
        if not zero3:
            kwargs["device_map"] = {"": training_args.device}  # each rank loads a copy onto its own device
    model = AutoModelForCausalLM.from_pretrained(source, config=config, **kwargs)
    if scratch:
        with training_args.main_process_first(local=False, desc="removing random weights"):
            pass  # every rank has loaded them
        if training_args.process_index == 0:
            shutil.rmtree(scratch, ignore_errors=True)
    return model


def add_adapters(model, args: argparse.Namespace):
    if args.method == "full":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    # --qlora-prep fp32: peft's recipe casts the unquantized parameters to fp32; 16bit keeps them in the compute
    # dtype (torchtune, Unsloth), and the Trainer enables checkpointing itself.
    if args.method == "qlora" and args.qlora_prep == "fp32":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=args.grad_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    config = LoraConfig(
        r=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        modules_to_save=[m.strip() for m in args.modules_to_save.split(",") if m.strip()] or None,
        task_type="CAUSAL_LM",
    )
    # --lora-dtype fp32: peft upcasts the adapters (autocast_adapter_dtype=True); 16bit keeps the compute dtype.
    return get_peft_model(model, config, autocast_adapter_dtype=args.lora_dtype == "fp32")


def selective_checkpointing(model, option: str) -> None:
    """--selective-ac: torchtitan's selective activation checkpointing through transformers' per-layer
    non-reentrant checkpoint. "N": every N-th decoder layer (counted from 1, as torchtitan and torchtune count).
    "op": every layer with torch's create_selective_checkpoint_contexts over torchtitan's op policy (save the
    SDPA kernels' outputs and each layer's odd-numbered aten.mm outputs, recompute the rest)."""
    if not option:
        return
    from collections import defaultdict

    import torch
    from transformers.modeling_layers import GradientCheckpointingLayer

    kwargs = {"use_reentrant": False}
    if option == "op":
        from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

        aten = torch.ops.aten
        sdpa = {getattr(aten, n).default for n in (
            "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention",
            "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu") if hasattr(aten, n)}

        def context_fn():
            meta = defaultdict(int)

            def policy(ctx, func, *args, **kw):
                key = "recompute" if ctx.is_recompute else "forward"
                if func == aten.mm.default:
                    meta[key] += 1
                    save = meta[key] % 2 == 1
                else:
                    save = func in sdpa
                return CheckpointPolicy.MUST_SAVE if save else CheckpointPolicy.PREFER_RECOMPUTE

            return create_selective_checkpoint_contexts(policy)

        kwargs["context_fn"] = context_fn
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers < 5
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if option != "op":
        layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
        for i, layer in enumerate(layers):
            if (i + 1) % int(option):
                layer.gradient_checkpointing = False


'''
