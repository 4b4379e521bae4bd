"""Argument types shared by subcommands, with one-line error messages."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    value = whole_number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def whole_number(text: str) -> int:
    """A whole number ≥ 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1")
    return value


def photon_range(text: str) -> tuple[float, float]:
    """'0' (noiseless), '1e6' (fixed) or '1e5:1e8' (log-uniform range)."""
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use a count like 1e6 or a range like 1e5:1e8") from None
    if len(parts) not in (1, 2) or any(p < 0 for p in parts) or (len(parts) == 2 and not 0 < parts[0] <= parts[1]):
        raise argparse.ArgumentTypeError(f"{text!r}: use 0, a positive count, or LOW:HIGH with 0 < LOW <= HIGH")
    return (parts[0], parts[-1])


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value
