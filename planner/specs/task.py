"""The training task: supervised fine-tuning, or post-training with TRL 1.16's DPOTrainer or GRPOTrainer (TaskSpec,
validated here; GRPO's own settings are specs/grpo.py's GrpoSpec).

``sft``: one model, the sequences as given (``--seq-len`` tokens, ``--micro-batch`` rows): every rule before this
spec existed.

``dpo``: TRL's ``DPOTrainer`` (trl/trainer/dpo_trainer.py). ``DataCollatorForPreference.torch_call`` concatenates
``prompt + chosen`` and ``prompt + rejected`` of every example into one batch (chosen rows first) padded to the
longest: ``2 x --micro-batch`` rows of ``--seq-len`` tokens (the longest prompt + completion). ``_compute_loss``
runs the policy, then the reference under ``torch.no_grad()``, each through TRL's fused LM head
(trl/trainer/utils.py ``add_fused_lm_head``: per-token log-probabilities in tiles, never the [tokens, vocabulary]
logits). The reference (``--reference``):

- ``copy``: a separate frozen model (``__init__``: ``create_model_from_path`` in the policy's dtype when neither a
  PEFT policy nor ``precompute_ref_log_probs``), the default for full fine-tuning;
- ``adapter``: the policy itself with its LoRA adapter disabled (``use_adapter(model, None)`` ->
  ``model.disable_adapter()``), the default for LoRA and QLoRA: no second copy;
- ``precomputed``: ``precompute_ref_log_probs=True``: the reference log-probabilities are computed once before
  training (``_precompute_ref_logps``) and read from the batch: no reference model, no reference forward in the
  step.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from planner.errors import PlannerError
from planner.specs.grpo import GrpoSpec
from planner.specs.ppo import PpoSpec

TASK_HELP = ("Training task: sft (one model, the sequences as given), dpo (TRL's DPOTrainer: chosen and rejected "
             "sequences in one batch, 2 x --micro-batch rows of --seq-len tokens, and a reference model, see "
             "--reference), grpo (TRL's GRPOTrainer: --micro-batch completions of --seq-len tokens, prompt plus "
             "--completion-len, generated then trained; see --num-generations, --beta, --generation), ppo (TRL 1.12's "
             "PPOTrainer, modelled from its source: policy, reference, value and reward models, --seq-len of query "
             "plus --response-len; see --num-mini-batches, --rollout-batch). Default: sft.")
REFERENCE_HELP = ("dpo: the reference model: copy (a separate frozen model, the default for full fine-tuning), "
                  "adapter (the policy with its LoRA adapter disabled, the default for LoRA and QLoRA), "
                  "precomputed (precompute_ref_log_probs: no reference model in the step). Default: auto.")


class Task(str, Enum):
    SFT = "sft"
    DPO = "dpo"
    GRPO = "grpo"
    PPO = "ppo"


class Reference(str, Enum):
    AUTO = "auto"
    COPY = "copy"
    ADAPTER = "adapter"
    PRECOMPUTED = "precomputed"


@dataclass(frozen=True)
class TaskSpec:
    kind: Task = Task.SFT
    reference: Reference = Reference.AUTO
    grpo: GrpoSpec | None = None  # --task grpo's settings (None for sft and dpo)
    ppo: PpoSpec | None = None  # --task ppo's settings (None otherwise)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, Task):
            raise PlannerError(f"task must be one of {', '.join(k.value for k in Task)}, got {self.kind!r}.")
        if not isinstance(self.reference, Reference):
            raise PlannerError(f"--reference must be one of {', '.join(r.value for r in Reference)}, "
                               f"got {self.reference!r}.")
        if self.kind is Task.SFT and self.reference is not Reference.AUTO:
            raise PlannerError(f"--reference {self.reference.value} applies to --task dpo; sft trains one model "
                               "with no reference.")
        if (self.kind is Task.GRPO) != isinstance(self.grpo, GrpoSpec):
            raise PlannerError("GRPO's settings (--num-generations, --completion-len, --beta, --generation) apply "
                               "to --task grpo only.")
        if (self.kind is Task.PPO) != isinstance(self.ppo, PpoSpec):
            raise PlannerError("PPO's settings (--response-len, --num-ppo-epochs, --num-mini-batches, "
                               "--rollout-batch) apply to --task ppo only.")
        if self.kind is Task.PPO and self.reference is not Reference.AUTO:
            raise PlannerError(f"--reference {self.reference.value} applies to --task dpo; PPOTrainer's reference "
                               "is a frozen copy for full fine-tuning and the policy with its adapter disabled for "
                               "LoRA.")
        if self.kind is Task.GRPO and self.reference is not Reference.AUTO:
            raise PlannerError(f"--reference {self.reference.value} applies to --task dpo; GRPO's reference follows "
                               "--beta (none at 0, a copy for full fine-tuning, the adapter disabled for LoRA).")

    @property
    def is_default(self) -> bool:
        return self.kind is Task.SFT

    def reference_for(self, peft: bool) -> Reference | None:
        """The reference the step holds (``auto`` resolved as DPOTrainer does); None for sft."""
        if self.kind is Task.SFT:
            return None
        if self.kind is Task.GRPO:
            if not self.grpo.uses_reference:  # GRPOTrainer.__init__: beta 0.0 -> ref_model None, no reference pass
                return None
            return Reference.ADAPTER if peft else Reference.COPY
        if self.kind is Task.PPO:  # PPOTrainer.__init__: create_reference_model, or None for a PeftModel
            return Reference.ADAPTER if peft else Reference.COPY
        if self.reference is Reference.AUTO:
            return Reference.ADAPTER if peft else Reference.COPY
        return self.reference

    @property
    def label(self) -> str:
        if self.kind is Task.GRPO:
            return f"grpo ({self.grpo.num_generations} generations, beta {self.grpo.beta:g})"
        if self.kind is Task.PPO:
            return f"ppo ({self.ppo.response_len}-token responses)"
        return self.kind.value if self.kind is Task.SFT else f"{self.kind.value} ({self.reference.value} reference)"

    def to_dict(self) -> dict:
        d = {"kind": self.kind.value, "reference": self.reference.value}
        if self.grpo is not None:
            d["grpo"] = self.grpo.to_dict()
        if self.ppo is not None:
            d["ppo"] = self.ppo.to_dict()
        return d

    @classmethod
    def from_flags(cls, kind: str, reference: str, grpo: GrpoSpec | None = None,
                   ppo: PpoSpec | None = None) -> TaskSpec:
        """``--task`` and ``--reference`` as typed; an unknown value is a PlannerError naming the flag."""
        try:
            task = Task(kind.lower())
        except ValueError:
            raise PlannerError(f"--task {kind!r} is not valid; choose one of "
                               f"{', '.join(k.value for k in Task)}.") from None
        try:
            ref = Reference(reference.lower())
        except ValueError:
            raise PlannerError(f"--reference {reference!r} is not valid; choose one of "
                               f"{', '.join(r.value for r in Reference)}.") from None
        return cls(task, ref, grpo if task is Task.GRPO else None, ppo if task is Task.PPO else None)

    @classmethod
    def from_dict(cls, d: dict | None) -> TaskSpec:
        """The JSON ``train.task`` block; absent (supervised fine-tuning): the default."""
        if d is None:
            return cls()
        try:
            kind = Task(d.get("kind", "sft"))
            grpo = GrpoSpec.from_dict(d.get("grpo", {})) if kind is Task.GRPO else None
            ppo = PpoSpec.from_dict(d.get("ppo", {})) if kind is Task.PPO else None
            return cls(kind=kind, reference=Reference(d.get("reference", "auto")), grpo=grpo, ppo=ppo)
        except ValueError:
            raise PlannerError(f"the training specification's task is malformed: {d!r}.") from None
