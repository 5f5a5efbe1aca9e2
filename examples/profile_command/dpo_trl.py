#!/usr/bin/env python3
"""A TRL DPOTrainer script: DPOConfig fields from a YAML (or JSON) file, the policy from a config.json with random
weights, a local tokenizer, a generated preference dataset whose prompts are ``--prompt-len`` tokens and whose chosen
and rejected completions are ``--completion-len`` tokens each (the end-of-text token DPOTrainer appends included), so
every batch has exactly the planned shape: ``2 x per_device_train_batch_size`` rows of prompt + completion tokens
(DataCollatorForPreference concatenates chosen and rejected).

``--ref-copy``: pass a separate frozen reference model (DPOTrainer builds one itself when the policy is not a PEFT
model and precompute_ref_log_probs is false; passing it keeps its weights random like the policy's). ``--lora R``:
train a LoRA adapter of rank R on every linear layer (peft ``target_modules="all-linear"``); the reference pass then
disables the adapter (no second model).

    planner profile -m CONFIG --task dpo ... --steps 3 -- python dpo_trl.py --config dpo.yaml --tokenizer TOK
"""

import argparse
import json
from pathlib import Path

import yaml


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="DPOConfig fields (and model_name_or_path, attn_implementation)")
    p.add_argument("--tokenizer", required=True, help="a tokenizer directory")
    p.add_argument("--prompt-len", type=int, required=True)
    p.add_argument("--completion-len", type=int, required=True)
    p.add_argument("--ref-copy", action="store_true", help="a separate frozen reference model")
    p.add_argument("--lora", type=int, default=0, help="LoRA rank (0: full fine-tuning)")
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="the models' dtype (planner loads bf16-mixed runs in bf16, with bf16: true in the config)")
    args = p.parse_args()

    import torch
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    fields = yaml.safe_load(Path(args.config).read_text())
    model_path = fields.pop("model_name_or_path")
    attn = fields.pop("attn_implementation", "sdpa")
    config = DPOConfig(**fields)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    vocab = [t for t in tokenizer.get_vocab() if t not in tokenizer.all_special_tokens]

    def words(n: int, seed: int) -> str:
        return " ".join(vocab[(seed * 7 + j) % len(vocab)] for j in range(n))

    # the completions end with the EOS token DPOTrainer appends: completion_len - 1 words
    rows = {"prompt": [words(args.prompt_len, i) + " " for i in range(64)],
            "chosen": [words(args.completion_len - 1, i + 1) for i in range(64)],
            "rejected": [words(args.completion_len - 1, i + 2) for i in range(64)]}
    model_config = AutoConfig.from_pretrained(model_path)
    torch.manual_seed(0)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = AutoModelForCausalLM.from_config(model_config, attn_implementation=attn, dtype=dtype)
    ref = None
    if args.ref_copy:
        ref = AutoModelForCausalLM.from_config(model_config, attn_implementation=attn, dtype=dtype)
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=args.lora, lora_alpha=args.lora_alpha, lora_dropout=0.0,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, ref_model=ref, args=config, train_dataset=Dataset.from_dict(rows),
                         processing_class=tokenizer, peft_config=peft_config)
    trainer.train()
    print(json.dumps({"global_step": trainer.state.global_step}))


if __name__ == "__main__":
    main()
