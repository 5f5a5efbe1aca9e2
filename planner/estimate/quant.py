"""Bytes of bitsandbytes 4-bit weights (NF4 / FP4) with their quantization state, exactly as stored.

What bitsandbytes 0.50 keeps per quantized weight tensor of n elements (``bitsandbytes/functional.py``
``quantize_4bit``, ``quantize_blockwise``; Dettmers et al. 2023, QLoRA, arXiv 2305.14314):

- the packed weight: two 4-bit codes per uint8 byte, ``(n + 1) // 2`` bytes (``Params4bit`` data);
- ``code``: the 16-entry fp32 NF4 or FP4 lookup table, a fresh tensor per weight (``get_4bit_type``);
- without double quantization: ``absmax``, one fp32 per block of ``blocksize`` (64) weights;
- with double quantization (``compress_statistics``): ``absmax`` as uint8 (one per 64-block), ``offset``
  (the fp32 mean of the absmax values, a 0-d tensor) and a nested state: ``absmax2``, one fp32 per 256
  absmax values, and its own copy of the 256-entry fp32 dynamic map (``code.to(device, copy=True)``).

Per tensor these are tensor-storage bytes; on a GPU the caching allocator rounds each tensor up to
512 bytes, which adds under 2 KiB per quantized linear (see overhead.py for allocator terms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.estimate.count.params import ParamCounts
from planner.specs import QuantSpec
from planner.units import nbytes

# bitsandbytes.functional.get_4bit_type: 16 code values (NF4 quantiles of N(0, 1), or the FP4 e2m1 values).
NUM_4BIT_CODE_VALUES = 16
# bitsandbytes.functional.quantize_4bit with compress_statistics: quantize_blockwise(absmax, blocksize=256).
NESTED_BLOCKSIZE = 256
# bitsandbytes.functional.create_dynamic_map(): the signed 8-bit dynamic data type, 256 fp32 values.
NUM_NESTED_CODE_VALUES = 256


@dataclass(frozen=True)
class QuantTensorBytes:
    """Storage of one bitsandbytes 4-bit weight tensor and its QuantState, in bytes."""

    weight_bytes: int
    absmax_bytes: int
    code_bytes: int
    offset_bytes: int = 0
    nested_absmax_bytes: int = 0
    nested_code_bytes: int = 0

    @property
    def state_bytes(self) -> int:
        return (self.absmax_bytes + self.code_bytes + self.offset_bytes + self.nested_absmax_bytes
                + self.nested_code_bytes)

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.state_bytes


def quantized_tensor_bytes(num_elements: int, quant: QuantSpec) -> QuantTensorBytes:
    """Bytes bitsandbytes stores for one 4-bit weight of ``num_elements`` values."""
    num_blocks = math.ceil(num_elements / quant.blocksize)
    weight = nbytes(num_elements, quant.quant_type.value)
    code = nbytes(NUM_4BIT_CODE_VALUES, "fp32")
    if not quant.double_quant:
        return QuantTensorBytes(weight, nbytes(num_blocks, "fp32"), code)
    # QLoRA's double quantization: 8-bit block constants, then fp32 constants per 256 of them.
    return QuantTensorBytes(
        weight_bytes=weight,
        absmax_bytes=nbytes(num_blocks, "uint8"),
        code_bytes=code,
        offset_bytes=nbytes(1, "fp32"),
        nested_absmax_bytes=nbytes(math.ceil(num_blocks / NESTED_BLOCKSIZE), "fp32"),
        nested_code_bytes=nbytes(NUM_NESTED_CODE_VALUES, "fp32"),
    )


def quantized_weight_bytes(counts: ParamCounts, quant: QuantSpec) -> int:
    """Bytes of every 4-bit base linear weight with its quantization state, computed per tensor.

    The linears quantized are those transformers' ``replace_with_bnb_linear`` converts (``quantizable``
    LinearGroups: nn.Linear and Conv1D, never the output head); biases stay 16-bit and are not included.
    """
    return sum(
        quantized_tensor_bytes(g.in_features * g.out_features, quant).total_bytes * g.num_modules
        for g in counts.linears
        if g.quantizable
    )
