"""The DPO training process ``planner profile`` records for ``--task dpo``: TRL's own ``DPOTrainer``.

``python -m planner.profile.trl_dpo_script --workdir DIR`` reads ``DIR/run.json`` (written by trl_dpo.py: the
model config, the DPOConfig fields, the prompt and completion lengths, LoRA, the reference), builds the policy
with random weights (``torch.manual_seed(0)``) in the planned dtype, a word-level tokenizer of the model's
vocabulary, and a preference dataset whose rows tokenize to exactly the planned lengths, then runs
``DPOTrainer.train()``; the recording is injected (inject.py), which stops the Trainer after the planned steps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SPECIALS = ("[PAD]", "[UNK]", "[EOS]")


def build_tokenizer(vocab_size: int):
    """A word-level tokenizer of exactly ``vocab_size`` ids: three special tokens and the words w3 ..."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIALS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workdir", required=True)
    args = p.parse_args()
    run = json.loads((Path(args.workdir) / "run.json").read_text())

    import torch
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    config = DPOConfig(**run["dpo_config"])
    model_config = AutoConfig.for_model(**run["model_config"])
    tokenizer = build_tokenizer(model_config.vocab_size)
    words = [f"w{i}" for i in range(len(SPECIALS), model_config.vocab_size)]

    def text(n: int, seed: int) -> str:
        return " ".join(words[(seed * 7 + j) % len(words)] for j in range(n))

    # the completions end with the EOS token DPOTrainer appends (completion_len - 1 words)
    prompt_len, completion_len = run["prompt_len"], run["completion_len"]
    rows = {"prompt": [text(prompt_len, i) + " " for i in range(64)],
            "chosen": [text(completion_len - 1, i + 1) for i in range(64)],
            "rejected": [text(completion_len - 1, i + 2) for i in range(64)]}
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[run["dtype"]]
    attn = run["attn_implementation"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config, attn_implementation=attn, dtype=dtype)
    ref = None
    if run["reference"] == "copy":
        ref = AutoModelForCausalLM.from_config(model_config, attn_implementation=attn, dtype=dtype)
    peft_config = None
    if run["lora"]:
        from peft import LoraConfig

        lora = run["lora"]
        peft_config = LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                 target_modules=lora["targets"], task_type="CAUSAL_LM")
    optimizer = run["optimizer"]

    class Trainer(DPOTrainer):
        def create_optimizer(self, model=None):
            # the planned implementation, as planner's own profiler builds it (optim.py: foreach=True on every
            # device for adamw, fused=True for adamw-fused), on the parameters DPOTrainer leaves trainable
            if self.optimizer is None:
                params = [p for p in self.model.parameters() if p.requires_grad]
                kind = {"foreach": True} if optimizer == "adamw" else {"fused": True}
                self.optimizer = torch.optim.AdamW(params, lr=self.args.learning_rate, **kind)
            return self.optimizer

    trainer = Trainer(model=model, ref_model=ref, args=config, train_dataset=Dataset.from_dict(rows),
                      processing_class=tokenizer, peft_config=peft_config)
    trainer.train()
    print(json.dumps({"global_step": trainer.state.global_step}))


if __name__ == "__main__":
    main()
