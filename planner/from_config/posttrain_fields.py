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


# GRPOConfig's own fields (trl/trainer/grpo_config.py; none in DPOConfig, SFTConfig or TrainingArguments): a config
# with any of them is a GRPOTrainer run (its ``beta`` is then GRPO's KL coefficient, not DPO's)
GRPO_FIELDS = ("num_generations", "max_completion_length", "generation_batch_size", "steps_per_generation",
               "num_iterations", "use_vllm", "vllm_mode", "vllm_gpu_memory_utilization", "vllm_enable_sleep_mode",
               "epsilon", "epsilon_high", "importance_sampling_level", "scale_rewards", "reward_weights",
               "mask_truncated_completions", "top_entropy_quantile", "use_transformers_paged", "temperature")
# read, without a memory effect planner models (scalars of [B, C]-sized loss tensors, sampling settings)
GRPO_NO_MEMORY = ("epsilon", "epsilon_high", "scale_rewards", "reward_weights", "mask_truncated_completions",
                  "temperature", "importance_sampling_level")


def is_grpo(r) -> bool:
    return any(k in r.data for k in GRPO_FIELDS)


def grpo_task(r) -> TaskSpec:
    """The GRPOConfig's task; marks its fields read. What changes the step beyond planner's model is refused."""
    from planner.specs import Generation, GrpoSpec
    from planner.specs.grpo import DEFAULT_VLLM_MEMORY_UTILIZATION

    r.refuse_if("sync_ref_model", "updates the reference from the policy during training (SyncRefModelCallback), "
                "which planner does not model.")
    r.refuse_if("use_transformers_paged", "generates with transformers' paged continuous batching, which planner "
                "does not model.")
    for key in ("generation_batch_size", "steps_per_generation"):
        if r.has(key):
            r.refuse(key, "sets the generation batch apart from the gradient accumulation, which planner does not "
                     "model (it generates per_device_train_batch_size x gradient_accumulation_steps).")
    if r.whole("num_iterations", 1) != 1:
        r.refuse("num_iterations", "above 1 keeps old log-probabilities per batch, which planner does not model.")
    if (r.text("loss_type") or "dapo") != "dapo" or r.get("top_entropy_quantile", 1.0) != 1.0:
        r.notes.append("GRPO's loss_type and entropy mask change only [completions, tokens]-sized tensors.")
    for key in GRPO_NO_MEMORY:
        if key in r.data:
            r.get(key)
            r.ignored[key] = "does not change memory or time"
    vllm = bool(r.flag("use_vllm", False))
    if vllm and (r.text("vllm_mode") or "colocate") != "colocate":
        r.refuse("vllm_mode", "server runs vLLM outside the training process: set it aside (planner models colocate).")
    util = r.get("vllm_gpu_memory_utilization", DEFAULT_VLLM_MEMORY_UTILIZATION)
    grpo = GrpoSpec(num_generations=r.whole("num_generations", 8), completion_len=r.whole("max_completion_length", 512),
                    beta=float(r.get("beta", 0.0)),
                    generation=Generation.VLLM_COLOCATE if vllm else Generation.TRANSFORMERS,
                    vllm_memory_utilization=float(util) if vllm else DEFAULT_VLLM_MEMORY_UTILIZATION,
                    vllm_sleep=bool(r.flag("vllm_enable_sleep_mode", False)) if vllm else False)
    r.notes.append(f"a TRL GRPOConfig: --task grpo, {grpo.num_generations} generations of {grpo.completion_len} "
                   f"tokens, beta {grpo.beta:g}, generation with {grpo.generation.value}.")
    return TaskSpec(Task.GRPO, grpo=grpo)


# PPOConfig's own fields (TRL 1.12 trl/experimental/ppo/ppo_config.py, the last release with a PPOTrainer; none in
# DPOConfig, GRPOConfig or TrainingArguments): a config with any of them is a PPOTrainer run (its temperature is
# then PPO's sampling temperature)
PPO_FIELDS = ("response_length", "num_ppo_epochs", "num_mini_batches", "local_rollout_forward_batch_size",
              "kl_coef", "kl_estimator", "vf_coef", "cliprange", "cliprange_value", "gamma", "lam", "whiten_rewards",
              "reward_model_path", "sft_model_path", "total_episodes", "missing_eos_penalty", "stop_token",
              "stop_token_id", "ds3_gather_for_generation", "num_sample_generations")
PPO_NO_MEMORY = ("kl_coef", "kl_estimator", "vf_coef", "cliprange", "cliprange_value", "gamma", "lam",
                 "whiten_rewards", "reward_model_path", "sft_model_path", "total_episodes", "missing_eos_penalty",
                 "stop_token", "stop_token_id", "ds3_gather_for_generation", "num_sample_generations", "temperature")


def is_ppo(r) -> bool:
    return any(k in r.data for k in PPO_FIELDS)


def ppo_task(r) -> TaskSpec:
    """The PPOConfig's task; marks its fields read."""
    from planner.specs import PpoSpec

    for key in PPO_NO_MEMORY:
        if key in r.data:
            r.get(key)
            r.ignored[key] = "does not change memory or time planner models"
    ppo = PpoSpec(response_len=r.whole("response_length", 53), num_ppo_epochs=r.whole("num_ppo_epochs", 4),
                  num_mini_batches=r.whole("num_mini_batches", 1),
                  rollout_batch=r.whole("local_rollout_forward_batch_size", 64))
    r.notes.append(f"a TRL PPOConfig: --task ppo, {ppo.response_len}-token responses, {ppo.num_mini_batches} "
                   f"mini-batch(es), {ppo.rollout_batch} rows generated at once (TRL 1.12's PPOTrainer; "
                   "PPOConfig's gradient_checkpointing defaults to true, TrainingArguments' to false: planner reads "
                   "what the file says).")
    return TaskSpec(Task.PPO, ppo=ppo)
