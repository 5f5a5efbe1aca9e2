"""``planner profile --task dpo``: TRL's real DPOTrainer, recorded like a user's command (command.py, inject.py).

The run is written to a scratch directory (``run.json``: the model config, the DPOConfig fields, the lengths, LoRA
and the reference) and ``python -m planner.profile.trl_dpo_script`` trains it under the injected recorder for the
planned steps. The planned batch is ``--micro-batch`` preference pairs of ``--seq-len`` tokens each: the prompt is
the first third (at least one token), the completion the rest, both the chosen and the rejected one.

What it runs, and what is refused in one sentence: one process, or with ``--zero 1-3`` torchrun's ranks over gloo
(``DPOConfig(deepspeed=...)`` with planner's own ZeRO config, profile/optim.py; fp32, no offload; the reference copy
under DDP is not profiled), fp32 or pure bf16 (the Trainer's ``bf16=True`` with bf16 weights; planner's bf16-mixed keeps fp32
master weights the HF Trainer does not), AdamW (foreach, or fused), no activation offloading.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from planner.errors import PlannerError
from planner.specs import Method, ModelSpec, Offload, Optimizer, Precision, Task, TrainSpec


def prompt_completion(seq_len: int) -> tuple[int, int]:
    """The planned sequence as (prompt, completion) tokens: a third of it is prompt (at least 1)."""
    if seq_len < 3:
        raise PlannerError(f"--task dpo needs a sequence of at least 3 tokens (prompt, completion and its end), "
                           f"got {seq_len}.")
    prompt = max(1, seq_len // 3)
    return prompt, seq_len - prompt


def check_profilable(train: TrainSpec, num_gpus: int) -> None:
    k = train.task.kind.value
    if train.uses_deepspeed:
        _check_deepspeed(train, num_gpus)
    elif num_gpus != 1:
        raise PlannerError(f"planner profile --task {k} runs one process without DeepSpeed; use --gpus 1 or --zero "
                           "2/3.")
    if train.precision not in (Precision.FP32, Precision.BF16):
        raise PlannerError(f"planner profile --task {k} runs fp32 or pure bf16 (the HF Trainer keeps no fp32 master "
                           f"weights of a 16-bit model), not {train.precision.value}; use --precision fp32 or bf16.")
    if train.optimizer not in (Optimizer.ADAMW, Optimizer.ADAMW_FUSED):
        raise PlannerError(f"planner profile --task {k} runs torch's AdamW (adamw, adamw-fused), not "
                           f"{train.optimizer.value}.")
    if train.method is Method.QLORA:
        raise PlannerError(f"planner profile --task {k} does not run QLoRA yet; use full or lora.")
    if train.grad_accum != 1:
        raise PlannerError(f"planner profile --task {k} records one micro-batch per step; use --grad-accum 1.")


def _check_deepspeed(train: TrainSpec, num_gpus: int) -> None:
    """What the DeepSpeed DPO profile runs: torchrun's ranks over gloo, fp32 (the HF Trainer's bf16 under DeepSpeed
    keeps fp32 masters: planner's bf16-mixed, which the single-process profile does not run), no offload."""
    if train.task.kind is not Task.DPO:
        raise PlannerError(f"planner profile --task {train.task.kind.value} with DeepSpeed is not supported yet; "
                           "use --zero 0.")
    if train.precision is not Precision.FP32:
        raise PlannerError("planner profile --task dpo with DeepSpeed runs fp32 (DeepSpeed keeps fp32 master "
                           "weights of a 16-bit model, which the HF Trainer's pure bf16 does not); use --precision "
                           "fp32.")
    if train.offload is not Offload.NONE:
        raise PlannerError("planner profile --task dpo with DeepSpeed does not offload; drop --offload.")
    if num_gpus < 2:
        raise PlannerError("planner profile --task dpo with DeepSpeed runs at least two ranks; use --gpus 2.")


def run_config(model: ModelSpec, train: TrainSpec) -> dict:
    """What trl_dpo_script.py reads."""
    prompt, completion = prompt_completion(train.seq_len)
    bf16 = train.precision is Precision.BF16
    lora = None
    if train.method is not Method.FULL:
        lora = {"rank": train.lora.rank, "alpha": train.lora.alpha, "dropout": train.lora.dropout,
                "targets": "all-linear" if train.lora.all_linear else list(train.lora.targets)}
    reference = train.task.reference_for(train.method is not Method.FULL)
    return {
        "model_config": dict(model.config),
        "attn_implementation": train.attn_impl.value,
        "dtype": "bf16" if bf16 else "fp32",
        "prompt_len": prompt,
        "completion_len": completion,
        "lora": lora,
        "reference": reference.value,
        "optimizer": train.optimizer.value,
        "dpo_config": {
            "output_dir": "out", "per_device_train_batch_size": train.micro_batch, "gradient_accumulation_steps": 1,
            "gradient_checkpointing": train.grad_checkpointing, "bf16": bf16, "use_cpu": True, "report_to": "none",
            "max_steps": 50, "save_strategy": "no", "logging_steps": 1, "max_length": None,
            "precompute_ref_log_probs": reference.value == "precomputed", "dataloader_num_workers": 0,
        },
    }


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_dpo_profile(model: ModelSpec, train: TrainSpec, *, num_gpus: int, steps: int, device: str, out: Path,
                    force: bool = False) -> tuple[str, str, Path]:
    from planner.profile.command import run_command_profile

    check_profilable(train, num_gpus)
    if device != "cpu":
        raise PlannerError("planner profile --task dpo runs on the CPU (TRL's fused LM head scores every position "
                           "there, only completion tokens on a Triton GPU); use --device cpu.")
    work = Path(tempfile.mkdtemp(prefix="planner-dpo-"))
    try:
        run = run_config(model, train)
        run["dpo_config"]["output_dir"] = str(work / "out")
        (work / "run.json").write_text(json.dumps(run))
        command = [sys.executable, "-m", "planner.profile.trl_dpo_script", "--workdir", str(work)]
        if train.uses_deepspeed:
            from planner.profile.optim import deepspeed_config

            # the ZeRO config planner's own DeepSpeed profile runs (optim.py), handed to DPOConfig(deepspeed=...)
            run["deepspeed"] = deepspeed_config(train, num_gpus, int(model.config["hidden_size"]))
            (work / "run.json").write_text(json.dumps(run))
            command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(num_gpus),
                       "--master_port", str(_free_port()), *command[1:]]
        return run_command_profile(model, train, command, num_gpus=num_gpus, steps=steps, device=device, out=out,
                                   force=force)
    finally:
        shutil.rmtree(work, ignore_errors=True)
