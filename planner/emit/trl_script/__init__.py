"""train.py of a --task dpo or grpo bundle: a fixed template whose PLAN literal trl_bundle.render_trl_script fills.

It imports torch, transformers, TRL, peft and bitsandbytes only when it runs, never here. Two parts, in the order
train.py holds them: ``arguments`` (the docstring, the imports, the plan literal and the command line) and ``run``
(the rows, the tokenizer, the policy, TRL's DPOTrainer or GRPOTrainer, the run summary).
"""

from __future__ import annotations

from planner.emit.trl_script.arguments import ARGUMENTS, PLACEHOLDER
from planner.emit.trl_script.run import RUN

TEMPLATE = ARGUMENTS + RUN

__all__ = ["PLACEHOLDER", "TEMPLATE"]
