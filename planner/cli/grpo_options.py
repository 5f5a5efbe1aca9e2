"""--task grpo's options (``GrpoSpec``'s flags, specs/grpo.py) and their one reading, beside options.py's
``TrainingFlags``, which declares them with the defaults below."""

from __future__ import annotations

from typing import Annotated

import typer

from planner.cli.task_flags import for_task
from planner.errors import PlannerError
from planner.specs import Generation, GrpoSpec, Task
from planner.specs.grpo import (  # noqa: F401 (TrainingFlags' defaults)
    DEFAULT_BETA,
    DEFAULT_COMPLETION_LEN,
    DEFAULT_NUM_GENERATIONS,
    DEFAULT_VLLM_MEMORY_UTILIZATION,
)

NumGenerationsOpt = Annotated[int, typer.Option(
    "--num-generations", help="grpo: completions per prompt (GRPOConfig.num_generations; the generation batch, "
    "--micro-batch x GPUs x --grad-accum, holds whole groups). Default: 8.")]
CompletionLenOpt = Annotated[int, typer.Option(
    "--completion-len", help="grpo: the completion's tokens (GRPOConfig.max_completion_length) of each --seq-len "
    "row, the rest being the prompt. Default: 512.")]
BetaOpt = Annotated[float, typer.Option(
    "--beta", help="grpo: the KL coefficient (GRPOConfig.beta): 0 keeps no reference model; otherwise a frozen copy "
    "(full) or the policy with its adapter disabled (LoRA) scores every batch. Default: 0.0.")]
GenerationOpt = Annotated[str, typer.Option(
    "--generation", help="grpo: transformers (model.generate) or vllm-colocate (use_vllm, vllm_mode colocate: a vLLM "
    "engine in the process, modelled from its source, not profiled). Default: transformers.")]
VllmMemoryOpt = Annotated[float, typer.Option(
    "--vllm-memory-utilization", help="grpo with vllm-colocate: the share of the GPU vLLM reserves for its weights "
    "and KV cache (vllm_gpu_memory_utilization). Default: 0.3.")]
VllmSleepOpt = Annotated[bool, typer.Option(
    "--vllm-sleep/--no-vllm-sleep", help="grpo with vllm-colocate: vLLM's sleep mode releases its memory while the "
    "policy trains (vllm_enable_sleep_mode). Default: off.")]

_GRPO_FLAGS = ("num_generations", "completion_len", "beta", "generation", "vllm_memory_utilization", "vllm_sleep")


def grpo_spec(f) -> GrpoSpec | None:
    """--task grpo's settings (specs/grpo.py); a GRPO flag typed with another task is refused in one sentence."""
    if not for_task(f, Task.GRPO, _GRPO_FLAGS):
        return None
    return GrpoSpec(num_generations=f.num_generations, completion_len=f.completion_len, beta=float(f.beta),
                    generation=_generation(f.generation),
                    vllm_memory_utilization=float(f.vllm_memory_utilization), vllm_sleep=bool(f.vllm_sleep))


def _generation(value: str) -> Generation:
    try:
        return Generation(value.lower())
    except ValueError:
        raise PlannerError(f"--generation {value!r} is not valid; choose one of "
                           f"{', '.join(g.value for g in Generation)}.") from None
