"""What the recorded TRL processes share (trl_dpo_script.py, trl_grpo_script.py): the word-level tokenizer of the
model's vocabulary, the rows' words, the policy with random weights, the LoRA config and the trainer subclass with
the planned optimizer. The bundle's emitted train.py (planner/emit/trl_script/run.py ``planned_trainer``) writes the
same subclass as text: emit may not import the profiler, and the bundle runs without planner installed.

Imports torch, transformers, tokenizers and peft only inside the functions (this module is imported by the scripts
only, in their own process).
"""

from __future__ import annotations

SPECIALS = ("[PAD]", "[UNK]", "[EOS]")
DTYPES = ("fp32", "bf16", "fp16")


def build_tokenizer(vocab_size: int):
    """A word-level tokenizer of exactly ``vocab_size`` ids: three special tokens and the words w3 ..."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIALS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")


def text_maker(vocab_size: int):
    """``text(n, seed)``: n words of the vocabulary, one token each, deterministic in ``seed``."""
    words = [f"w{i}" for i in range(len(SPECIALS), vocab_size)]

    def text(n: int, seed: int) -> str:
        return " ".join(words[(seed * 7 + j) % len(words)] for j in range(n))

    return text


def build_policy(run: dict, model_config):
    """The policy with random weights (``torch.manual_seed(0)``) in the planned dtype and attention."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[run["dtype"]]
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(model_config, attn_implementation=run["attn_implementation"], dtype=dtype)


def lora_config(run: dict):
    """The run's peft LoraConfig, or None for full fine-tuning (TRL applies it: ``peft_config=``)."""
    if not run["lora"]:
        return None
    from peft import LoraConfig

    lora = run["lora"]
    return LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                      target_modules=lora["targets"], task_type="CAUSAL_LM")


def planned_trainer(trainer_cls, optimizer: str):
    """``trainer_cls`` with the planned implementation of AdamW, as planner's own profiler builds it (optim.py:
    foreach=True on every device for adamw, fused=True for adamw-fused), on the parameters TRL leaves trainable."""
    import torch

    class Trainer(trainer_cls):
        def create_optimizer(self, model=None):
            if self.optimizer is None:
                params = [p for p in self.model.parameters() if p.requires_grad]
                kind = {"foreach": True} if optimizer == "adamw" else {"fused": True}
                self.optimizer = torch.optim.AdamW(params, lr=self.args.learning_rate, **kind)
            return self.optimizer

    return Trainer
