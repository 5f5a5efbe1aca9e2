"""The field names of the training configs ``planner.from_config`` reads: optimizer and model-builder names, and
per format the documented fields that change neither memory nor time (listed as ignored with that reason;
any other unread field is listed as one planner does not read)."""

from __future__ import annotations

from planner.specs import Optimizer

# transformers OptimizerNames (training_args.py ``optim``; axolotl's ``optimizer`` takes the same names);
# adamw_hf and adamw_apex_fused are transformers 4.x names, still found in older configs.
HF_OPTIMIZERS = {
    "adamw_torch": Optimizer.ADAMW,
    "adamw_torch_fused": Optimizer.ADAMW_FUSED,
    "adamw_apex_fused": Optimizer.ADAMW,
    "adamw_hf": Optimizer.ADAMW,
    "adamw_bnb_8bit": Optimizer.ADAMW_8BIT,
    "adamw_8bit": Optimizer.ADAMW_8BIT,
    "paged_adamw_32bit": Optimizer.PAGED_ADAMW,
    "paged_adamw_8bit": Optimizer.PAGED_ADAMW_8BIT,
    "sgd": Optimizer.SGD,
    "adafactor": Optimizer.ADAFACTOR,
}

# torchtune ``optimizer._component_`` (recipes/configs/*; torch and bitsandbytes classes).
TORCHTUNE_OPTIMIZERS = {
    "torch.optim.AdamW": Optimizer.ADAMW,
    "torch.optim.Adam": Optimizer.ADAMW,
    "bitsandbytes.optim.AdamW8bit": Optimizer.ADAMW_8BIT,
    "bitsandbytes.optim.PagedAdamW": Optimizer.PAGED_ADAMW,
    "bitsandbytes.optim.PagedAdamW32bit": Optimizer.PAGED_ADAMW,
    "bitsandbytes.optim.PagedAdamW8bit": Optimizer.PAGED_ADAMW_8BIT,
    "torch.optim.SGD": Optimizer.SGD,
}

# torchtune model builders (torchtune/models/<family>/_model_builders.py, without the lora_/qlora_ prefix) and
# the Hugging Face checkpoint each one's recipes download (the ``tune download`` line of the recipe configs).
TORCHTUNE_MODELS = {
    "llama2_7b": "meta-llama/Llama-2-7b-hf",
    "llama2_13b": "meta-llama/Llama-2-13b-hf",
    "llama2_70b": "meta-llama/Llama-2-70b-hf",
    "llama3_8b": "meta-llama/Meta-Llama-3-8B-Instruct",
    "llama3_70b": "meta-llama/Meta-Llama-3-70B-Instruct",
    "llama3_1_8b": "meta-llama/Meta-Llama-3.1-8B-Instruct",
    "llama3_1_70b": "meta-llama/Meta-Llama-3.1-70B-Instruct",
    "llama3_1_405b": "meta-llama/Meta-Llama-3.1-405B-Instruct",
    "llama3_2_1b": "meta-llama/Llama-3.2-1B-Instruct",
    "llama3_2_3b": "meta-llama/Llama-3.2-3B-Instruct",
    "mistral_7b": "mistralai/Mistral-7B-v0.1",
    "gemma2_9b": "google/gemma-2-9b",
    "gemma2_27b": "google/gemma-2-27b",
    "phi3_mini": "microsoft/Phi-3-mini-4k-instruct",
    "qwen2_5_0_5b": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2_5_1_5b_instruct": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen2_5_7b_instruct": "Qwen/Qwen2.5-7B-Instruct",
    "qwen2_5_14b_instruct": "Qwen/Qwen2.5-14B-Instruct",
    "qwen2_5_32b_instruct": "Qwen/Qwen2.5-32B-Instruct",
    "qwen2_5_72b_instruct": "Qwen/Qwen2.5-72B-Instruct",
    "qwen3_8b_instruct": "Qwen/Qwen3-8B",
}

_TRAINER_NO_MEMORY = {
    "output_dir", "overwrite_output_dir", "do_train", "do_eval", "do_predict", "eval_strategy",
    "evaluation_strategy", "eval_steps", "learning_rate", "num_train_epochs", "max_steps", "lr_scheduler_type",
    "lr_scheduler_kwargs", "warmup_ratio", "warmup_steps", "logging_steps", "logging_strategy", "logging_dir",
    "log_level", "save_strategy", "save_steps", "save_total_limit", "save_only_model", "seed", "data_seed",
    "report_to", "run_name", "push_to_hub", "hub_model_id", "hub_strategy", "hub_private_repo",
    "per_device_eval_batch_size", "remove_unused_columns", "weight_decay", "max_grad_norm", "adam_beta1",
    "adam_beta2", "adam_epsilon", "ddp_timeout", "dataloader_num_workers", "dataloader_pin_memory",
    "resume_from_checkpoint", "load_best_model_at_end", "metric_for_best_model", "greater_is_better",
    "label_smoothing_factor", "group_by_length", "include_num_input_tokens_seen", "disable_tqdm",
    "trust_remote_code", "model_revision", "cache_dir", "tf32", "ddp_find_unused_parameters",
    "gradient_checkpointing_kwargs", "save_safetensors", "bf16_full_eval", "fp16_full_eval", "optim_args",
}

LLAMAFACTORY_NO_MEMORY = frozenset(_TRAINER_NO_MEMORY | {
    "dataset", "eval_dataset", "dataset_dir", "template", "max_samples", "overwrite_cache",
    "preprocessing_num_workers", "plot_loss", "val_size", "tokenized_path", "streaming", "buffer_size",
    "mix_strategy", "interleave_probs", "train_on_prompt", "mask_history", "loraplus_lr_ratio",
    "loraplus_lr_embedding", "use_rslora", "create_new_adapter", "adapter_name_or_path", "use_fast_tokenizer",
    "low_cpu_mem_usage", "print_param_status", "compute_accuracy", "predict_with_generate", "max_new_tokens",
    "default_system", "enable_thinking", "image_max_pixels", "video_max_pixels", "include_effective_tokens_per_second",
})

AXOLOTL_NO_MEMORY = frozenset(_TRAINER_NO_MEMORY | {
    "model_type", "tokenizer_type", "strict", "datasets", "test_datasets", "dataset_prepared_path", "val_set_size",
    "lora_model_dir", "lora_fan_in_fan_out", "wandb_project", "wandb_entity", "wandb_watch", "wandb_name",
    "wandb_log_model", "num_epochs", "lr_scheduler", "train_on_inputs", "early_stopping_patience", "local_rank",
    "evals_per_epoch", "eval_table_size", "saves_per_epoch", "debug", "special_tokens", "eval_sample_packing",
    "chat_template", "dataset_processes", "loss_watchdog_threshold", "loss_watchdog_patience", "tokens",
    "save_first_step", "use_tensorboard", "hf_use_auth_token", "tokenizer_config", "shuffle_merged_datasets",
    "sample_packing_sequentially", "max_prompt_len",
})

TORCHTUNE_NO_MEMORY = frozenset({
    "output_dir", "checkpointer", "resume_from_checkpoint", "save_adapter_weights_only", "seed", "shuffle",
    "lr_scheduler", "epochs", "max_steps_per_epoch", "clip_grad_norm", "metric_logger", "log_every_n_steps",
    "log_peak_memory_stats", "device", "profiler", "low_cpu_ram", "log_level", "save_last_epoch_only",
    "epochs_to_save",
})

HF_NO_MEMORY = frozenset(_TRAINER_NO_MEMORY | {
    "chat_template", "chat_template_path", "dataset_mixture", "dataset_mixer", "dataset_splits", "dataset_name",
    "dataset_config", "dataset_train_split", "dataset_test_split", "preprocessing_num_workers", "dataset_num_proc",
    "dataset_text_field", "dataset_kwargs", "lora_task_type", "use_rslora", "eos_token", "pad_token",
    "completion_only_loss", "assistant_only_loss", "truncation_mode", "shuffle_dataset", "eval_packing",
    "packing_strategy", "model_init_kwargs",
})
