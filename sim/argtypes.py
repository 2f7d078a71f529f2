"""argparse value types shared by the `simulate` and `dpq` command lines: each names what it expected."""

from __future__ import annotations

import argparse
from typing import Callable, Iterable


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


def _int_at_least(text: str, lowest: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number")
    return value


def positive_int_list(text: str) -> list[int]:
    """``"1,16,64"`` -> ``[1, 16, 64]``."""
    return [positive_int(part) for part in text.split(",") if part.strip()]


def name_list(text: str) -> list[str]:
    """``"h100,gaudi3"`` -> ``["h100", "gaudi3"]`` (at least one name)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected one or more comma-separated names")
    return names


def choice_list(choices: Iterable[str]) -> Callable[[str], list[str]]:
    """A type accepting a comma-separated, non-empty subset of ``choices``."""
    allowed = list(choices)

    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items or any(t not in allowed for t in items):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated subset of {allowed}")
        return items

    return parse
