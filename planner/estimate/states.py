"""Unsharded model states: weights, gradients and optimizer states per precision and optimizer.

Bytes for the whole model on one rank before ZeRO divides anything; sharding.py divides and moves them.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.estimate import optim_rules
from planner.estimate.count.flat_order import FlatOrder
from planner.estimate.count.params import ParamCounts, ParamSplit
from planner.estimate.peft_dtypes import adapter_dtype, adapters_stepped_in_16bit, unquantized_dtype
from planner.estimate.quant import quantized_weight_bytes
from planner.specs import Method, Optimizer, Precision, TrainSpec
from planner.units import nbytes

# bitsandbytes 8-bit optimizers quantize each state in blocks of 256 values with one fp32 absmax per block
# (bitsandbytes/optim/optimizer.py: blocksize 256 for blockwise 8-bit state; Dettmers et al. 2022,
# "8-bit Optimizers via Block-wise Quantization", arXiv 2110.02861).
BNB_8BIT_STATE_BLOCKSIZE = 256


@dataclass(frozen=True)
class UnshardedStates:
    """Bytes of the whole model's states on one rank, before ZeRO."""

    params_bytes: int  # the weights the forward pass reads (16-bit, fp32, or 4-bit + constants)
    grads_bytes: int  # gradients of trainable parameters, in the gradient dtype
    optimizer_states_bytes: int  # master weights + optimizer moments (trainable parameters only)
    master_bytes: int  # part of optimizer_states_bytes: the fp32 master copy (0 without one)
    num_trainable: int
    num_params: int
    num_16bit_trainable: int = 0  # trainable parameters held in a 16-bit dtype
    num_stepped_16bit: int = 0  # of those, the ones the optimizer steps as they are (16-bit states, no master)


def _optimizer_state_bits_per_param(optimizer: Optimizer, moment_bits: int) -> float:
    """Optimizer moment storage per trainable parameter, in bits (master weights excluded), for moments of
    ``moment_bits`` (32, or 16 where the optimizer steps a 16-bit tensor with no master copy)."""
    if optimizer in (Optimizer.ADAMW, Optimizer.ADAMW_FUSED):
        # Adam: first and second moment (Kingma & Ba 2015; ZeRO paper K = 12 includes 4 master + 8 moments).
        return 2 * moment_bits
    if optimizer is Optimizer.PAGED_ADAMW:
        # bitsandbytes' 32-bit AdamW keeps fp32 state1/state2 whatever the parameter dtype
        # (bitsandbytes/optim/optimizer.py Optimizer2State.init_state: optim_bits 32 -> torch.float32).
        return 2 * 32
    if optimizer in (Optimizer.ADAMW_8BIT, Optimizer.PAGED_ADAMW_8BIT):
        # Two uint8 states + one fp32 absmax per 256-value block each (Dettmers et al. 2022).
        return 2 * (8 + 32 / BNB_8BIT_STATE_BLOCKSIZE)
    if optimizer is Optimizer.SGD:
        # SGD with momentum: one buffer.
        return moment_bits
    if optimizer is Optimizer.ADAFACTOR:
        # Adafactor (Shazeer & Stern 2018) factors the second moment into row + column vectors: about
        # (rows + cols) / (rows * cols) per matrix, negligible; no first moment by default. Count 0 here and
        # the factored vectors via _adafactor_bytes.
        return 0
    raise AssertionError(optimizer)


# torch's Adam/AdamW keep a 0-d step counter per stepped tensor (torch/optim/adam.py ``Adam._init_group``). With
# fused=True (or capturable) it is ``torch.zeros((), dtype=_get_scalar_dtype(is_fused=True), device=p.device)``:
# float32 on the parameter's device; foreach keeps it on the host ("Deliberately host `step` on CPU if both
# capturable and fused are off"), so on a GPU only the fused counters count (on a CPU run foreach's host
# counters are measured too and not estimated: 4 bytes per tensor). 4 bytes each; the CUDA caching allocator
# hands out a 512-byte block for each, a rounding planner's allocated figures leave out for every tensor. Which
# tensors are stepped, per rank: sharding.py ``fused_step_counter_bytes``.
FUSED_STEP_COUNTER_BYTES = 4


def _adafactor_bytes(counts: ParamCounts, split: ParamSplit, train: TrainSpec) -> int:
    """Adafactor (Shazeer & Stern 2018, arXiv 1804.04235): a factored second moment, rows + cols fp32 values
    per trainable matrix; 1-D parameters keep a full fp32 second moment; no first moment (beta1=None)."""
    if train.method is Method.FULL:
        hidden = _hidden_of(counts)
        num_matrix = sum(g.num_weight_params for g in counts.linears) + counts.embedding + counts.lm_head
        vectors = sum((g.in_features + g.out_features) * g.num_modules for g in counts.linears)
        # Embedding (and an untied head): vocab x hidden, factored likewise.
        num_vocab_matrices = 1 if counts.lm_head == 0 else 2
        vectors += num_vocab_matrices * (counts.embedding // hidden + hidden)
        one_d = max(split.num_trainable - num_matrix, 0)
        return nbytes(vectors + one_d, "fp32")
    # LoRA: A (d_in x r) and B (r x d_out) are matrices too; rows + cols per matrix is about
    # num_adapter / r values.
    return nbytes(split.num_adapter // train.lora.rank, "fp32")


def _hidden_of(counts: ParamCounts) -> int:
    """The hidden size, read off the linears (the input width of the first projection)."""
    return counts.linears[0].in_features if counts.linears else 1


def trainable_extra_dtype(train: TrainSpec) -> str:
    """The dtype of LoRA adapters (peft_dtypes.py: fp32 by default, 16-bit with --lora-dtype 16bit or where
    DeepSpeed with 16-bit training casts the whole module)."""
    return adapter_dtype(train)


def unsharded_states(counts: ParamCounts, split: ParamSplit, train: TrainSpec, *,
                     num_layers: int | None = None) -> UnshardedStates:
    """``num_layers`` (the model's): lets the optimizers that keep per-tensor states (8-bit and paged AdamW,
    Adafactor) follow each trainable tensor (optim_rules.py, what planner estimates with); without it (state
    arithmetic on synthetic counts), the aggregate rule below (every tensor 8-bit; the linears' and embeddings'
    factored vectors)."""
    precision = train.precision
    compute = precision.compute_dtype
    # Weights read by forward: 16-bit for mixed precision (ZeRO paper: 2 bytes fp16/bf16 params), the
    # compute dtype for pure bf16/fp32, NF4/FP4 + quantization constants for QLoRA's frozen base linears.
    if train.method is Method.QLORA:
        # The QLoRA recipe calls peft's prepare_model_for_kbit_training (peft/utils/other.py), which casts
        # every parameter that is not 4-bit (embeddings, norms, lm_head, biases) to fp32; --qlora-prep 16bit
        # skips it (torchtune, Unsloth). DeepSpeed (ZeRO >= 1) casts the module back to the 16-bit dtype
        # (engine module.bfloat16()), measured by `planner profile` on 2 ranks (peft_dtypes.py).
        non_4bit_dtype = unquantized_dtype(train)
        params = quantized_weight_bytes(counts, train.quant) + nbytes(split.num_16bit, non_4bit_dtype)
    else:
        params = nbytes(split.num_16bit, compute)
    # LoRA adapters: peft casts adapter weights to fp32 when the base is 16-bit (LoraModel
    # autocast_adapter_dtype=True, peft/tuners/tuners_utils.py), so A and B are fp32 with fp32 gradients and
    # need no master copy; --lora-dtype 16bit keeps them 16-bit (peft_dtypes.py). Under DeepSpeed (ZeRO >= 1) with bf16/fp16 enabled the engine casts the whole
    # module, adapters included, to the 16-bit dtype and its optimizer keeps fp32 masters (measured by
    # `planner profile`, ZeRO-2 + LoRA). modules_to_save are deep copies of base modules, in the base dtype.
    adapter_dtype = trainable_extra_dtype(train)
    num_saved = split.num_trainable - split.num_adapter if train.method is not Method.FULL else 0
    params += nbytes(split.num_adapter, adapter_dtype) + nbytes(num_saved, compute)

    trainable = split.num_trainable
    num_16bit_trainable = trainable - (0 if adapter_dtype == compute else split.num_adapter)
    # Gradients exist only for trainable parameters, in the weight dtype (ZeRO paper: 2 bytes fp16 grads).
    grads = nbytes(num_16bit_trainable, compute) + nbytes(trainable - num_16bit_trainable, adapter_dtype)
    # The optimizer steps 16-bit tensors as they are (torch.zeros_like(p) states in their dtype, no master):
    # every 16-bit trainable one in pure bf16 (DESIGN.md section 3, "Other optimizers"), and 16-bit adapters
    # without DeepSpeed (the HF Trainer keeps no master copy; peft_dtypes.py).
    if precision is Precision.BF16:
        stepped_16bit = trainable if train.uses_deepspeed else num_16bit_trainable
    else:
        stepped_16bit = split.num_adapter if adapters_stepped_in_16bit(train) else 0
    # Mixed precision keeps an fp32 master copy of the other 16-bit trainable weights in the optimizer (ZeRO
    # paper: 4 bytes of the K = 12); fp32 adapters need none.
    if train.zero_stage in (1, 2):
        # DeepSpeed ZeRO-1/2 clone an fp32 partition of every trainable parameter, even when the weights are
        # already fp32 (stage_1_and_2.py: single_partition_of_fp32_groups).
        master = nbytes(trainable, "fp32")
    elif train.zero_stage == 3 and precision is Precision.FP32:
        # ZeRO-3 with fp32 weights clones them too: stage3.py _create_fp32_partitions reuses the flat partition
        # only when ``fp16_partitioned_groups_flat[i].device == self.device``, a torch.device compared with the
        # accelerator's device name, a str (current_device_name()), which is never equal, so it takes the
        # ``converted.clone()`` branch. Measured (`planner profile --zero 3`, fp32, 2 ranks): three fp32 shards
        # of optimizer states (the partition's clone, exp_avg, exp_avg_sq), for the SFT LoRA Mixtral cell and
        # TRL's DPOTrainer alike.
        master = nbytes(trainable, "fp32")
    else:
        master = nbytes(num_16bit_trainable - stepped_16bit, "fp32") if precision.has_master_weights else 0
    moments = int(stepped_16bit * _optimizer_state_bits_per_param(train.optimizer, 16) / 8
                  + (trainable - stepped_16bit) * _optimizer_state_bits_per_param(train.optimizer, 32) / 8)
    if train.optimizer is Optimizer.ADAFACTOR:
        moments = _adafactor_bytes(counts, split, train)
    if num_layers is not None and counts.modules and optim_rules.applies(train):
        moments = optim_rules.optimizer_memory(FlatOrder.of(counts, train, num_layers), train, "cuda").state_bytes
    return UnshardedStates(
        params_bytes=params,
        grads_bytes=grads,
        optimizer_states_bytes=master + moments,
        master_bytes=master,
        num_trainable=trainable,
        num_params=split.num_params,
        num_16bit_trainable=num_16bit_trainable if compute != "fp32" else 0,
        num_stepped_16bit=stepped_16bit,
    )
