"""Exact amounts: rates in micro-dollars per million tokens, costs in pico-dollars (integers)."""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal, InvalidOperation

#: A rate of 1 micro-dollar per million tokens times 1 token is 1 pico-dollar, so costs are
#: integers with no rounding at all; rates finer than $0.000001 per million are refused.
MICROS = 10**6
PICOS = 10**12
#: Rates above this ($1,000,000 per million tokens) are a typo, not a price.
MAX_RATE_USD = Decimal(1_000_000)


class AmountError(ValueError):
    """A rate or amount that cannot be stored exactly."""


def rate_from_usd(text: str | int | Decimal, name: str = "rate") -> int:
    """``"0.15"`` (dollars per million tokens) → 150000 micro-dollars per million tokens."""
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise AmountError(f"{name} must be a number of dollars, got {text!r}") from None
    if not value.is_finite() or value < 0:
        raise AmountError(f"{name} must be zero or more dollars, got {text!r}")
    if value > MAX_RATE_USD:
        raise AmountError(f"{name} must be at most {MAX_RATE_USD} dollars, got {text!r}")
    micros = value * MICROS
    if micros != micros.to_integral_value(ROUND_FLOOR):
        raise AmountError(f"{name} has more than 6 decimal places: {text!r}")
    return int(micros)


def rate_to_usd(micros: int | None) -> str | None:
    """150000 → ``"0.15"``: the dollars per million tokens, exact, as text."""
    return None if micros is None else _plain(Decimal(micros) / MICROS)


def picos_to_usd(picos: int | None) -> str | None:
    """A cost in pico-dollars as exact dollars text (``None`` stays unpriced)."""
    return None if picos is None else _plain(Decimal(picos) / PICOS)


def usd_to_picos(text: str) -> int:
    """Exact dollars text back to pico-dollars (an amount with finer digits is refused)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise AmountError(f"not an amount of dollars: {text!r}") from None
    picos = value * PICOS
    if not picos.is_finite() or picos != picos.to_integral_value(ROUND_FLOOR):
        raise AmountError(f"not an exact amount of dollars: {text!r}")
    return int(picos)


def _plain(value: Decimal) -> str:
    """Fixed-point text without exponent or trailing zeros (``"0"``, ``"1.5"``)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"
