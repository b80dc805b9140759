"""Means of per-frame series over ranges of frames, accumulated as frames stream past.

A video's drift numbers (a series' mean, its curve over bins of frames, its last quarter minus its
first) need only a sum and a count of finite values per range, so evaluation holds a few numbers per
bin instead of the video or its per-frame series.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class RangeMeans:
    """Sums and counts of the finite values of each named series over the frame ranges
    ``[starts[i], starts[i + 1])``, the last one ending at ``stop``."""

    def __init__(self, starts: np.ndarray | list[int], stop: int) -> None:
        self.starts, self.stop = np.asarray(starts, np.int64), stop
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}

    def add(self, first: int, series: dict[str, np.ndarray]) -> None:
        """Add the values of frames ``first, first + 1, ...`` of every series."""
        for name, values in series.items():
            values = np.asarray(values, np.float64)
            frames = first + np.arange(len(values))
            keep = np.isfinite(values) & (frames >= self.starts[0]) & (frames < self.stop)
            bins = np.searchsorted(self.starts, frames[keep], side="right") - 1
            size = len(self.starts)
            self.sums[name] = self.sums.get(name, 0) + np.bincount(bins, values[keep], minlength=size)
            self.counts[name] = self.counts.get(name, 0) + np.bincount(bins, minlength=size)

    def means(self, name: str) -> list[float]:
        """The mean of each range (NaN where a range has no finite value)."""
        sums = self.sums.get(name, np.zeros(len(self.starts)))
        counts = self.counts.get(name, np.zeros(len(self.starts), np.int64))
        return [float(s / c) if c else math.nan for s, c in zip(sums, counts)]


def bin_starts(frames: int, bins: int) -> np.ndarray:
    """First frame of each of ``bins`` equal bins of ``frames`` frames."""
    return np.arange(bins) * frames // bins


def json_number(value: Any) -> Any:
    """Numbers and arrays as plain Python values, NaN replaced by None."""
    array = np.asarray(value)
    if array.dtype == bool:
        return array.tolist()
    return np.where(np.isnan(array), None, array.astype(float)).tolist()


class DriftAccumulator:
    """Everything a drift summary reports of per-frame series of a ``frames``-frame video: per series its
    mean, its curve over ``bins`` equal bins, its drift figure (mean over the last quarter minus the first)
    and its means per ``chunk`` frames."""

    def __init__(self, frames: int, bins: int, chunk: int) -> None:
        if not 1 <= bins <= frames:
            raise ValueError(f"bins must be between 1 and the number of frames ({frames}), got {bins}")
        if chunk < 1:
            raise ValueError(f"chunk must be positive, got {chunk}")
        self.frames, self.bins, self.chunk = frames, bins, chunk
        quarter = max(1, frames // 4)
        self.ranges = {
            "mean": RangeMeans([0], frames),
            "first": RangeMeans([0], quarter),
            "last": RangeMeans([frames - quarter], frames),
            "curves": RangeMeans(bin_starts(frames, bins), frames),
            "chunks": RangeMeans(np.arange(0, frames, chunk), frames),
        }
        self.names: list[str] = []

    def add(self, first: int, series: dict[str, np.ndarray]) -> None:
        """Add frames ``first, first + 1, ...`` of every series."""
        self.names += [name for name in series if name not in self.names]
        for ranges in self.ranges.values():
            ranges.add(first, series)

    def mean(self, name: str) -> float:
        """The series' mean over the whole video."""
        return self.ranges["mean"].means(name)[0]

    def chunk_means(self, name: str) -> list[float]:
        """The series' mean per ``chunk`` frames."""
        return self.ranges["chunks"].means(name)

    def summary(self, prompt: str) -> dict[str, Any]:
        """JSON-able drift summary (``miga compare`` reads it): per series its mean, curve and drift figure."""
        first, last = self.ranges["first"], self.ranges["last"]
        return {
            "prompt": prompt,
            "num_frames": self.frames,
            "bin_starts": bin_starts(self.frames, self.bins).tolist(),
            "mean": {name: json_number(self.mean(name)) for name in self.names},
            "drift": {name: json_number(last.means(name)[0] - first.means(name)[0]) for name in self.names},
            "curves": {name: json_number(self.ranges["curves"].means(name)) for name in self.names},
        }
