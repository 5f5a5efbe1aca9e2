"""GRPO's settings (``--task grpo``), TRL 1.16's ``GRPOConfig`` (trl/trainer/grpo_config.py), validated here.

- ``num_generations`` (``num_generations``, default 8): completions per prompt. ``GRPOConfig.__post_init__``
  requires the generation batch (``per_device_train_batch_size x processes x steps_per_generation``, where
  ``steps_per_generation`` defaults to ``gradient_accumulation_steps``) to be a multiple of it, and it to be at
  least 2. The group size changes no tensor of a step: each rank generates and trains its own completions.
- ``completion_len`` (``max_completion_length``, default 512): the completion's tokens; ``--seq-len`` is the prompt
  plus the completion (GRPOTrainer concatenates ``prompt_ids`` and ``completion_ids``, ``_compute_loss``).
  TRL 1.16 has no ``max_prompt_length``: the prompt is what the dataset holds.
- ``beta`` (``beta``, default 0.0): the KL coefficient. 0: no reference model; otherwise a frozen copy for a full
  policy, the policy with its adapter disabled for a PEFT one (``GRPOTrainer.__init__``).
- ``generation`` (``use_vllm``, ``vllm_mode``): ``transformers`` (``model.generate``, the default) or
  ``vllm-colocate`` (``use_vllm=True, vllm_mode="colocate"``: a vLLM engine in the trainer's process, its own
  weights copy and KV cache inside ``vllm_gpu_memory_utilization`` of the GPU; ``vllm_enable_sleep_mode``
  releases them while training). vLLM is modelled from its source and not installed here: unprofiled.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from planner.errors import PlannerError

# trl/trainer/grpo_config.py GRPOConfig field defaults
DEFAULT_NUM_GENERATIONS = 8
DEFAULT_COMPLETION_LEN = 512
DEFAULT_BETA = 0.0
DEFAULT_VLLM_MEMORY_UTILIZATION = 0.3


class Generation(str, Enum):
    TRANSFORMERS = "transformers"
    VLLM_COLOCATE = "vllm-colocate"


@dataclass(frozen=True)
class GrpoSpec:
    num_generations: int = DEFAULT_NUM_GENERATIONS
    completion_len: int = DEFAULT_COMPLETION_LEN
    beta: float = DEFAULT_BETA
    generation: Generation = Generation.TRANSFORMERS
    vllm_memory_utilization: float = DEFAULT_VLLM_MEMORY_UTILIZATION
    vllm_sleep: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.num_generations, bool) or not isinstance(self.num_generations, int) \
                or self.num_generations < 2:
            raise PlannerError(f"--num-generations must be an integer of at least 2 (GRPO compares a group's "
                               f"completions), got {self.num_generations!r}.")
        if isinstance(self.completion_len, bool) or not isinstance(self.completion_len, int) \
                or self.completion_len < 1:
            raise PlannerError(f"--completion-len must be a positive integer, got {self.completion_len!r}.")
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not 0 <= self.beta < 1e6:
            raise PlannerError(f"--beta must be a number of at least 0, got {self.beta!r}.")
        if not isinstance(self.generation, Generation):
            raise PlannerError(f"--generation must be one of {', '.join(g.value for g in Generation)}, "
                               f"got {self.generation!r}.")
        if isinstance(self.vllm_memory_utilization, bool) \
                or not isinstance(self.vllm_memory_utilization, (int, float)) \
                or not 0 < self.vllm_memory_utilization <= 1:
            raise PlannerError(f"--vllm-memory-utilization must be in (0, 1], got {self.vllm_memory_utilization!r}.")
        if not isinstance(self.vllm_sleep, bool):
            raise PlannerError(f"--vllm-sleep must be true or false, got {self.vllm_sleep!r}.")
        if self.generation is Generation.TRANSFORMERS and (
                self.vllm_sleep or self.vllm_memory_utilization != DEFAULT_VLLM_MEMORY_UTILIZATION):
            raise PlannerError("--vllm-memory-utilization and --vllm-sleep apply to --generation vllm-colocate.")

    @property
    def uses_reference(self) -> bool:
        """``beta != 0``: GRPOTrainer keeps a reference (a copy, or the policy with its adapter disabled)."""
        return self.beta != 0.0

    def check_run(self, generation_batch: int) -> None:
        """The generation batch must hold whole groups (GRPOConfig.__post_init__)."""
        if generation_batch % self.num_generations:
            raise PlannerError(f"TRL's generation batch (--micro-batch x GPUs x --grad-accum = {generation_batch}) "
                               f"must be a multiple of --num-generations {self.num_generations}.")

    def to_dict(self) -> dict:
        return {"num_generations": self.num_generations, "completion_len": self.completion_len, "beta": self.beta,
                "generation": self.generation.value, "vllm_memory_utilization": self.vllm_memory_utilization,
                "vllm_sleep": self.vllm_sleep}

    @classmethod
    def from_dict(cls, d: dict) -> GrpoSpec:
        try:
            return cls(num_generations=d["num_generations"], completion_len=d["completion_len"], beta=d["beta"],
                       generation=Generation(d["generation"]),
                       vllm_memory_utilization=d["vllm_memory_utilization"], vllm_sleep=d["vllm_sleep"])
        except (KeyError, ValueError, TypeError):
            raise PlannerError(f"the training specification's grpo block is malformed: {d!r}.") from None
