#!/usr/bin/env python3
"""A TRL SFTTrainer script: SFTConfig fields from a YAML (or JSON) file, the model from a config.json with random
weights (or from_pretrained with --pretrained), a local tokenizer, a generated text dataset whose rows all
tokenize to max_length tokens (so every batch has exactly the planned shape).

Record it with planner, the run read from the same file:

    planner profile --from sft.yaml --steps 3 -- python sft_trl.py --config sft.yaml --tokenizer TOKENIZER_DIR
    planner compare profiles/<the directory it printed>
"""

import argparse
import json
from pathlib import Path

import yaml


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="SFTConfig fields (and model_name_or_path, attn_implementation)")
    p.add_argument("--tokenizer", required=True, help="a tokenizer directory")
    p.add_argument("--pretrained", action="store_true", help="load the model's weights instead of random ones")
    args = p.parse_args()

    import torch
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    fields = yaml.safe_load(Path(args.config).read_text())
    model_path = fields.pop("model_name_or_path")
    attn = fields.pop("attn_implementation", "sdpa")
    config = SFTConfig(**fields)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    vocab = [t for t in tokenizer.get_vocab() if t not in tokenizer.all_special_tokens]
    # max_length - 1 words and the end-of-text token SFTTrainer appends: every row is max_length tokens
    words = config.max_length - 1
    texts = [" ".join(vocab[(i * 7 + j) % len(vocab)] for j in range(words)) for i in range(64)]
    if args.pretrained:
        model = AutoModelForCausalLM.from_pretrained(model_path, attn_implementation=attn, dtype=torch.float32)
    else:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path), attn_implementation=attn,
                                                 dtype=torch.float32)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_dict({config.dataset_text_field: texts}),
                         processing_class=tokenizer)
    trainer.train()
    print(json.dumps({"global_step": trainer.state.global_step}))


if __name__ == "__main__":
    main()
