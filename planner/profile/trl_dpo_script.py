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

from planner.profile.trl_setup import build_policy, build_tokenizer, lora_config, planned_trainer, text_maker


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workdir", required=True)
    args = p.parse_args()
    run = json.loads((Path(args.workdir) / "run.json").read_text())

    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    kwargs = dict(run["dpo_config"])
    if run.get("deepspeed"):
        # Without a GPU accelerate sets up no process group for DeepSpeed (and its CPU mode turns DeepSpeed off):
        # start it with gloo, DeepSpeed's CPU backend, and have the Trainer use that state (as the bundle's train.py)
        import os

        from accelerate import PartialState

        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend="gloo")
        kwargs.update(deepspeed=run["deepspeed"], ddp_backend="gloo",
                      accelerator_config={"use_configured_state": True})
    config = DPOConfig(**kwargs)
    config.device  # noqa: B018 - sets up the process group and this rank's device before the models
    model_config = AutoConfig.for_model(**run["model_config"])
    tokenizer = build_tokenizer(model_config.vocab_size)
    text = text_maker(model_config.vocab_size)

    # the completions end with the EOS token DPOTrainer appends (completion_len - 1 words)
    prompt_len, completion_len = run["prompt_len"], run["completion_len"]
    rows = {"prompt": [text(prompt_len, i) + " " for i in range(64)],
            "chosen": [text(completion_len - 1, i + 1) for i in range(64)],
            "rejected": [text(completion_len - 1, i + 2) for i in range(64)]}
    model = build_policy(run, model_config)
    ref = None
    if run["reference"] == "copy":
        import torch

        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[run["dtype"]]
        ref = AutoModelForCausalLM.from_config(model_config, attn_implementation=run["attn_implementation"],
                                               dtype=dtype)
    peft_config = lora_config(run)
    Trainer = planned_trainer(DPOTrainer, run["optimizer"])  # noqa: N806 - a class

    trainer = Trainer(model=model, ref_model=ref, args=config, train_dataset=Dataset.from_dict(rows),
                      processing_class=tokenizer, peft_config=peft_config)
    trainer.train()
    print(json.dumps({"global_step": trainer.state.global_step}))


if __name__ == "__main__":
    main()
