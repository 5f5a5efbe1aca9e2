"""Post-training (``--task dpo``): the models a TRL 1.16 DPOTrainer holds, each a row, and the step's phases.

The policy is the model being trained: its rows are the single-model estimator's (states.py, sharding.py), on the
doubled batch (``DataCollatorForPreference``: chosen and rejected rows) with TRL's fused LM head
(step/trl_head.py). The reference (specs/task.py ``Reference``):

- ``copy``: ``DPOTrainer.__init__`` builds ``create_model_from_path(..., dtype=self.model.dtype)`` when the policy is
  not a PEFT model and ``precompute_ref_log_probs`` is false (trl/trainer/dpo_trainer.py), frozen
  (``requires_grad`` off, ``eval()``) and prepared for evaluation only (``accelerator.prepare_model(...,
  evaluation_mode=True)``): its weights in the policy's base dtype on every rank, no gradients, no optimizer
  states. The user's own ``ref_model`` for a LoRA policy is the same: the base weights once more.
- ``adapter``: ``use_adapter(model, None)`` -> ``model.disable_adapter()``: the policy's own base weights, no bytes.
- ``precomputed``: ``_precompute_ref_logps`` writes two floats per example into the dataset before training.

The phases of the step: ``training`` (the policy's forward, backward and optimizer step: ``forward``,
``backward``, ``optimizer_step``) and ``scoring`` (the reference forward, under ``torch.no_grad()`` inside
``_compute_loss``, after the policy's forward: its working set is on top of the policy's saved activations; part
of the ``forward`` phase's peak). DPOTrainer generates nothing: there is no generation phase.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.estimate.count.params import ParamSplit
from planner.specs import Method, Reference, Task, TrainSpec
from planner.units import fmt_gib, nbytes


@dataclass(frozen=True)
class ModelRow:
    """One model the run holds on each rank."""

    role: str  # "policy" or "reference"
    method: str  # full, lora, qlora; "frozen" for a reference copy; "adapter disabled"; "precomputed"
    sharding: str  # how its states are divided over ranks
    params_bytes: int  # its weights on one rank (0: shares the policy's, or none)
    trainable: bool

    def to_dict(self) -> dict:
        return {"role": self.role, "method": self.method, "sharding": self.sharding,
                "params_bytes": self.params_bytes, "trainable": self.trainable}


def reference(train: TrainSpec) -> Reference | None:
    return train.task.reference_for(train.method is not Method.FULL)


def reference_params_bytes(split: ParamSplit, train: TrainSpec) -> int:
    """A separate frozen reference copy: every base parameter in the policy's base dtype (the compute dtype, as
    the profiler and the bundle load the policy; fp32 for fp32 training). 0 without a copy."""
    if reference(train) is not Reference.COPY:
        return 0
    return nbytes(split.num_params, train.precision.compute_dtype)


def model_rows(train: TrainSpec, policy_params_bytes: int, reference_bytes: int, num_ranks: int) -> tuple[ModelRow, ...]:
    """The policy's and the reference's rows (empty for sft)."""
    ref = reference(train)
    if ref is None and train.task.grpo is not None:  # GRPO with beta 0: the policy alone
        return (ModelRow("policy", train.method.value, "replicated (DDP)" if num_ranks > 1 else "one rank",
                         policy_params_bytes, True),)
    if ref is None:
        return ()
    sharding = "replicated (DDP)" if num_ranks > 1 else "one rank"
    policy = ModelRow("policy", train.method.value, sharding, policy_params_bytes, True)
    if ref is Reference.COPY:
        row = ModelRow("reference", "frozen copy", sharding + ", no gradients or optimizer states",
                       reference_bytes, False)
    elif ref is Reference.ADAPTER:
        row = ModelRow("reference", "policy with its adapter disabled", "shares the policy's weights", 0, False)
    else:
        row = ModelRow("reference", "precomputed log-probabilities", "none in the step", 0, False)
    return policy, row


def notes(train: TrainSpec, rows: tuple[ModelRow, ...], scoring_peak_bytes: int) -> list[str]:
    ref = reference(train)
    if ref is None or train.task.kind is not Task.DPO:  # GRPO's are estimate/grpo.py's, PPO's estimate/ppo.py's
        return []
    out = [f"--task dpo (TRL 1.16 DPOTrainer): each micro-batch is {2 * train.micro_batch} rows of "
           f"{train.seq_len} tokens (chosen and rejected concatenated); log-probabilities through TRL's fused LM "
           "head (add_fused_lm_head: tiles of up to 4,096 tokens x 32,768 vocabulary columns, the tile buffer "
           "allocated at full width)."]
    out.append("on a GPU TRL's Triton kernels score only the completion tokens; planner scores every position (an "
               "upper bound of the head's tile buffer), a rule modelled from TRL's source and measured on CPU only.")
    ref_row = rows[1]
    if ref is Reference.COPY:
        out.append(f"reference: a frozen copy of the model, {fmt_gib(ref_row.params_bytes)} of weights per rank "
                   "(counted in params); its forward runs under no_grad after the policy's"
                   + (f", peaking at {fmt_gib(scoring_peak_bytes)} of activations and temporaries."
                      if scoring_peak_bytes else "."))
    elif ref is Reference.ADAPTER:
        out.append("reference: the policy with its LoRA adapter disabled (peft disable_adapter), no second copy"
                   + (f"; its forward peaks at {fmt_gib(scoring_peak_bytes)} of activations and temporaries."
                      if scoring_peak_bytes else "."))
    else:
        out.append("reference: precomputed log-probabilities (precompute_ref_log_probs), computed once before "
                   "training: no reference model or reference forward in the step.")
    out.append("the step-time figures count one training pass of micro-batch x sequence tokens: the doubled batch "
               "and the reference forward are not in the time model yet.")
    return out
