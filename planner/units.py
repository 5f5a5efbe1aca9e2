"""The only place that knows dtype sizes and formats byte counts.

Sizes are in bits so that 4-bit formats are exact; byte counts are always ``int``.
GiB = 2**30 bytes and is labelled GiB; decimal GB (10**9) is labelled GB.
"""

from __future__ import annotations

import math

GIB = 2**30
MIB = 2**20
GB = 10**9

# Storage size of one element, in bits.
DTYPE_BITS: dict[str, int] = {
    "fp32": 32,
    "float32": 32,
    "tf32": 32,
    "bf16": 16,
    "bfloat16": 16,
    "fp16": 16,
    "float16": 16,
    "int64": 64,
    "int32": 32,
    "int8": 8,
    "uint8": 8,
    "fp8": 8,
    "bool": 8,
    "nf4": 4,
    "fp4": 4,
}


def dtype_bits(dtype: str) -> int:
    try:
        return DTYPE_BITS[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}") from None


def dtype_bytes(dtype: str) -> int:
    """Bytes per element for byte-aligned dtypes (raises for 4-bit types)."""
    bits = dtype_bits(dtype)
    if bits % 8:
        raise ValueError(f"dtype {dtype!r} is not byte-aligned; use nbytes()")
    return bits // 8


def nbytes(num_elements: int, dtype: str) -> int:
    """Bytes needed to store ``num_elements`` of ``dtype`` (4-bit types pack two per byte, rounded up)."""
    return math.ceil(num_elements * dtype_bits(dtype) / 8)


def fmt_gib(num_bytes: int | float, digits: int = 2, *, unit: bool = True) -> str:
    """Bytes in GiB (2^30), with thousands separators; labelled ``GiB`` unless ``unit`` is False (a column
    whose header says GiB). The one place planner formats GiB for people."""
    text = f"{num_bytes / GIB:,.{digits}f}"
    return f"{text} GiB" if unit else text


def gib_value(num_bytes: int | float, digits: int = 2) -> float:
    """Bytes as a rounded number of GiB, for tables and figures that carry the unit in their header."""
    return round(num_bytes / GIB, digits)


def fmt_gb(num_bytes: int | float, digits: int = 1) -> str:
    return f"{num_bytes / GB:.{digits}f} GB"


def fmt_count(n: int) -> str:
    """Human count: 8.03B, 124.4M, 3.2K."""
    for div, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}"
    return str(n)
