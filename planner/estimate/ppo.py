"""--task ppo: TRL 1.12's PPOTrainer (trl/experimental/ppo/ppo_trainer.py), the last TRL release that has one
(TRL 1.13 removed it, huggingface/trl pull request 7020; the installed TRL 1.16 has none): modelled from that source,
not profiled with the installed TRL.

The models (``PPOTrainer.__init__``), each a row:

- the policy: trained with --method (peft's ``get_peft_model`` for a ``peft_config``); its states are the
  single-model estimator's, its step the simulated one (step/ppo_step.py);
- the reference: ``create_reference_model(policy)`` (a frozen deep copy, the policy's dtype) for a full policy,
  none for a PEFT one (``null_ref_context``: ``disable_adapter()``) (posttrain.reference_params_bytes);
- the value model: an ``AutoModelForSequenceClassification``-style model (``value_model.base_model_prefix``
  backbone and a ``score`` linear, hidden -> 1, no bias), trained in full: ``PolicyAndValueWrapper`` holds the
  policy and the value model and ``create_optimizer_and_scheduler`` steps every parameter of the wrapper. planner
  takes the policy's architecture and dtype for it (TRL's example scripts load both from checkpoints of the
  policy's family), so its parameters are the policy's less the LM head plus ``hidden`` for the score;
- the reward model: the same architecture, frozen (``reward_model.to(device)``), no gradients or states.

The phases of one PPO update (``train()``), each a moment of the trainer's tensors on a rank:

- ``generation``: ``batch_generation`` (``@torch.no_grad``) generates ``local_rollout_forward_batch_size`` rows
  at a time with ``output_scores=True``: transformers' ``_sample`` keeps each token's fp32 processed scores
  ``[rows, V]`` (``next_token_logits.to(float32)``, the temperature warper's quotient), TRL's ``generate``
  stacks them (``torch.stack(output.scores, 1)``: a second copy) while the output (its KV cache included) is
  alive; ``batch_generation`` keeps every chunk's stacked scores and ``pad`` copies them into one padded
  tensor ``logitss`` ``[chunks x rows, R, V]`` fp32. ``logitss`` is a local of ``train()`` that no ``del``
  releases: it stays alive through the update, and the previous update's is alive while the next generates.
- ``scoring``: per chunk, under no_grad, the reference (``forward``: ``output_hidden_states=True``, every layer's
  output kept in the output, the ``[rows, S, V]`` logits in the compute dtype and the DynamicCache transformers
  builds when use_cache is not passed), then the value model and the
  reward model (``get_reward``: the backbone with ``output_hidden_states=True`` and the score ``[rows, S, 1]``).
- ``forward``/``backward``/``optimizer_step``: the wrapper's forward runs the value backbone first (never
  checkpointed: ``PolicyAndValueWrapper.gradient_checkpointing_enable`` enables the policy only; its saved
  activations live until its backward, which comes after the policy's), then the policy (step/ppo_step.py); the
  ``output`` keeps the policy's logits, the layers' outputs and (without checkpointing) its DynamicCache through
  ``optimizer.step``.
- ``entropy``: after ``optimizer.step()`` and ``zero_grad()``, under no_grad: ``prob_dist = softmax(logits)`` and
  ``prob_dist * logits``, each ``[b, R, V]`` in the compute dtype, beside the logits. When a mini-batch has more
  than one micro-batch, these locals (``output`` with its logits and hidden states, ``prob_dist``) are only
  replaced when the next micro-batch's forward returns: they are alive through it (``carried``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from planner.estimate.count.params import ParamCounts, ParamSplit
from planner.estimate.peak import PhaseModel
from planner.estimate.posttrain import ModelRow
from planner.estimate.result import MemoryBreakdown
from planner.estimate.states import unsharded_states
from planner.estimate.temporaries import master_grad_copy_bytes, optimizer_scratch_bytes
from planner.specs import Method, ModelSpec, TaskSpec, TrainSpec
from planner.specs.ppo import TRL_PPO_RELEASE
from planner.units import dtype_bytes, fmt_gib, nbytes

# transformers' LlamaForSequenceClassification (and its siblings): self.score = nn.Linear(hidden, num_labels,
# bias=False); TRL's PPO scripts load the value and reward models with num_labels=1
NUM_LABELS = 1


@dataclass(frozen=True)
class PpoSide:
    """What the value and reward models and the rollout add on one rank (bytes)."""

    value_params_bytes: int
    value_grads_bytes: int
    value_optimizer_bytes: int
    value_step_bytes: int  # the optimizer step's scratch over the value model's parameters (temporaries.py)
    reward_params_bytes: int
    value_saved_bytes: int  # the value backbone's saved activations for one micro-batch (no checkpointing)
    logitss_bytes: int  # the rollout's padded fp32 scores, alive through the update
    rollout_bytes: int  # the rollout's [rows, R] and [rows, S] buffers (ids, log-probs, values, advantages...)
    generation_bytes: int  # generation's own peak: chunk scores, their stack, the KV cache, pad's copy
    scoring_bytes: int  # the largest scoring forward's kept tensors (reference: hidden states and logits)
    held_bytes: int  # the policy's output kept through optimizer.step: its logits and the layers' outputs
    entropy_bytes: int  # prob_dist and prob_dist * logits
    carried_bytes: int  # the previous micro-batch's locals during the next forward (0 with one per mini-batch)


def value_num_params(counts: ParamCounts, hidden_size: int) -> int:
    """The value (and reward) model: the policy's backbone and a score head, no LM head."""
    return counts.num_params - counts.lm_head + hidden_size * NUM_LABELS


def rollout_rows(train: TrainSpec) -> tuple[int, int]:
    """(local_batch_size, rows generated and scored at once): per_device_train_batch_size x
    gradient_accumulation_steps, and local_rollout_forward_batch_size (at most the former)."""
    local = train.micro_batch * train.grad_accum
    return local, min(train.task.ppo.rollout_batch, local)


def side(model: ModelSpec, train: TrainSpec, counts: ParamCounts, value_per_layer_saved_bytes: int) -> PpoSide:
    ppo = train.task.ppo
    compute = train.precision.compute_dtype
    db = dtype_bytes(compute)
    h, v, n_layers = model.hidden_size, model.vocab_size, model.num_layers
    s, r, b = train.seq_len, ppo.response_len, train.micro_batch
    num_value = value_num_params(counts, h)
    # the value model trained in full by the wrapper's optimizer: its states as a full model's (states.py)
    value = unsharded_states(counts, ParamSplit(num_value, num_value, 0, 0, num_value),
                             replace(train, method=Method.FULL))
    # one optimizer steps the wrapper's parameters: its step's scratch covers the value model's too, by the policy's
    # rules (temporaries.py: foreach AdamW's sqrt copy of the second moment, in the states' dtype; mixed
    # precision's fp32 copy of the 16-bit gradients)
    moment = 2 if train.precision.value == "bf16" else 4
    value_step = (optimizer_scratch_bytes(train, num_trainable_on_gpu=num_value, moment_bytes=moment,
                                          largest_trainable=counts.largest_module)
                  + master_grad_copy_bytes(train, num_value if compute != "fp32" else 0))
    local, rows = rollout_rows(train)
    chunks = math.ceil(local / rows)
    chunk_scores = rows * r * v * dtype_bytes("fp32")  # one chunk's stacked scores
    logitss = chunks * chunk_scores  # pad(): every chunk padded to the largest, [chunks, rows, R, V]
    # the KV cache after the last token (DynamicLayer.update's torch.cat: keys and values [rows, kv, S - 1, hd])
    kv = 2 * n_layers * rows * model.num_kv_heads * model.head_dim * (s - 1) * db
    # at the last chunk's stack: the earlier chunks, the scores tuple and its stack, the output's cache; then pad
    at_stack = (chunks - 1) * chunk_scores + 2 * chunk_scores + kv
    at_pad = 2 * logitss
    generation = logitss + max(at_stack, at_pad)  # the previous update's logitss is still alive
    hidden_states = (n_layers + 1) * rows * s * h * db  # output_hidden_states: the embeddings and every layer
    # forward() passes no use_cache: transformers' merge_with_config_defaults (utils/generic.py) takes the config's
    # use_cache (True) unless the model checkpoints with gradients enabled, and XModel.forward builds a
    # DynamicCache whose keys and values [rows, kv_heads, S, head_dim] of every layer the output keeps
    # (get_reward passes use_cache=False: the value and reward models keep none)
    per_row_cache = 2 * n_layers * model.num_kv_heads * model.head_dim * s * db
    # the reference's outputs (no_grad: its cache is on); the value's and reward's are smaller
    scoring = hidden_states + rows * s * v * db + rows * per_row_cache
    # rollout buffers: query_responses [local, S] int64; responses, postprocessed_responses, response_idxs int64,
    # padding_mask and padding_mask_p1 bool, logprobs, ref_logprobs, values, kl, non_score_reward, rewards,
    # advantages, returns fp32 [local, R]; scores and sequence_lengths [local]
    rollout = local * (s * 8 + r * (3 * 8 + 2 * 1 + 8 * 4) + 4 + 8)
    # the policy's output: its logits, the layers' outputs and, without checkpointing, its cache
    held = b * s * v * db + (n_layers + 1) * b * s * h * db + (0 if train.grad_checkpointing else b * per_row_cache)
    entropy = 2 * b * r * v * db
    per_mini_batch = local // ppo.num_mini_batches // b
    carried = held + b * r * v * db if per_mini_batch > 1 else 0
    # the value backbone's layers saved for its backward (one layer's, simulated, times the layers) and its final
    # norm's input and output (the score linear saves the latter)
    value_saved = n_layers * value_per_layer_saved_bytes + 2 * b * s * h * db
    return PpoSide(
        value_params_bytes=value.params_bytes, value_grads_bytes=value.grads_bytes,
        value_optimizer_bytes=value.optimizer_states_bytes, value_step_bytes=value_step,
        reward_params_bytes=nbytes(num_value, compute), value_saved_bytes=value_saved,
        logitss_bytes=logitss, rollout_bytes=rollout, generation_bytes=generation, scoring_bytes=scoring,
        held_bytes=held, entropy_bytes=entropy, carried_bytes=carried,
    )


def value_train(train: TrainSpec) -> TrainSpec:
    """The value model's own step as a full-fine-tuning run of the same shape, never checkpointed, dropout off."""
    return replace(train, method=Method.FULL, grad_checkpointing=False, task=TaskSpec(), dropout=0.0)


def phases(pm: PhaseModel, train: TrainSpec, ps: PpoSide) -> PhaseModel:
    """The policy's simulated phases with the value and reward models and the rollout added, and the
    generation, scoring and entropy moments."""
    accumulating = train.grad_accum > 1
    frozen = ps.reward_params_bytes + ps.value_params_bytes
    out = {}
    for name, m in pm.phases.items():
        grads = ps.value_grads_bytes if (accumulating or name == "optimizer_step") else 0
        acts = ps.value_saved_bytes if name in ("forward", "backward") else 0
        extra = ps.logitss_bytes + ps.rollout_bytes + (ps.value_step_bytes if name == "optimizer_step" else 0)
        if name in ("forward", "backward"):
            extra += ps.carried_bytes
        else:
            extra += ps.held_bytes
        out[name] = replace(m, params_bytes=m.params_bytes + frozen, grads_bytes=m.grads_bytes + grads,
                            optimizer_states_bytes=m.optimizer_states_bytes + ps.value_optimizer_bytes,
                            activations_bytes=m.activations_bytes + acts,
                            temporaries_bytes=m.temporaries_bytes + extra)
    fwd = out["forward"]
    idle = MemoryBreakdown(params_bytes=fwd.params_bytes, optimizer_states_bytes=fwd.optimizer_states_bytes,
                           overhead_bytes=fwd.overhead_bytes)
    out["generation"] = replace(idle, temporaries_bytes=ps.generation_bytes)
    out["scoring"] = replace(idle, temporaries_bytes=ps.logitss_bytes + ps.rollout_bytes + ps.scoring_bytes)
    out["entropy"] = replace(idle, grads_bytes=fwd.grads_bytes,
                             temporaries_bytes=ps.logitss_bytes + ps.rollout_bytes + ps.held_bytes
                             + ps.entropy_bytes)
    peak = max(out, key=lambda p: (out[p].total_bytes, p))
    return PhaseModel(phases=out, peak_phase=peak)


def model_rows(train: TrainSpec, policy_params_bytes: int, reference_bytes: int, ps: PpoSide,
               num_ranks: int) -> tuple[ModelRow, ...]:
    sharding = "replicated (DDP)" if num_ranks > 1 else "one rank"
    policy = ModelRow("policy", train.method.value, sharding, policy_params_bytes, True)
    if reference_bytes:
        ref = ModelRow("reference", "frozen copy", sharding + ", no gradients or optimizer states",
                       reference_bytes, False)
    else:
        ref = ModelRow("reference", "policy with its adapter disabled", "shares the policy's weights", 0, False)
    value = ModelRow("value", "full", sharding + ", trained with the policy (PolicyAndValueWrapper)",
                     ps.value_params_bytes, True)
    reward = ModelRow("reward", "frozen", sharding + ", no gradients or optimizer states", ps.reward_params_bytes,
                      False)
    return policy, ref, value, reward


def notes(model: ModelSpec, train: TrainSpec, ps: PpoSide, pm: PhaseModel) -> list[str]:
    ppo = train.task.ppo
    local, rows = rollout_rows(train)
    training = max(pm.phases[p].total_bytes for p in ("forward", "backward", "optimizer_step"))
    return [
        f"--task ppo follows TRL {TRL_PPO_RELEASE}'s PPOTrainer source (trl/experimental/ppo, the last release "
        "with one); not profiled with the installed TRL, which has no PPOTrainer.",
        f"each rank generates {local} responses of {ppo.response_len} tokens per update ({rows} at a time) after a "
        f"{train.seq_len - ppo.response_len}-token query, then trains {ppo.num_ppo_epochs} epochs x "
        f"{ppo.num_mini_batches} mini-batch(es) on them in micro-batches of {train.micro_batch}.",
        "the value and reward models are taken as the policy's architecture in its dtype (a score head of one "
        f"label instead of the LM head): {fmt_gib(ps.value_params_bytes)} each; the value model is trained in full "
        "with the policy's optimizer (its gradients and states counted), the reward model is frozen.",
        f"the rollout's fp32 scores (generate(output_scores=True), stacked and padded: {fmt_gib(ps.logitss_bytes)}) "
        "stay alive through the whole update; the previous update's are alive while the next generates.",
        f"phases: generation {fmt_gib(pm.phases['generation'].total_bytes)}, scoring "
        f"{fmt_gib(pm.phases['scoring'].total_bytes)}, training {fmt_gib(training)}, entropy "
        f"{fmt_gib(pm.phases['entropy'].total_bytes)}; one decoder layer's working set in the no-grad forwards "
        "(generation's prefill, scoring) is not counted.",
        "the step-time figures count one training pass of the policy: generation, scoring, the value model and "
        "the PPO epochs are not in the time model yet.",
    ]
