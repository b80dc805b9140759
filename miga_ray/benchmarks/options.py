"""Command-line value types shared by the benchmarks and the study jobs (argparse; no heavy imports)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the option and exits 2 otherwise)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def at_least(kind: type[int | float], low: float, *, strict: bool = False) -> Callable[[str], int | float]:
    """An argparse type: a ``kind`` number >= ``low`` (> with ``strict``); argparse names the option and
    exits 2 otherwise."""

    def parse(text: str) -> int | float:
        value = kind(text)
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid int value" message for text that is no number
    return parse


def int_list(text: str) -> list[int]:
    """An argparse type: comma-separated integers >= 1."""
    return [positive_int(v) for v in text.split(",")]
