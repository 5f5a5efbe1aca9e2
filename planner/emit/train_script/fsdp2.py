"""train.py, the FSDP2 part: torch's ``fully_shard`` the way planner estimates it, trained by a plain torch loop.

planner's FSDP2 estimate (estimate/fsdp2.py, checked against profile/fsdp2.py) follows torchtune 0.6.1's
``training/_distributed.py`` ``shard_model``: ``fully_shard`` on every decoder layer (bottom-up), then on the whole
model, whose root group keeps the embeddings, the final norm and the output head. accelerate's FSDP2
(utils/fsdp_utils.py ``fsdp2_prepare_model``) wraps differently, so under ``--engine fsdp2`` train.py runs this
loop under ``torchrun`` (launch.sh) instead of the Trainer: the model in its FSDP2 storage dtype (fp32 under
bf16-mixed's ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``), transformers' per-layer
non-reentrant checkpointing applied before sharding, peft's LoRA, torch's AdamW over the DTensor shards,
``set_requires_gradient_sync`` for gradient accumulation, the model's own loss function on its logits.
"""

from __future__ import annotations

FSDP2 = r'''# ---------------------------------------------------------------- fsdp2


def fsdp2_model(args: argparse.Namespace, vocab_size: int | None, device):
    """The model in FSDP2's storage dtype, checkpointed per layer, with its LoRA adapters."""
    import torch
    from transformers import AutoModelForCausalLM

    config = load_config(args, vocab_size)
    # FSDP2 shards the parameters in their storage dtype: fp32 under bf16-mixed's policy (the master copy the
    # optimizer steps), else the precision's own (bf16, fp32).
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    kwargs = {"attn_implementation": args.attn_impl, "dtype": dtype}
    if args.random_init:
        torch.manual_seed(args.seed)  # every rank builds the same weights
        with device:
            model = AutoModelForCausalLM.from_config(config, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model, config=config, **kwargs).to(device)
    model.config.use_cache = False
    if args.grad_checkpointing:  # transformers' own non-reentrant checkpoint of every decoder layer
        name = "activation_checkpointing" if hasattr(model, "activation_checkpointing_enable") else "gradient_checkpointing"
        getattr(model, f"{name}_enable")(**{f"{name}_kwargs": {"use_reentrant": False}})
    hf_model = model
    model = add_adapters(model, args)
    model.train()
    return model, hf_model


def fsdp2_shard(model, args: argparse.Namespace, device) -> None:
    """torchtune's shard_model: fully_shard each decoder layer (bottom-up), then the root."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
    from transformers.modeling_layers import GradientCheckpointingLayer

    if args.precision == "bf16-mixed":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                      reduce_dtype=torch.float32 if args.reduce_dtype == "fp32" else None)
    else:
        policy = MixedPrecisionPolicy()
    world = torch.distributed.get_world_size()
    if world % args.hsdp:
        fail(f"--hsdp {args.hsdp} must divide the {world} processes (a replicate x shard mesh).")
    # HSDP: fully_shard over a 2-D (replicate, shard) mesh shards over the last dim and all-reduces over the first
    mesh = (init_device_mesh(device.type, (world,)) if args.hsdp == 1 else
            init_device_mesh(device.type, (args.hsdp, world // args.hsdp), mesh_dim_names=("dp_replicate", "dp_shard")))
    kwargs = {
        "mesh": mesh,
        "reshard_after_forward": args.reshard,
        "mp_policy": policy,
        # pin_memory needs an accelerator; on CPU the parameters already live on the host
        "offload_policy": CPUOffloadPolicy(pin_memory=device.type == "cuda") if args.fsdp_offload else OffloadPolicy(),
    }
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        fail("FSDP2 wraps each decoder layer, and this model has none transformers marks as one.")
    for layer in reversed(layers):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)


def train_fsdp2(args: argparse.Namespace, texts: list[str]) -> int:
    import torch

    if args.optimizer not in ("adamw", "adamw-fused"):
        fail(f"--engine fsdp2 steps torch's AdamW over the sharded parameters; --optimizer {args.optimizer} is "
             "not run here.")
    if args.precision not in ("bf16-mixed", "bf16", "fp32"):
        fail(f"--engine fsdp2 runs bf16-mixed, bf16 or fp32, not {args.precision}.")
    cuda = not args.cpu and torch.cuda.is_available()
    if "RANK" not in os.environ:  # `python train.py` without torchrun: one process
        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": os.environ.get("MAIN_PROCESS_PORT", "29500")}.items():
            os.environ.setdefault(key, value)
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(args)
    rows = pack(texts, tokenizer, args.seq_len, args.micro_batch * args.grad_accum * world_size)
    model, hf_model = fsdp2_model(args, len(tokenizer) if args.random_init else None, device)
    fsdp2_shard(model, args, device)
    params = [p for p in model.parameters() if p.requires_grad]
    # torch's AdamW with its default implementation (foreach on CUDA), what planner's adamw models; on CPU torch
    # defaults to its per-tensor loop, so foreach is asked for; adamw-fused passes fused=True.
    fused = args.optimizer == "adamw-fused"
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, fused=fused or None, foreach=None if fused else True)
    ids_rows = torch.stack([r["input_ids"] for r in rows])[rank::world_size]  # this rank's rows
    per_step = args.micro_batch * args.grad_accum
    steps = len(ids_rows) // per_step * max(1, math.ceil(args.epochs))
    if args.max_steps > 0:
        steps = args.max_steps
    losses = []
    for step in range(steps):
        for mb in range(args.grad_accum):
            start = (step * per_step + mb * args.micro_batch) % (len(ids_rows) - args.micro_batch + 1)
            ids = ids_rows[start : start + args.micro_batch].to(device)
            # FSDP2's accumulation without communication: the last micro-batch reduce-scatters the gradients
            model.set_requires_gradient_sync(mb == args.grad_accum - 1)
            logits = model(input_ids=ids, use_cache=False).logits
            loss = hf_model.loss_function(logits, ids, vocab_size=hf_model.config.vocab_size)
            del logits  # the loss keeps its own fp32 copy; the model's logits need not live through backward
            (loss / args.grad_accum).backward()
            losses.append(loss.item())
        if args.max_grad_norm and args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if rank == 0 and args.logging_steps > 0 and (step + 1) % args.logging_steps == 0:
            print(json.dumps({"step": step + 1, "loss": losses[-1]}), flush=True)
    train_loss = sum(losses) / len(losses) if losses else float("nan")
    summary = {
        "global_step": steps, "train_loss": train_loss, "loss_is_finite": math.isfinite(train_loss),
        "world_size": world_size, "process_index": rank, "distributed_type": "FSDP2 (torchrun, fully_shard)",
        "zero_stage": 0, "model": None if args.random_init else args.model, "method": args.method,
        "precision": args.precision, "micro_batch": args.micro_batch, "grad_accum": args.grad_accum,
        "seq_len": args.seq_len, "reshard_after_forward": args.reshard, "fsdp_offload": args.fsdp_offload,
        "reduce_dtype": args.reduce_dtype, "hsdp": args.hsdp,
    }
    (Path(args.output_dir) / f"run_summary.rank{rank}.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not args.no_save:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            model.save_pretrained(args.output_dir, state_dict=state)  # peft keeps the adapters' keys only
    if rank == 0:
        print(json.dumps(summary))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return 0


'''
