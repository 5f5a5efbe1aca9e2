#!/usr/bin/env python3
"""A plain torch training loop (no Trainer): a causal LM from a config.json with random weights, torch AdamW,
random token batches. One process, or DDP under torchrun (gloo on CPU, nccl on CUDA).

Record it with planner, the run declared with the same settings:

    planner profile -m config.json --method full --precision fp32 --micro-batch 2 --seq-len 64 --steps 3 \\
        -- python plain_loop.py --config config.json --micro-batch 2 --seq-len 64 --steps 10
    planner compare profiles/<the directory it printed>
"""

import argparse
import json
import os

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a transformers config.json")
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-4)
    args = p.parse_args()

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if distributed:
        torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    raw = json.load(open(args.config))
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32).to(device)
    model.train()
    # foreach=True: planner's adamw is torch's foreach implementation, torch's default on CUDA; on CPU torch
    # defaults to its per-tensor loop (smaller optimizer-step temporaries), so the CPU run asks for foreach.
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, foreach=True)
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model)
    for _ in range(args.steps):
        ids = torch.randint(0, config.vocab_size, (args.micro_batch, args.seq_len), device=device)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
