"""--task grpo outside the simulated step: the generation phase, vLLM's colocated share, and the notes.

TRL 1.16's ``GRPOTrainer._prepare_inputs`` generates once per ``steps_per_generation`` (default
``gradient_accumulation_steps``) micro-batches, before the step's forward, after the previous step's
``zero_grad`` (no gradients alive): each rank generates ``per_device_train_batch_size x steps_per_generation``
completions (``generation_batch_size`` / processes; the RepeatSampler repeats each prompt ``num_generations``
times). The scoring forwards (the reference's log-probabilities, under no_grad) and the training step on the
generated batch are the simulated step's (step/grpo_step.py).

Generation with transformers (``_generate_single_turn``: ``unwrapped_model.generate`` under ``torch.no_grad()``),
transformers/generation/utils.py ``_sample`` and cache_utils.py ``DynamicLayer.update``: every decoder layer
keeps keys and values of ``[rows, kv_heads, positions, head_dim]`` in the compute dtype, grown by ``torch.cat``
each token (the old and the new tensor of one layer coexist during the cat); the last forward holds ``prompt +
completion - 1`` positions. ``logits_to_keep=1``: one position's logits ``[rows, 1, V]`` in the compute dtype, then
``next_token_logits`` (an fp32 copy, ``.to(copy=True, dtype=torch.float32)``) and ``softmax`` probabilities (fp32)
per token (``temperature`` 1.0, ``top_p`` 1.0, ``top_k`` 0: no warper allocates). The prefill's one-layer
working set over the prompt is not counted (a lower bound of this phase, said in a note).

vLLM colocated (``use_vllm``, ``vllm_mode="colocate"``; trl/generation/vllm_generation.py ``VLLMGeneration``):
``LLM(model=..., gpu_memory_utilization=u, enable_sleep_mode=...)`` in the trainer's process: vLLM sizes its KV
cache so that its weights copy, cache and activations take ``u`` of the GPU's memory, outside the trainer's
tensors. With ``vllm_enable_sleep_mode`` TRL calls ``llm.sleep(level=2)`` after building it and after every
generation (weights discarded, cache freed) and ``wake_up`` before generating: the share is held only while
generating. vLLM is not installed here: modelled from TRL's source, not profiled.
"""

from __future__ import annotations

from dataclasses import replace

from planner.estimate.result import MemoryBreakdown
from planner.specs import Generation, ModelSpec, TrainSpec
from planner.units import dtype_bytes, fmt_gib


def generation_rows(train: TrainSpec) -> int:
    """Completions one rank generates at once: per_device_train_batch_size x steps_per_generation."""
    return train.micro_batch * train.grad_accum


def kv_cache_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """DynamicCache at the last decoding forward, with one layer's key tensor being re-made by torch.cat."""
    rows = generation_rows(train)
    positions = train.seq_len - 1
    per_position = rows * model.num_kv_heads * model.head_dim * dtype_bytes(train.precision.compute_dtype)
    return 2 * model.num_layers * per_position * positions + per_position * (positions - 1)


def decode_temporaries_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """One token's logits (compute dtype), their fp32 copy and the fp32 softmax probabilities."""
    rows = generation_rows(train)
    return rows * model.vocab_size * (dtype_bytes(train.precision.compute_dtype) + 2 * dtype_bytes("fp32"))


def generation_phase(model: ModelSpec, train: TrainSpec, forward: MemoryBreakdown) -> MemoryBreakdown | None:
    """The trainer's tensors while transformers generates (None with vLLM: its share is outside them)."""
    if train.task.grpo is None or train.task.grpo.generation is not Generation.TRANSFORMERS:
        return None
    return replace(forward, grads_bytes=0, activations_bytes=0,
                   temporaries_bytes=kv_cache_bytes(model, train) + decode_temporaries_bytes(model, train))


def vllm_bytes(train: TrainSpec, capacity_bytes: int) -> tuple[int, int]:
    """vLLM's colocated share (bytes while generating, bytes held while training); (0, 0) without it."""
    grpo = train.task.grpo
    if grpo is None or grpo.generation is not Generation.VLLM_COLOCATE:
        return 0, 0
    share = int(capacity_bytes * grpo.vllm_memory_utilization)
    return share, 0 if grpo.vllm_sleep else share


def notes(model: ModelSpec, train: TrainSpec, capacity_bytes: int, generation: MemoryBreakdown | None) -> list[str]:
    grpo = train.task.grpo
    if grpo is None:
        return []
    prompt = train.seq_len - grpo.completion_len
    out = [f"--task grpo (TRL 1.16 GRPOTrainer): each micro-batch is {train.micro_batch} completions of "
           f"{grpo.completion_len} tokens after a {prompt}-token prompt, groups of {grpo.num_generations} (the group "
           "size changes no tensor of a rank's step); log-probabilities and entropies through TRL's fused LM head, "
           "the GRPO loss (dapo, token-level) over the completion tokens."]
    if grpo.uses_reference:
        out.append(f"beta {grpo.beta:g}: the reference scores each micro-batch under no_grad before the step "
                   "(a frozen copy for full fine-tuning, counted in params; the policy with its adapter disabled "
                   "for LoRA).")
    else:
        out.append("beta 0 (TRL's default): no reference model and no reference forward.")
    if generation is not None:
        out.append(f"generation (transformers model.generate, {generation_rows(train)} completions per rank): KV "
                   f"cache {fmt_gib(kv_cache_bytes(model, train))} at full length plus one token's logits and "
                   "probabilities; the prefill's one-layer working set over the prompt is not counted. This phase is "
                   "modelled from transformers' source; the validation cells peak in training, not here.")
    else:
        share, held = vllm_bytes(train, capacity_bytes)
        out.append(f"generation: vLLM colocated with gpu_memory_utilization {grpo.vllm_memory_utilization:g}: "
                   f"{fmt_gib(share)} of the GPU for its weights copy and KV cache, "
                   + ("released while training (sleep mode, level 2)" if held == 0 else "held through training")
                   + "; in the device figure, outside the allocated tensors. Modelled from TRL's source, not "
                   "profiled (vLLM is not installed here).")
    out.append("the step-time figures count one training pass: generation and the reference forward are not in the "
               "time model yet.")
    return out
