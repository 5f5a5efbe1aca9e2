"""``--tokens`` as people write it (a count with thousands separators, an exponent or a k/M/B/T suffix)."""

from __future__ import annotations

from planner.errors import PlannerError

# --tokens suffixes: thousand, million, billion (short scale), trillion.
_TOKEN_SUFFIXES = {"k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


def parse_tokens(value: str) -> int:
    """A token count as people write it: 2000000000, 2_000_000_000, 2,000,000,000, 2e9, 2B, 500M, 1.5T, 20k.
    The result must be a whole, non-negative number; anything else raises PlannerError."""
    from decimal import Decimal, InvalidOperation

    from planner.config_fields import shown
    from planner.estimate.throughput import validate_tokens

    text = str(value).strip().replace("_", "").replace(",", "")
    scale = _TOKEN_SUFFIXES.get(text[-1:].lower(), 1) if text else 1
    number = text[:-1] if scale != 1 else text
    try:
        amount = Decimal(number)
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite():
        raise PlannerError(
            f"--tokens {shown(value)} is not a number of tokens; write e.g. 2000000000, 2e9, 2B, 500M or 1.5T."
        )
    if amount.adjusted() > 30:  # far beyond validate_tokens' bound: no need to build the integer
        amount = Decimal(10**31).copy_sign(amount)
    tiny = amount != 0 and amount.adjusted() < -30  # would round to 0 below
    amount *= scale
    if tiny or amount != amount.to_integral_value():
        raise PlannerError(f"--tokens {shown(value)} is not a whole number of tokens.")
    tokens = int(amount)
    validate_tokens(tokens)
    return tokens
