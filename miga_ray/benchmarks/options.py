"""Command-line value types shared by the benchmarks and the study jobs (argparse; no heavy imports)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the option and exits 2 otherwise)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def int_list(text: str) -> list[int]:
    """An argparse type: comma-separated integers >= 1."""
    return [positive_int(v) for v in text.split(",")]
