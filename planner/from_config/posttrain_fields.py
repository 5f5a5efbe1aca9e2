"""The post-training task a TRL config names (``TrainSpec.task``), by DPOConfig's documented field names.

TRL 1.16 ``DPOConfig`` (trl/trainer/dpo_config.py): a config with any of its own fields is a DPOTrainer run.
``precompute_ref_log_probs: true`` means no reference model in the step; otherwise DPOTrainer builds a frozen copy
for full fine-tuning and disables the adapter of a PEFT policy (``--reference auto``). Its ``loss_type`` (a list,
default ``["sigmoid"]``) and the loss's scalars change only [pairs]-sized tensors. Refused: ``sync_ref_model``
(TRL refuses it with PEFT; its callback's parameter copies are not modelled), ``use_weighting`` (an extra per-token
output of the fused head), ``padding_free`` (TRL 1.16 turns it off with a warning anyway) is left to the caller.
"""

from __future__ import annotations

from planner.specs import Reference, Task, TaskSpec

# DPOConfig's own fields (none of them in TrainingArguments or SFTConfig)
DPO_FIELDS = ("beta", "precompute_ref_log_probs", "precompute_ref_batch_size", "ref_model_init_kwargs",
              "f_divergence_type", "f_alpha_divergence_coef", "ld_alpha", "label_smoothing", "loss_weights",
              "use_weighting", "discopop_tau", "sync_ref_model", "ref_model_mixup_alpha", "ref_model_sync_steps",
              "rpo_alpha", "truncation_mode")
# read, without a memory effect planner models
DPO_NO_MEMORY = ("beta", "f_divergence_type", "f_alpha_divergence_coef", "ld_alpha", "label_smoothing",
                 "loss_weights", "discopop_tau", "precompute_ref_batch_size", "ref_model_init_kwargs",
                 "truncation_mode", "rpo_alpha")


def is_dpo(r) -> bool:
    return any(k in r.data for k in DPO_FIELDS)


def dpo_task(r) -> TaskSpec:
    """The DPOConfig's task; marks its fields read."""
    r.refuse_if("sync_ref_model", "updates the reference from the policy during training (SyncRefModelCallback), "
                "which planner does not model.")
    r.refuse_if("use_weighting", "adds WPO's per-token output to the fused LM head, which planner does not model.")
    r.refuse_if("ref_model_mixup_alpha", "belongs to sync_ref_model, which planner does not model.")
    r.refuse_if("ref_model_sync_steps", "belongs to sync_ref_model, which planner does not model.")
    loss = r.get("loss_type")
    if loss is not None:
        r.ignored["loss_type"] = "DPO's loss on [pairs]-sized log-probability sums: no memory planner models"
    for key in DPO_NO_MEMORY:
        if key in r.data:
            r.get(key)
            r.ignored[key] = "does not change memory or time"
    pre = bool(r.flag("precompute_ref_log_probs", False))
    r.notes.append("a TRL DPOConfig: --task dpo, " + ("reference log-probabilities precomputed."
                   if pre else "the reference as DPOTrainer builds it (a frozen copy for full fine-tuning, the "
                   "adapter disabled for a PEFT policy)."))
    return TaskSpec(Task.DPO, Reference.PRECOMPUTED if pre else Reference.AUTO)
