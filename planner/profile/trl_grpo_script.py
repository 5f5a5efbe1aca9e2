"""The GRPO training process ``planner profile`` records for ``--task grpo``: TRL's own ``GRPOTrainer``.

``python -m planner.profile.trl_grpo_script --workdir DIR`` reads ``DIR/run.json`` (written by trl_grpo.py: the
model config, the GRPOConfig fields, the prompt length, LoRA), builds the policy with random weights
(``torch.manual_seed(0)``) in the planned dtype and saves it under ``DIR/model`` (GRPOTrainer builds a full
policy's reference copy from the policy's path: ``create_model_from_path(get_config_model_id(config))``), a
word-level tokenizer of the model's vocabulary (trl_dpo_script.py), a prompt dataset whose rows tokenize to exactly
the planned prompt length, and a trivial reward (the completion's length), then runs ``GRPOTrainer.train()`` with
transformers generation (``model.generate``); the recording is injected (inject.py), which stops the Trainer after
the planned steps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from planner.profile.trl_dpo_script import SPECIALS, build_tokenizer


def length_reward(completions, **kwargs) -> list[float]:
    """A trivial reward: the completion's length in characters (GRPO needs one; its value changes no memory)."""
    return [float(len(c)) for c in completions]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workdir", required=True)
    args = p.parse_args()
    work = Path(args.workdir)
    run = json.loads((work / "run.json").read_text())

    import torch
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    config = GRPOConfig(**run["grpo_config"])
    model_config = AutoConfig.for_model(**run["model_config"])
    tokenizer = build_tokenizer(model_config.vocab_size)
    words = [f"w{i}" for i in range(len(SPECIALS), model_config.vocab_size)]

    def text(n: int, seed: int) -> str:
        return " ".join(words[(seed * 7 + j) % len(words)] for j in range(n))

    prompt_len = run["prompt_len"]
    rows = {"prompt": [text(prompt_len, i) for i in range(64)]}
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[run["dtype"]]
    attn = run["attn_implementation"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config, attn_implementation=attn, dtype=dtype)
    path = work / "model"
    model.save_pretrained(path)
    model.config._name_or_path = str(path)  # the reference copy's source (a full policy with beta > 0)
    peft_config = None
    if run["lora"]:
        from peft import LoraConfig

        lora = run["lora"]
        peft_config = LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                 target_modules=lora["targets"], task_type="CAUSAL_LM")
    optimizer = run["optimizer"]

    class Trainer(GRPOTrainer):
        def create_optimizer(self, model=None):
            # the planned implementation, as planner's own profiler builds it (optim.py: foreach=True for adamw,
            # fused=True for adamw-fused), on the parameters GRPOTrainer leaves trainable
            if self.optimizer is None:
                params = [p for p in self.model.parameters() if p.requires_grad]
                kind = {"foreach": True} if optimizer == "adamw" else {"fused": True}
                self.optimizer = torch.optim.AdamW(params, lr=self.args.learning_rate, **kind)
            return self.optimizer

    trainer = Trainer(model=model, reward_funcs=length_reward, args=config, train_dataset=Dataset.from_dict(rows),
                      processing_class=tokenizer, peft_config=peft_config)
    trainer.train()
    print(json.dumps({"global_step": trainer.state.global_step}))


if __name__ == "__main__":
    main()
