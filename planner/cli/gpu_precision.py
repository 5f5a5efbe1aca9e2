"""The recipe's precision on a GPU without bf16, for the commands that plan on one GPU type (estimate,
recommend).

On a GPU without bf16 (Volta, Turing) a recipe the user did not choose trains in fp16 with loss scaling, as
``--compare-gpus`` plans it (plan/compare_gpus.py ``precision_for``): the HF Trainer refuses ``bf16=True`` there
(transformers/training_args.py ``TrainingArguments.__post_init__``: "Your setup doesn't support bf16/gpu"), so a
bf16 plan would describe, and emit, a run that cannot start; and QLoRA's bf16 compute has no kernel there
(estimate/core.py ``check_combination``). A typed --precision, or a --from config's, is kept.
"""

from __future__ import annotations

from dataclasses import replace

from planner.cli.options import resolve_gpu
from planner.plan.compare_gpus import precision_for
from planner.specs import Precision


def for_gpu(flags, typed: bool):
    """(the flags with --precision set for --gpu, the sentence saying so or None when nothing changed)."""
    gpu = resolve_gpu(flags.gpu)
    try:
        asked = Precision(flags.precision)
    except ValueError:
        return flags, None  # build_train_spec says what is wrong with it
    if typed or gpu.supports_bf16:
        return flags, None
    precision = precision_for(gpu, asked)
    if precision is asked:
        return flags, None
    return replace(flags, precision=precision.value), (
        f"{gpu.name} has no bf16 (the HF Trainer refuses bf16=True there): the recipe is {precision.value}, fp16 "
        f"with loss scaling, not {asked.value}; pass --precision to choose.")
