"""The simulated step's inputs: ``StepInputs``, exactly what one simulation reads (its cache key), built only by
``step_inputs``, and the audit of every ``TrainSpec``, ``Parallelism`` and ``LoraSpec`` field as read or ignored
with the reason (tests/test_step_inputs.py fails on a field in neither).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from planner.estimate import peft_dtypes
from planner.estimate.step import in_backward, selective_layers
from planner.estimate.step.cpu_kernels import CpuKernels
from planner.specs import Loss, LossSpec, Method, ModelSpec, Precision, Task, TrainSpec

# What the simulated step reads from a TrainSpec, field by field: every field is either read (through
# StepInputs, built only by step_inputs) or ignored with the reason. tests/test_step_inputs.py fails when a
# TrainSpec or LoraSpec field is in neither, so a new field cannot be silently left out of the cache key.
TRAIN_FIELDS_READ = ("method", "precision", "micro_batch", "seq_len", "grad_checkpointing", "attn_impl", "dropout",
                     "lora", "parallelism", "activation_offload", "loss", "lora_dtype",
                     "qlora_prep",  # these two as dtypes (peft_dtypes.py)
                     "optimizer_in_backward",  # as the step's scratch per element (in_backward.scratch_per_element)
                     "task",  # as the reference the DPO step runs (posttrain_step.py), GRPO's (grpo_step.py), PPO's (ppo_step.py)
                     "packing",  # as one row of micro_batch * seq_len tokens with its mask (packed.py)
                     "selective_ac")  # the layer policy's checkpointed layers (selective_layers.py; op: none)
TRAIN_FIELDS_IGNORED = {
    "optimizer": "the step ends before optimizer.step(): optimizer states and their scratch are states.py's and "
                 "temporaries.py's (with --optimizer-in-backward its per-tensor scratch arrives through "
                 "optimizer_in_backward's step_in_backward)",
    "quant": "the 4-bit storage format changes the weights' bytes (quant.py), not the step: each 4-bit matmul "
             "dequantizes to the compute dtype whatever the quant type, double quantization or block size",
    "grad_accum": "one micro-batch is simulated; accumulation repeats it (peak.py keeps gradients across them)",
    "compile": "the estimate keeps eager PyTorch's step: what inductor saves has no stable rule (compile_note.py)",
}
# the engine and the stage through _zero_key
PARALLELISM_FIELDS_READ = ("engine", "zero_stage")
PARALLELISM_FIELDS_IGNORED = {
    "offload": "the one thing offload changes in the step (ZeRO-2 holding a gradient larger than the reduce "
               "bucket, which an offloaded optimizer does not) arrives as hold_grads_over (core.py)",
    "fsdp_config": "FSDP2's gathers, resharding and reduce buffers are added per phase (estimate/fsdp2_step.py); "
                   "the step only splits the loss from the rest (split_loss)",
    "zero_config": "of DeepSpeed's buckets and thresholds the step reads only the reduce bucket, which arrives as "
                   "hold_grads_over (core.py); the others size buffers outside the step (temporaries.py, "
                   "sharding.py)",
}
LORA_FIELDS_READ = ("rank", "targets", "dropout", "modules_to_save")  # rank and targets through the adapters
LORA_FIELDS_IGNORED = {
    "alpha": "the adapter scale multiplies by a Python float: the same tensors whatever its value",
}



@dataclass(frozen=True)
class StepInputs:
    """Exactly what one simulated step reads: the simulation's cache key, built only by ``step_inputs``.

    ``_simulate`` receives nothing else, so a value that is not here cannot change a simulation, and one that
    is here cannot be left out of the key. ``config_json``: ModelSpec equality ignores the raw config, where
    the family details live. ``zero``: what the ZeRO stage changes in the step (``_zero_key``).
    """

    model: ModelSpec
    config_json: str
    method: Method
    precision: Precision
    micro_batch: int
    seq_len: int
    grad_checkpointing: bool
    attn_impl: str
    dropout: float | None
    adapters: tuple[tuple[str, int], ...]
    lora_dropout: float
    modules_to_save: tuple[str, ...]
    zero: int
    device: str
    keep_grads: bool
    keep_logits: bool
    hold_grads_over: int
    cpu: CpuKernels | None
    loss: LossSpec
    adapter_dtype: str = "fp32"  # LoRA adapters (peft_dtypes.adapter_dtype)
    unquantized_dtype: str = "fp32"  # QLoRA's unquantized parameters and activations (peft_dtypes)
    activation_offload: bool = False
    # optimizer in backward: the step's scratch per parameter element (tape._step_in_hook); None: off
    step_in_backward: int | None = None
    # FSDP2: the loss's backward is the phase "backward", the output head's and everything after "backward_late"
    split_loss: bool = False
    # --task dpo: the reference the step runs (posttrain_step.py); "" for sft
    reference: str = ""
    # --packing: the micro-batch's rows flattened into one (micro_batch 1) with the mask built from the reset
    # position ids (packed.py)
    packed: bool = False
    # --task grpo: the completion's tokens of each row (grpo_step.py; 0 otherwise) and whether beta != 0
    grpo_completion: int = 0
    grpo_kl: bool = False
    # --task ppo: the response's tokens of each row (ppo_step.py; 0 otherwise): the policy's PPO head and loss
    ppo_response: int = 0
    # --selective-ac N: the decoder layers checkpointed, every layer simulated (selective_layers.py)
    ckpt_layers: tuple[int, ...] = ()
    # --selective-ac op, where the step models the policy's cache (selective_layers.op_modelled; sac.py)
    sac_op: bool = False
    # ZeRO-3 with contiguous_gradients false: (reduce bucket elements, flat copies made when it is reduced)
    # (tape._hold_in_bucket); () otherwise
    zero3_bucket: tuple[int, int] = ()


def step_inputs(model: ModelSpec, train: TrainSpec, *, device: str = "cuda", keep_grads: bool = True,
                keep_logits: bool = False, adapters: tuple[tuple[str, int], ...] | None = None,
                hold_grads_over: int = 0, cpu: CpuKernels | None = None,
                micro_batch: int | None = None) -> StepInputs:
    """The inputs of ``simulate_step`` (same arguments) as the one frozen value its simulations are cached by.
    ``micro_batch``: in place of the train spec's (0: the envelope's key, for every micro-batch)."""
    if adapters is None:
        adapters = lora_adapter_paths(model, train)
    reference = train.task.reference_for(train.method is not Method.FULL)
    rows = train.micro_batch if micro_batch is None else micro_batch
    dpo = train.task.kind is Task.DPO
    ppo = train.task.ppo
    if ppo is not None:  # the policy's own step: its reference scores in the rollout, outside it (estimate/ppo.py)
        reference = None
    grpo = train.task.grpo
    if dpo:
        rows *= 2  # DataCollatorForPreference: chosen and rejected rows in one batch (posttrain_step.py)
    seq_len = train.seq_len
    if train.packing:  # the collator's one row of every token (packed.py)
        rows, seq_len = 1, rows * seq_len
    return StepInputs(
        model=model, config_json=model.config_json(), method=train.method, precision=train.precision,
        micro_batch=rows, seq_len=seq_len, grad_checkpointing=train.grad_checkpointing,
        # DPOConfig.disable_dropout (default True): disable_dropout_in_model sets every nn.Dropout's p to 0, the
        # model's and peft's lora_dropout alike (dpo_trainer.py __init__), and F.dropout with p 0 returns its input.
        # GRPOConfig.disable_dropout defaults to False: GRPO keeps the model's dropout
        # PPOTrainer.__init__ (TRL 1.12) calls disable_dropout_in_model on all four models
        attn_impl=train.attn_impl.value, dropout=0.0 if dpo or ppo else train.dropout, adapters=adapters,
        lora_dropout=0.0 if dpo or ppo else train.lora.dropout,
        modules_to_save=train.lora.modules_to_save, zero=_zero_key(train), device=device, keep_grads=keep_grads,
        keep_logits=keep_logits, hold_grads_over=hold_grads_over, cpu=cpu_kind(device, cpu),
        adapter_dtype=peft_dtypes.adapter_dtype(train), unquantized_dtype=peft_dtypes.unquantized_dtype(train),
        activation_offload=train.activation_offload, split_loss=train.uses_fsdp2,
        step_in_backward=in_backward.scratch_per_element(train) if keep_grads else None,
        loss=train.loss if train.loss.kind is Loss.CHUNKED_CE else LossSpec(train.loss.kind),  # chunks: chunked only
        reference=reference.value if reference is not None else "",
        packed=train.packing,
        grpo_completion=grpo.completion_len if grpo is not None else 0,
        grpo_kl=grpo is not None and grpo.uses_reference,
        ppo_response=ppo.response_len if ppo is not None else 0,
        ckpt_layers=selective_layers.step_checkpointed_layers(train.selective_ac, model.num_layers),
        sac_op=selective_layers.op_modelled(train),
        zero3_bucket=_zero3_bucket(model, train, device),
    )


def cpu_kind(device: str, cpu: CpuKernels | None) -> CpuKernels | None:
    """Only oneDNN's workspaces depend on the CPU kind: other kinds and devices share one simulation."""
    return cpu if device == "cpu" and cpu is not None and cpu.onednn_bf16 else None



def lora_adapter_paths(model: ModelSpec, train: TrainSpec) -> tuple[tuple[str, int], ...]:
    if train.method is Method.FULL:
        return ()
    return _adapter_paths(model, model.config_json(), train.lora)


@lru_cache(maxsize=256)
def _adapter_paths(model: ModelSpec, config_json: str, lora) -> tuple[tuple[str, int], ...]:
    """Cached per model and LoRA spec: every estimate of a LoRA row asks (a fit search dozens of times) and each
    answer counted the parameters again. ``config_json`` is in the key because ModelSpec equality ignores the
    raw config, where the family details live."""
    from planner.estimate.count.params import count_params, lora_adapters

    return tuple(sorted((a.path, a.rank) for a in lora_adapters(count_params(model), lora)))


def _zero_key(train: TrainSpec) -> int:
    """What the ZeRO stage changes in the simulated step. ZeRO-3 (any method): DeepSpeed's
    LinearFunctionForZeroStage3 in place of F.linear (zero/linear.py), which saves every input and computes the
    input's gradient before the weight's, as new tensors (layers.Ctx.zero3_linear, ops.linear). ZeRO 1/2: nothing
    for full fine-tuning; for LoRA/QLoRA, DeepSpeed's dtype casts. Equal keys share one simulation."""
    if not train.uses_deepspeed:
        return 0
    if train.zero_stage == 3:
        return 3
    return 0 if train.method is Method.FULL else 1


__all__ = ["LORA_FIELDS_IGNORED", "LORA_FIELDS_READ", "PARALLELISM_FIELDS_IGNORED", "PARALLELISM_FIELDS_READ",
           "TRAIN_FIELDS_IGNORED", "TRAIN_FIELDS_READ", "StepInputs", "cpu_kind", "lora_adapter_paths", "step_inputs"]


def _zero3_bucket(model: ModelSpec, train: TrainSpec, device: str) -> tuple[int, int]:
    """ZeRO-3 without contiguous gradients: the reduce bucket in elements and the flat copies of each reduction:
    reduce_scatter_coalesced's torch.cat and, on the CPU accelerator, gloo's input-sized buffer (zero3_epilogue.py)."""
    zero = train.parallelism.zero_config
    if train.zero_stage != 3 or zero.contiguous_gradients:
        return ()
    return (zero.reduce_bucket(model.hidden_size), 2 if device == "cpu" else 1)
