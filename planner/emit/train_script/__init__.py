"""train.py of the bundle: a fixed template whose PLAN literal bundle.render_train_script fills.

It imports torch, transformers, peft and bitsandbytes only when it runs, never here. The template is
written in six parts, in the order train.py holds them:

- ``arguments`` the docstring, the imports, the plan literal (``PLACEHOLDER``) and the command line
- ``data``      the texts (a .jsonl file or a hub dataset), the tokenizer, rows of ``seq_len`` tokens
- ``model``     the config, the model loaded as planned (4-bit for QLoRA), the LoRA adapters
- ``loss``      the planned loss recipe: the model's own, torchtune's chunked or Liger's fused cross-entropy
- ``fsdp2``     --engine fsdp2: fully_shard per decoder layer then the root, a plain torch loop under torchrun
- ``run``       the DeepSpeed config of this run, TrainingArguments, the Trainer and the run summary
"""

from __future__ import annotations

from planner.emit.train_script.arguments import ARGUMENTS, PLACEHOLDER
from planner.emit.train_script.data import DATA
from planner.emit.train_script.fsdp2 import FSDP2
from planner.emit.train_script.loss import LOSS
from planner.emit.train_script.model import MODEL
from planner.emit.train_script.run import RUN

TEMPLATE = ARGUMENTS + DATA + MODEL + LOSS + FSDP2 + RUN

__all__ = ["PLACEHOLDER", "TEMPLATE"]
