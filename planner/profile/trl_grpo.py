"""``planner profile --task grpo``: TRL's real GRPOTrainer, recorded like a user's command (command.py, inject.py).

The run is written to a scratch directory (``run.json``: the model config, the GRPOConfig fields, the prompt
length, LoRA) and ``python -m planner.profile.trl_grpo_script`` trains it under the injected recorder for the
planned steps: transformers generation (``model.generate``) of ``--completion-len`` tokens after a prompt of
``--seq-len - --completion-len`` tokens, a trivial reward, then the policy's step on the generated batch.

What it runs, and what is refused in one sentence (trl_dpo.py's checks): one process, fp32 or pure bf16, AdamW
(foreach, or fused), no QLoRA, one micro-batch per step, and transformers generation (vLLM is not installed here:
``--generation vllm-colocate`` is modelled from its source and not profiled).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from planner.errors import PlannerError
from planner.profile.trl_dpo import check_profilable
from planner.specs import Generation, Method, ModelSpec, Precision, TrainSpec


def run_config(model: ModelSpec, train: TrainSpec) -> dict:
    """What trl_grpo_script.py reads."""
    grpo = train.task.grpo
    bf16 = train.precision is Precision.BF16
    lora = None
    if train.method is not Method.FULL:
        lora = {"rank": train.lora.rank, "alpha": train.lora.alpha, "dropout": train.lora.dropout,
                "targets": "all-linear" if train.lora.all_linear else list(train.lora.targets)}
    return {
        "model_config": dict(model.config),
        "attn_implementation": train.attn_impl.value,
        "dtype": "bf16" if bf16 else "fp32",
        "prompt_len": train.seq_len - grpo.completion_len,
        "lora": lora,
        "optimizer": train.optimizer.value,
        "grpo_config": {
            "output_dir": "out", "per_device_train_batch_size": train.micro_batch, "gradient_accumulation_steps": 1,
            "gradient_checkpointing": train.grad_checkpointing, "bf16": bf16, "use_cpu": True, "report_to": "none",
            "max_steps": 50, "save_strategy": "no", "logging_steps": 1, "dataloader_num_workers": 0,
            "num_generations": grpo.num_generations, "max_completion_length": grpo.completion_len,
            "beta": grpo.beta,
        },
    }


def run_grpo_profile(model: ModelSpec, train: TrainSpec, *, num_gpus: int, steps: int, device: str, out: Path,
                     force: bool = False) -> tuple[str, str, Path]:
    from planner.profile.command import run_command_profile

    check_profilable(train, num_gpus)
    if train.task.grpo.generation is not Generation.TRANSFORMERS:
        raise PlannerError("planner profile --task grpo runs transformers generation; vLLM is not installed here "
                           "(--generation vllm-colocate is modelled from its source, not profiled).")
    if device != "cpu":
        raise PlannerError("planner profile --task grpo runs on the CPU (TRL's fused LM head scores every position "
                           "there); use --device cpu.")
    train.task.grpo.check_run(train.micro_batch * num_gpus * train.grad_accum)
    work = Path(tempfile.mkdtemp(prefix="planner-grpo-"))
    try:
        run = run_config(model, train)
        run["grpo_config"]["output_dir"] = str(work / "out")
        (work / "run.json").write_text(json.dumps(run))
        command = [sys.executable, "-m", "planner.profile.trl_grpo_script", "--workdir", str(work)]
        return run_command_profile(model, train, command, num_gpus=num_gpus, steps=steps, device=device, out=out,
                                   force=force)
    finally:
        shutil.rmtree(work, ignore_errors=True)
