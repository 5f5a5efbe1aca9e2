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

import math
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


def reference_params_bytes(split: ParamSplit, train: TrainSpec, num_ranks: int = 1,
                           num_persistent_base: int = 0) -> int:
    """A separate frozen reference copy on one rank: every base parameter in the policy's base dtype (the compute
    dtype, as the profiler and the bundle load the policy; fp32 for fp32 training). 0 without a copy.

    Under DeepSpeed DPOTrainer.__init__ wraps it with ``prepare_deepspeed`` (trl/models/utils.py): the run's
    DeepSpeed config without its optimizer, scheduler and ``offload_optimizer``; ZeRO-3 keeps stage 3, so
    ``deepspeed.initialize`` partitions the reference like the policy (DeepSpeedZeRoOffload, partition_parameters.py
    ``_convert_to_zero_parameters``): P/N per rank (``ds_tensor``, rounded up as sharding.py's) plus every
    tensor of at most ``stage3_param_persistence_threshold`` elements whole (``num_persistent_base``, the
    policy's own base persistent elements: the same model). TRL's override of that threshold and of the buckets
    is written as top-level dotted keys (``"zero_optimization.reduce_bucket_size"``), which DeepSpeed's config
    does not read (runtime/config.py reads the nested ``zero_optimization`` section): the reference keeps the
    run's values. Stages 1 and 2 become stage 0: the whole copy on every rank."""
    if reference(train) is not Reference.COPY:
        return 0
    dtype = train.precision.compute_dtype
    if train.uses_deepspeed and train.zero_stage == 3:
        return nbytes(math.ceil(split.num_params / num_ranks), dtype) + nbytes(num_persistent_base, dtype)
    return nbytes(split.num_params, dtype)


def model_rows(train: TrainSpec, policy_params_bytes: int, reference_bytes: int, num_ranks: int) -> tuple[ModelRow, ...]:
    """The policy's and the reference's rows (empty for sft)."""
    ref = reference(train)
    if ref is None and train.task.grpo is not None:  # GRPO with beta 0: the policy alone
        return (ModelRow("policy", train.method.value, "replicated (DDP)" if num_ranks > 1 else "one rank",
                         policy_params_bytes, True),)
    if ref is None:
        return ()
    sharding = "replicated (DDP)" if num_ranks > 1 else "one rank"
    ref_sharding = sharding
    if train.uses_deepspeed:
        # the policy under the HF Trainer's DeepSpeed engine; the reference under TRL's prepare_deepspeed
        # (reference_params_bytes): partitioned at ZeRO-3, a whole copy at stage 0 otherwise
        sharding = f"DeepSpeed ZeRO-{train.zero_stage} over {num_ranks} rank{'s' if num_ranks > 1 else ''}"
        ref_sharding = (f"DeepSpeed ZeRO-3 inference engine over {num_ranks} rank{'s' if num_ranks > 1 else ''}"
                        if train.zero_stage == 3 else "DeepSpeed stage 0 (a whole copy on every rank)")
    policy = ModelRow("policy", train.method.value, sharding, policy_params_bytes, True)
    if ref is Reference.COPY:
        row = ModelRow("reference", "frozen copy", ref_sharding + ", no gradients or optimizer states",
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
    if train.uses_deepspeed:
        out.append(_deepspeed_note(train, ref))
    out.append("the step-time figures count one training pass of micro-batch x sequence tokens: the doubled batch "
               "and the reference forward are not in the time model yet.")
    return out


def _deepspeed_note(train: TrainSpec, ref: Reference) -> str:
    """What is modelled of DPO under DeepSpeed, in one note."""
    text = (f"DeepSpeed ZeRO-{train.zero_stage} (the HF Trainer's engine): the policy's weights, gradients and "
            "optimizer states are divided as for supervised training; ")
    if ref is Reference.COPY and train.zero_stage == 3:
        text += ("the reference is partitioned by TRL's prepare_deepspeed (a ZeRO-3 engine without optimizer: its "
                 "1/N share plus the parameters under the persistence threshold, whole); the parameters it gathers "
                 "during its no-grad forward are not modelled (at most its modules' weights, released after it).")
    elif ref is Reference.COPY:
        text += ("TRL's prepare_deepspeed runs the reference at ZeRO stage 0: a whole frozen copy on every rank.")
    elif ref is Reference.ADAPTER:
        text += "the reference pass disables the policy's LoRA adapter inside the same engine: no second model."
    else:
        text += "the reference log-probabilities are precomputed: no reference model in the step."
    if train.precision.compute_dtype != "fp32":
        text += (f" The reference is counted in {train.precision.compute_dtype} (DeepSpeed's engine casts the module "
                 "it wraps); DPO under DeepSpeed is measured on CPU in fp32 only.")
    return text
