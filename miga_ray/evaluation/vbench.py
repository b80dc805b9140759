"""VBench's four consistency dimensions, in VBench's own formulas, on uint8 frames ``[F, H, W, 3]``.

- temporal flickering: ``(255 - mean_t MAE(f_t, f_t+1)) / 255`` (VBench applies it to static prompts;
  here it is reported for whatever video is given);
- subject / background consistency: mean over frames t >= 1 of
  ``(max(0, cos(f_t, f_t-1)) + max(0, cos(f_t, f_0))) / 2`` on DINO / CLIP features;
- motion smoothness: keep the even frames, interpolate the odd ones back, and score
  ``(255 - mean MAE(interpolated, real odd frames)) / 255``. VBench interpolates with AMT; without
  its weights the fallback interpolates linearly (the mean of the two neighbours), labelled as such;
- overall: the plain mean of the four, the MIGA paper's convention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from .features import FeatureExtractor

Interpolator = Callable[[np.ndarray, np.ndarray], np.ndarray]
Cosines = TypeVar("Cosines", np.ndarray, Tensor)


def abs_diff_sums(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact sums of ``|a - b|`` over all but the first axis of two uint8 arrays, int64 ``[len(a)]``
    (in uint8 as max - min: no float copies of 832x480 frames)."""
    diffs = np.maximum(a, b)
    diffs -= np.minimum(a, b)
    return diffs.reshape(len(diffs), -1).sum(axis=1, dtype=np.int64)


def pair_errors(frames: np.ndarray) -> np.ndarray:
    """Mean absolute difference of each pair of consecutive frames, float64 ``[F - 1]``."""
    return abs_diff_sums(frames[1:], frames[:-1]) / max(1, frames[0].size) if len(frames) > 1 else np.zeros(0)


def temporal_flickering(frames: np.ndarray) -> float:
    """VBench's temporal flickering of a whole video."""
    return float((255.0 - pair_errors(frames).mean()) / 255.0)


def frame_consistency(prev: Cosines, first: Cosines) -> Cosines:
    """VBench's subject/background score of frames t >= 1 from their feature cosines to frames t-1 and 0."""
    return (prev.clip(min=0) + first.clip(min=0)) / 2


def feature_consistency(features: Tensor) -> float:
    """VBench's subject/background formula on L2-normalised per-frame features ``[F, D]``."""
    prev = (features[1:] * features[:-1]).sum(dim=1)
    first = (features[1:] * features[:1]).sum(dim=1)
    return float(frame_consistency(prev, first).mean())


def linear_interpolation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Weight-free stand-in for AMT: the mean of the two neighbouring frames, rounded up (in uint8)."""
    return (a >> 1) + (b >> 1) + ((a | b) & 1)


def interpolation_error(before: np.ndarray, middle: np.ndarray, after: np.ndarray, interpolate: Interpolator = linear_interpolation) -> float:
    """Mean absolute error of ``middle`` interpolated back from its two neighbours."""
    return float(abs_diff_sums(interpolate(before, after)[None], middle[None])[0]) / max(1, middle.size)


def motion_smoothness(frames: np.ndarray, interpolate: Interpolator = linear_interpolation) -> float:
    """VBench's motion smoothness of a whole video: the odd frames interpolated from the even ones."""
    n = (len(frames) - 1) // 2
    if n < 1:
        raise ValueError("motion smoothness needs at least 3 frames")
    errors = [interpolation_error(frames[2 * i], frames[2 * i + 1], frames[2 * i + 2], interpolate) for i in range(n)]
    return float((255.0 - np.mean(errors)) / 255.0)


@dataclass
class VBenchScores:
    subject_consistency: float
    background_consistency: float
    motion_smoothness: float
    temporal_flickering: float
    subject_features: str
    background_features: str
    interpolator: str

    @property
    def overall(self) -> float:
        """Plain mean of the four dimensions (the MIGA paper's 'overall')."""
        return (self.subject_consistency + self.background_consistency + self.motion_smoothness + self.temporal_flickering) / 4

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"overall": self.overall, "overall_is": "plain mean of the four dimensions"}


class VBenchStream:
    """The four dimensions of a video that streams past in chunks, each frame seen once: it holds the first
    frame's features, the last frame's, and the last two frames, never the video."""

    def __init__(self, subject: FeatureExtractor, background: FeatureExtractor) -> None:
        self.subject, self.background = subject, background
        self._shared = background == subject  # one extractor for both (the weight-free fallback): computed once
        self.seen = 0
        self._first: list[Tensor] = []  # subject and background features of frame 0
        self._last: list[Tensor] = []  # ... of the last frame seen
        self._tail = np.empty((0, 0, 0, 3), np.uint8)  # the last two frames seen
        self._consistency = [0.0, 0.0]  # sums over frames t >= 1 of the subject and background scores
        self._flicker = 0.0  # sum of the pair errors
        self._motion: list[float] = [0.0, 0]  # sum and count of the interpolation errors

    def push(self, frames: np.ndarray) -> None:
        """Score the next frames, uint8 ``[n, H, W, 3]``."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames: expected uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
        if len(frames) == 0:
            return
        subject = self.subject(frames)
        features = [subject, subject if self._shared else self.background(frames)]
        if not self._first:
            self._first = [f[0] for f in features]
        for k, f in enumerate(features):
            chained = torch.cat([self._last[k][None], f]) if self._last else f
            prev = (chained[1:] * chained[:-1]).sum(dim=1)
            first = chained[1:] @ self._first[k]
            self._consistency[k] += float(frame_consistency(prev, first).double().sum())
        self._last = [f[-1] for f in features]
        window = np.concatenate([self._tail, frames]) if self.seen else frames
        start = self.seen - (len(window) - len(frames))  # frame index of window[0]
        self._flicker += float(pair_errors(window[-len(frames) - (self.seen > 0) :]).astype(np.float64).sum())
        for j in range(max(2, len(window) - len(frames)), len(window)):
            if (start + j) % 2 == 0:  # an even frame closes the triple (t - 2, t - 1, t)
                self._motion[0] += interpolation_error(window[j - 2], window[j - 1], window[j])
                self._motion[1] += 1
        self._tail = window[-2:].copy()
        self.seen += len(frames)

    def scores(self) -> VBenchScores:
        """The four dimensions of the frames seen (ValueError with fewer than 3)."""
        if self.seen < 3:
            raise ValueError(f"frames: VBench-form scores need at least 3 frames, got {self.seen}")
        subject, background = (total / (self.seen - 1) for total in self._consistency)
        return VBenchScores(
            subject_consistency=subject,
            background_consistency=background,
            motion_smoothness=(255.0 - self._motion[0] / self._motion[1]) / 255.0,
            temporal_flickering=(255.0 - self._flicker / (self.seen - 1)) / 255.0,
            subject_features=self.subject.name,
            background_features=self.background.name,
            interpolator="linear (weight-free fallback for AMT)",
        )


def evaluate_frames(frames: np.ndarray, subject: FeatureExtractor, background: FeatureExtractor) -> VBenchScores:
    """The four dimensions of one video held in memory."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) < 3:
        raise ValueError(f"frames: expected uint8 [F>=3, H, W, 3], got {frames.dtype} {frames.shape}")
    stream = VBenchStream(subject, background)
    stream.push(frames)
    return stream.scores()
