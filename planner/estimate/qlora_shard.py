"""QLoRA's 4-bit base sharded across ranks: the packed weights stored in the compute dtype
(``bnb_4bit_quant_storage``), partitioned by DeepSpeed ZeRO-3 like any 16-bit parameter.

What the libraries do (the recipe of peft's "Use PEFT QLoRA and DeepSpeed with ZeRO3" and "FSDP-QLoRA" guides,
``bnb_4bit_quant_storage=torch.bfloat16``):

- bitsandbytes 0.50 ``backends/default/ops.py`` ``_quantize_4bit_impl``: the packed codes are
  ``[(n + 1) // 2, 1]`` uint8, then ``packed.squeeze().view(quant_storage).unsqueeze(1)``: ``(n + 1) // 2 //
  itemsize`` elements of the storage dtype (n/4 bf16 elements for n weights). ``Params4bit`` is that tensor; its
  ``quant_state`` (absmax, code, offset, the nested state: quant.py) is a plain attribute, not a parameter.
- DeepSpeed 0.19 ``partition_parameters.py`` ``Init._convert_to_zero_parameters`` / ``_zero_init_param`` converts
  every ``nn.Parameter`` (a ``Params4bit`` is one) by its ``numel()`` in the storage dtype: ``ds_persist =
  ds_numel <= stage3_param_persistence_threshold``, else the rank keeps ``ceil(ds_numel / ranks)`` elements
  (``_partition_param``) and gathers the whole tensor around its module (``fetch_sub_module``) like any other
  16-bit parameter. The ``quant_state`` tensors are untouched: whole on every rank.

Measured with `planner profile --zero 3` on 2 ranks (Llama h96, NF4 with double quantization, LoRA r8 on every
linear): the rank's parameters are the sum below plus the other parameters' usual ZeRO-3 share, to the byte.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from planner.estimate.count.params import ParamCounts
from planner.estimate.count.zero_partition import zero3_persistence_threshold
from planner.estimate.quant import quantized_tensor_bytes, quantized_weight_bytes
from planner.estimate.states import UnshardedStates
from planner.specs import Method, QuantSpec, TrainSpec
from planner.units import dtype_bytes


def sharded_note(train: TrainSpec) -> str:
    """What the estimate assumes of a sharded 4-bit base, for the user."""
    return (f"QLoRA sharded: the 4-bit weights are stored in {quant_storage_dtype(train)} (bnb_4bit_quant_storage, "
            "as peft's ZeRO-3 and FSDP-QLoRA recipes set it) and partitioned like 16-bit parameters; each weight's "
            "quantization state stays whole on every GPU.")


def quant_storage_dtype(train: TrainSpec) -> str:
    """The dtype the packed 4-bit weights are stored in: the compute dtype where the base is sharded (ZeRO-3, FSDP2:
    the recipes set ``bnb_4bit_quant_storage`` to it so the partitioned flat buffers hold one dtype), else
    bitsandbytes' default uint8."""
    return train.precision.compute_dtype if (train.zero_stage == 3 or train.uses_fsdp2) else "uint8"


def quant_storage_elements(num_elements: int, storage_dtype: str) -> int:
    """Elements of the storage dtype holding ``num_elements`` 4-bit codes (bitsandbytes ``_quantize_4bit_impl``:
    ``(n + 1) // 2`` bytes viewed as ``storage_dtype``)."""
    return ((num_elements + 1) // 2) // dtype_bytes(storage_dtype)


def quantized_shapes(counts: ParamCounts) -> list[tuple[int, int]]:
    """(elements of one weight, modules) of every linear bitsandbytes makes 4-bit (states.py's rule: transformers'
    ``replace_with_bnb_linear`` converts every quantizable linear but the output head)."""
    return [(g.in_features * g.out_features, g.num_modules) for g in counts.linears if g.quantizable]


@dataclass(frozen=True)
class Zero3Quantized:
    """One rank's share of the 4-bit base under ZeRO-3."""

    rank_bytes: int  # partitions + persistent whole tensors + every quant_state, on this rank
    num_gathered: int  # storage elements of the partitioned 4-bit weights (gathered around their module)
    num_persistent: int  # storage elements of the 4-bit weights kept whole (ds_persist)
    # the largest module gathered whole, in its dtypes (sharding.py's ``4 * largest_module`` term counts 16-bit
    # parameters and their gradients; the QLoRA base is frozen, so parameters only, 4-bit ones in storage elements)
    largest_module_bytes: int = 0


def zero3_quantized(counts: ParamCounts, quant: QuantSpec, storage_dtype: str, num_ranks: int,
                    threshold: int) -> Zero3Quantized:
    """Per weight: ``ceil(ds_numel / ranks)`` storage elements of partition, plus the whole tensor when
    ``ds_numel <= threshold`` (persistent parameters keep both, as zero_partition.py counts the others), plus the
    quant_state whole."""
    size = dtype_bytes(storage_dtype)
    rank_bytes = gathered = persistent = 0
    for numel, modules in quantized_shapes(counts):
        ds_numel = quant_storage_elements(numel, storage_dtype)
        share = -(-ds_numel // num_ranks)
        whole = ds_numel if ds_numel <= threshold else 0
        state = quantized_tensor_bytes(numel, quant).state_bytes
        rank_bytes += modules * ((share + whole) * size + state)
        gathered += 0 if whole else modules * ds_numel
        persistent += modules * whole
    return Zero3Quantized(rank_bytes, gathered, persistent, _largest_module_bytes(counts, storage_dtype))


def _largest_module_bytes(counts: ParamCounts, storage_dtype: str) -> int:
    """Bytes of the largest frozen base module gathered whole: a 4-bit linear as its storage elements (+ bias),
    any other module's parameters in the storage dtype (DeepSpeed casts the module to it; peft_dtypes.py)."""
    def numel(g) -> int:
        if g.kind == "linear" and g.quantizable and g.component != "lm_head":
            return quant_storage_elements(g.in_features * g.out_features, storage_dtype) + (g.out_features if g.bias else 0)
        return g.num_params

    return max((numel(g) for g in counts.modules if not g.shared), default=0) * dtype_bytes(storage_dtype)


def applies(train: TrainSpec) -> bool:
    return train.method is Method.QLORA and train.zero_stage == 3


def zero3(counts: ParamCounts, train: TrainSpec, num_ranks: int, hidden_size: int) -> Zero3Quantized:
    """The run's 4-bit base on one rank (``stage3_param_persistence_threshold`` as zero_partition.py reads it)."""
    return zero3_quantized(counts, train.quant, quant_storage_dtype(train), num_ranks,
                           zero3_persistence_threshold(train, hidden_size))


def without_quantized(states: UnshardedStates, counts: ParamCounts, train: TrainSpec) -> UnshardedStates:
    """The model states less the 4-bit weights (with their quant_state), which ``zero3`` places per tensor."""
    return replace(states, params_bytes=states.params_bytes - quantized_weight_bytes(counts, train.quant))
