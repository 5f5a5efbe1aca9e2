"""The TRL train.py, second part: the rows, the tokenizer, the policy as planned, the trainer and the run summary.

``planned_trainer`` is the trainer subclass planner's own profiler runs (planner/profile/trl_setup.py): torch's
AdamW built with the planned implementation (foreach, or fused) on the parameters TRL leaves trainable. The
reference is TRL's own: DPOTrainer and GRPOTrainer load a full policy's frozen copy from its path
(``create_model_from_path(get_config_model_id(model.config))``), so random weights are saved first.
"""

from __future__ import annotations

RUN = r'''# ---------------------------------------------------------------- data


def read_rows(args: argparse.Namespace) -> list[dict]:
    fields = FIELDS[args.task]
    path = Path(args.dataset)
    if not path.is_absolute() and not path.exists() and (HERE / path).exists():
        path = HERE / path
    if path.is_dir():
        fail(f"--dataset {args.dataset!r} is a directory; pass a .jsonl file or a hub dataset name.")
    if path.exists():
        rows = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    fail(f"{path}:{number} is not valid JSON ({exc.msg}).")
                if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in fields):
                    fail(f"{path}:{number} needs string fields {', '.join(fields)} for {args.task}.")
                rows.append({k: record[k] for k in fields})
        if not rows:
            fail(f"{path} has no rows.")
        return rows
    if path.suffix in (".jsonl", ".json"):
        fail(f"--dataset file {args.dataset!r} does not exist (relative paths are tried here and next to train.py); "
             "pass --dataset sample.jsonl (the bundle's sample) for a smoke run.")
    import datasets

    try:
        ds = datasets.load_dataset(args.dataset, split=args.dataset_split)
    except (OSError, ValueError) as exc:  # not on the hub, no network (HF_HUB_OFFLINE), a bad split
        fail(f"could not load dataset {args.dataset!r} ({type(exc).__name__}: {str(exc).splitlines()[0]}).")
    missing = [k for k in fields if k not in ds.column_names]
    if missing:
        fail(f"dataset {args.dataset!r} has no column {', '.join(missing)}; it has {', '.join(ds.column_names)}.")
    return [{k: r[k] for k in fields} for r in ds]


def load_tokenizer(args: argparse.Namespace):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ---------------------------------------------------------------- model


def torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name, torch.float32)


def compute_dtype(args: argparse.Namespace) -> str:
    return {"bf16-mixed": "bf16", "bf16-autocast": "bf16", "bf16": "bf16", "fp16-mixed": "fp16",
            "fp16-autocast": "fp16"}.get(args.precision, "fp32")


def builds_reference_copy(args: argparse.Namespace) -> bool:
    """TRL loads a frozen copy from the policy's path: a full policy with a reference (DPO's copy, GRPO's beta)."""
    if args.method != "full":
        return False
    return args.reference == "copy" if args.task == "dpo" else args.beta != 0.0


def build_model(args: argparse.Namespace, training_args):
    """The policy in the planned dtype (full mixed precision keeps fp32 weights; a frozen (Q)LoRA base and pure
    bf16 hold 16-bit ones); QLoRA loads its base in 4 bits through bitsandbytes."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    compute = compute_dtype(args)
    autocast = args.precision.endswith("-autocast")
    weights = compute if args.precision == "bf16" or (args.method != "full" and not autocast) else "fp32"
    kwargs = {"attn_implementation": args.attn_impl, "dtype": torch_dtype(weights)}
    source = args.model
    if args.random_init:
        raw = json.loads(Path(args.random_init).read_text())
        config = AutoConfig.for_model(raw.pop("model_type"), **raw)
        torch.manual_seed(args.seed)  # every rank builds the same weights
        model = AutoModelForCausalLM.from_config(config, **kwargs)
        if args.method != "qlora" and not builds_reference_copy(args):
            return model, None
        # TRL loads the reference copy from the policy's path, bitsandbytes quantizes while loading: rank 0 saves
        # the random weights (several nodes need a shared --output-dir for this)
        source = str(Path(args.output_dir) / "random-init-weights")
        whole = contextlib.nullcontext()
        if hasattr(next(model.parameters()), "ds_id"):
            # ZeRO-3: from_config built it partitioned under zero.Init; every rank gathers it so that rank 0 saves
            # whole tensors (the reference TRL loads from them would not match the config otherwise)
            import deepspeed

            whole = deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
        with whole, training_args.main_process_first(local=False, desc="saving random weights"):
            model.save_pretrained(source)
        if args.method != "qlora":
            model.config._name_or_path = source  # get_config_model_id: where TRL loads the reference from
            return model, source
        del model
    if args.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=args.quant_type, bnb_4bit_use_double_quant=args.double_quant,
            bnb_4bit_compute_dtype=torch_dtype(compute))
        kwargs["device_map"] = {"": training_args.device}
    return AutoModelForCausalLM.from_pretrained(source, **kwargs), (source if args.random_init else None)


def lora_config(args: argparse.Namespace):
    if args.method == "full":
        return None
    from peft import LoraConfig

    targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    return LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules="all-linear" if targets == ["all-linear"] else targets, task_type="CAUSAL_LM")


def planned_trainer(trainer_cls, optimizer: str):
    """adamw and adamw-fused: torch's AdamW with the planned implementation (foreach=True on every device, as
    planner models adamw; fused=True) on the parameters TRL leaves trainable; other optimizers: optim=..."""
    if optimizer not in ("adamw", "adamw-fused"):
        return trainer_cls
    import torch

    class PlannedTrainer(trainer_cls):
        def create_optimizer(self, model=None):
            if self.optimizer is None:
                params = [p for p in self.model.parameters() if p.requires_grad]
                kind = {"foreach": True} if optimizer == "adamw" else {"fused": True}
                self.optimizer = torch.optim.AdamW(params, lr=self.args.learning_rate,
                                                   weight_decay=self.args.weight_decay, **kind)
            return self.optimizer

    return PlannedTrainer


def reward(completions, **kwargs) -> list[float]:
    """GRPO's reward: a placeholder (the completion's length in characters, scaled). Replace it with yours; a
    reward model adds its own memory, which the plan does not count."""
    return [len(c) / 100.0 for c in completions]


# ---------------------------------------------------------------- run


def deepspeed_config(args: argparse.Namespace, world_size: int) -> dict | None:
    if not args.deepspeed:
        return None
    config = json.loads(Path(args.deepspeed).read_text())
    wanted = {"train_micro_batch_size_per_gpu": args.micro_batch, "gradient_accumulation_steps": args.grad_accum,
              "train_batch_size": args.micro_batch * args.grad_accum * world_size,
              "gradient_clipping": args.max_grad_norm}
    for key, value in wanted.items():
        if config.get(key) not in ("auto", value):
            print(f"train.py: {key} {config.get(key)} -> {value} for this run", file=sys.stderr)
        config[key] = value
    return config


def task_config(args: argparse.Namespace, common: dict):
    """DPOConfig or GRPOConfig of this run (trl/trainer/dpo_config.py, grpo_config.py)."""
    if args.task == "dpo":
        from trl import DPOConfig

        return DPOConfig(**common, beta=args.beta, max_length=args.seq_len,
                         loss_type=[t.strip() for t in args.loss_type.split(",") if t.strip()],
                         precompute_ref_log_probs=args.reference == "precomputed")
    from trl import GRPOConfig

    vllm = {}
    if args.generation == "vllm-colocate":
        vllm = {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": args.vllm_memory_utilization,
                "vllm_enable_sleep_mode": args.vllm_sleep}
    return GRPOConfig(**common, beta=args.beta, num_generations=args.num_generations,
                      max_completion_length=args.completion_len, **vllm)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = read_rows(args)  # fail on a bad dataset before loading anything large
    from datasets import Dataset
    from trl import DPOTrainer, GRPOTrainer

    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    if args.deepspeed and "LOCAL_RANK" not in os.environ:  # `python train.py` without a launcher: one process
        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": os.environ.get("MAIN_PROCESS_PORT", "29500")}.items():
            os.environ.setdefault(key, value)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    deepspeed = deepspeed_config(args, world_size)
    accelerator_config = None
    if args.cpu and deepspeed is not None and "LOCAL_RANK" in os.environ:
        from accelerate import PartialState

        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend="gloo")
        accelerator_config = {"use_configured_state": True}
    common = dict(
        output_dir=args.output_dir, per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.grad_accum, bf16=compute_dtype(args) == "bf16",
        fp16=compute_dtype(args) == "fp16", optim=OPTIMIZERS[args.optimizer],
        optim_args="momentum=0.9" if args.optimizer == "sgd" else None, learning_rate=args.learning_rate,
        max_grad_norm=args.max_grad_norm, max_steps=args.max_steps, num_train_epochs=args.epochs,
        logging_steps=args.logging_steps, save_strategy="no", report_to="none", seed=args.seed, deepspeed=deepspeed,
        use_cpu=args.cpu, ddp_backend="gloo" if args.cpu and world_size > 1 else None,
        accelerator_config=accelerator_config, dataloader_num_workers=0,
        gradient_checkpointing=args.grad_checkpointing,
    )
    training_args = task_config(args, common)
    training_args.device  # noqa: B018 - sets up the process group and this rank's device before the model
    tokenizer = load_tokenizer(args)
    model, scratch = build_model(args, training_args)
    base = DPOTrainer if args.task == "dpo" else GRPOTrainer
    trainer_cls = planned_trainer(base, args.optimizer)
    kwargs = {"reward_funcs": reward} if args.task == "grpo" else {}
    trainer = trainer_cls(model=model, args=training_args, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, peft_config=lora_config(args), **kwargs)
    result = trainer.train()
    if not args.no_save:
        trainer.save_model(args.output_dir)
    if scratch and training_args.process_index == 0:
        shutil.rmtree(scratch, ignore_errors=True)
    params = list(trainer.model.parameters())
    summary = {
        "task": args.task,
        "trainer": base.__name__ if isinstance(trainer, base) else type(trainer).__name__,
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "loss_is_finite": math.isfinite(result.training_loss),
        "world_size": training_args.world_size,
        "process_index": training_args.process_index,
        "method": args.method,
        "precision": args.precision,
        "micro_batch": args.micro_batch,
        "grad_accum": args.grad_accum,
        "reference_model": getattr(trainer, "ref_model", None) is not None,
        "optimizer": type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                          else trainer.optimizer).__name__,
        "param_dtypes": sorted({str(p.dtype).replace("torch.", "") for p in params}),
        "num_params": sum(getattr(p, "ds_numel", p.numel()) for p in params),
        "num_trainable_params": sum(getattr(p, "ds_numel", p.numel()) for p in params if p.requires_grad),
    }
    if args.task == "grpo":
        summary.update(num_generations=args.num_generations, generation=args.generation)
    out = Path(args.output_dir) / f"run_summary.rank{training_args.process_index}.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    if trainer.is_world_process_zero():
        print(json.dumps(summary))
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
'''
