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

from planner.profile.trl_setup import build_policy, build_tokenizer, lora_config, planned_trainer, text_maker


def length_reward(completions, **kwargs) -> list[float]:
    """A trivial reward: the completion's length in characters (GRPO needs one; its value changes no memory)."""
    return [float(len(c)) for c in completions]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workdir", required=True)
    args = p.parse_args()
    work = Path(args.workdir)
    run = json.loads((work / "run.json").read_text())

    from datasets import Dataset
    from transformers import AutoConfig
    from trl import GRPOConfig, GRPOTrainer

    config = GRPOConfig(**run["grpo_config"])
    model_config = AutoConfig.for_model(**run["model_config"])
    tokenizer = build_tokenizer(model_config.vocab_size)
    text = text_maker(model_config.vocab_size)
    rows = {"prompt": [text(run["prompt_len"], i) for i in range(64)]}
    model = build_policy(run, model_config)
    path = work / "model"
    model.save_pretrained(path)
    model.config._name_or_path = str(path)  # the reference copy's source (a full policy with beta > 0)
    peft_config = lora_config(run)
    Trainer = planned_trainer(GRPOTrainer, run["optimizer"])  # noqa: N806 - a class

    trainer = Trainer(model=model, reward_funcs=length_reward, args=config, train_dataset=Dataset.from_dict(rows),
                      processing_class=tokenizer, peft_config=peft_config)
    trainer.train()
    print(json.dumps({"global_step": trainer.state.global_step}))


if __name__ == "__main__":
    main()
