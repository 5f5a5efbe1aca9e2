"""train.py, the run part: the DeepSpeed config of this run, TrainingArguments, the Trainer, the summary."""

from __future__ import annotations

RUN = r'''# ---------------------------------------------------------------- run


def deepspeed_config(args: argparse.Namespace, world_size: int) -> dict | None:
    if not args.deepspeed:
        return None
    config = json.loads(Path(args.deepspeed).read_text())
    # The batch keys must agree with this run: an override or another number of processes rewrites them.
    wanted = {
        "train_micro_batch_size_per_gpu": args.micro_batch,
        "gradient_accumulation_steps": args.grad_accum,
        "train_batch_size": args.micro_batch * args.grad_accum * world_size,
        "gradient_clipping": args.max_grad_norm,
    }
    for key, value in wanted.items():
        if config.get(key) not in ("auto", value):
            print(f"train.py: {key} {config.get(key)} -> {value} for this run", file=sys.stderr)
        config[key] = value
    return config


def checkpointing_kwargs(training_arguments_cls, enabled: bool) -> dict:
    # transformers 5 renamed gradient_checkpointing to activation_checkpointing.
    name = "activation_checkpointing"
    if name not in training_arguments_cls.__dataclass_fields__:
        name = "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def offloading(trainer_cls, enabled: bool):
    """--activation-offload: the Trainer's forward and loss (transformers computes the loss inside the model's
    forward) run under torch.autograd.graph.save_on_cpu(pin_memory=True): every tensor autograd saves is copied
    to (pinned, where there is an accelerator) host RAM, and each backward node gets a device copy back."""
    if not enabled:
        return trainer_cls
    import torch

    class OffloadingTrainer(trainer_cls):
        def compute_loss(self, model, inputs, *args, **kwargs):
            with torch.autograd.graph.save_on_cpu(pin_memory=True):
                return super().compute_loss(model, inputs, *args, **kwargs)

    return OffloadingTrainer


def in_backward_optimizers(model, args: argparse.Namespace, training_args):
    """--optimizer-in-backward (torchtune's optimizer_in_bwd, training/memory.py register_optim_in_bwd_hooks):
    one torch optimizer per trainable parameter, stepped in its post-accumulate-grad hook, which then frees the
    gradient. The Trainer gets a stand-in whose step() only hands the scheduled learning rate on."""
    if not args.optimizer_in_backward:
        return None, None
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    lr, decay = training_args.learning_rate, training_args.weight_decay

    def make(p):
        if args.optimizer == "sgd":
            return torch.optim.SGD([p], lr=lr, momentum=0.9, weight_decay=decay)
        return torch.optim.AdamW([p], lr=lr, weight_decay=decay, fused=args.optimizer == "adamw-fused" or None)

    optim_dict = {p: make(p) for p in params}

    def optim_step(param) -> None:
        optim_dict[param].step()
        optim_dict[param].zero_grad()

    for p in params:
        p.register_post_accumulate_grad_hook(optim_step)

    class SteppedInBackward(torch.optim.Optimizer):
        def __init__(self):
            super().__init__(params, {"lr": lr})
            self.optimizers = list(optim_dict.values())  # where the states are

        def step(self, closure=None):
            for opt in optim_dict.values():
                for group in opt.param_groups:
                    group["lr"] = self.param_groups[0]["lr"]

        def zero_grad(self, set_to_none: bool = True) -> None:
            pass

    return SteppedInBackward(), None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    texts = read_texts(args)  # fail on a bad dataset before loading anything large
    if args.engine == "fsdp2":  # planner's FSDP2 layout: a plain torch loop (the fsdp2 part above)
        return train_fsdp2(args, texts)
    from transformers import Trainer, TrainingArguments, default_data_collator

    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    if args.deepspeed and "LOCAL_RANK" not in os.environ:  # `python train.py` without a launcher: one process
        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": os.environ.get("MAIN_PROCESS_PORT", "29500")}.items():
            os.environ.setdefault(key, value)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    deepspeed = deepspeed_config(args, world_size)
    accelerator_config = None
    if args.cpu and deepspeed is not None and "LOCAL_RANK" in os.environ:
        # Without a GPU accelerate sets up no process group for DeepSpeed (and its CPU mode turns DeepSpeed
        # off): start it with gloo, DeepSpeed's CPU backend, and have the Trainer use that state.
        from accelerate import PartialState

        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend="gloo")
        accelerator_config = {"use_configured_state": True}
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.grad_accum,
        bf16=args.precision in ("bf16-mixed", "bf16-autocast", "bf16", "bf16-base-autocast"),
        fp16=args.precision in ("fp16-mixed", "fp16-autocast"),
        optim=OPTIMIZERS[args.optimizer],
        optim_args="momentum=0.9" if args.optimizer == "sgd" else None,  # the planned SGD keeps momentum
        learning_rate=args.learning_rate,
        max_grad_norm=args.max_grad_norm,
        max_steps=args.max_steps,
        num_train_epochs=args.epochs,
        logging_steps=args.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        deepspeed=deepspeed,
        use_cpu=args.cpu,
        ddp_backend="gloo" if args.cpu and world_size > 1 else None,
        accelerator_config=accelerator_config,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        torch_compile=args.torch_compile,
        **checkpointing_kwargs(TrainingArguments, args.grad_checkpointing),
        **loss_arguments(args),
    )
    training_args.device  # noqa: B018 - sets up the process group and this rank's device before the model
    tokenizer = load_tokenizer(args)
    rows = pack_documents if args.packing else pack
    train_dataset = rows(texts, tokenizer, args.seq_len, args.micro_batch * args.grad_accum * world_size)
    model = build_model(args, len(tokenizer) if args.random_init else None, training_args)
    selective_checkpointing(model, args.selective_ac)
    model = add_adapters(model, args)
    trainer = offloading(trainer_class(Trainer, args), args.activation_offload)(
        model=model, args=training_args, train_dataset=train_dataset,
        data_collator=flatten_rows if args.packing else default_data_collator,
        optimizers=in_backward_optimizers(model, args, training_args),
    )
    result = trainer.train()
    if not args.no_save:
        trainer.save_model(args.output_dir)
    params = list(model.parameters())
    summary = {
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "loss_is_finite": math.isfinite(result.training_loss),
        "world_size": training_args.world_size,
        "process_index": training_args.process_index,
        "distributed_type": str(trainer.accelerator.distributed_type.value),
        "zero_stage": trainer.model_wrapped.zero_optimization_stage() if deepspeed else 0,
        "model": None if args.random_init else args.model,
        "method": args.method,
        "precision": args.precision,
        "micro_batch": args.micro_batch,
        "grad_accum": args.grad_accum,
        "seq_len": args.seq_len,
        "activation_offload": args.activation_offload,
        "optimizer_in_backward": args.optimizer_in_backward,
        "torch_compile": args.torch_compile,
        "packing": args.packing,
        "loss": args.loss,
        "param_dtypes": sorted({str(p.dtype).replace("torch.", "") for p in params}),
        # Under ZeRO-3 a rank holds a partition: ds_numel is a parameter's full size, numel() the local part.
        "num_params": sum(getattr(p, "ds_numel", p.numel()) for p in params),
        "num_trainable_params": sum(getattr(p, "ds_numel", p.numel()) for p in params if p.requires_grad),
        "num_local_param_elements": sum(p.numel() for p in params),
        "num_4bit_modules": sum(  # bitsandbytes' own layers (peft's LoRA wrappers share the class name)
            type(m).__name__ == "Linear4bit" and type(m).__module__.startswith("bitsandbytes")
            for m in model.modules()
        ),
    }
    out = Path(args.output_dir) / f"run_summary.rank{training_args.process_index}.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    if trainer.is_world_process_zero():
        print(json.dumps(summary))
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # every rank waits until the others are done (rank 0 may still be writing the model), then leaves the
        # process group before the interpreter exits: a rank that exited while another still talked to it
        # aborted ("terminate called without an active exception") after a successful run
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
'''
