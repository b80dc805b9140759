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
from torch import Tensor

from .features import FeatureExtractor

Interpolator = Callable[[np.ndarray, np.ndarray], np.ndarray]
Cosines = TypeVar("Cosines", np.ndarray, Tensor)


def temporal_flickering(frames: np.ndarray) -> float:
    diffs = np.abs(frames[1:].astype(np.float32) - frames[:-1].astype(np.float32))
    return float((255.0 - diffs.reshape(len(diffs), -1).mean(axis=1).mean()) / 255.0)


def frame_consistency(prev: Cosines, first: Cosines) -> Cosines:
    """VBench's subject/background score of frames t >= 1 from their feature cosines to frames t-1 and 0."""
    return (prev.clip(min=0) + first.clip(min=0)) / 2


def feature_consistency(features: Tensor) -> float:
    """VBench's subject/background formula on L2-normalised per-frame features ``[F, D]``."""
    prev = (features[1:] * features[:-1]).sum(dim=1)
    first = (features[1:] * features[:1]).sum(dim=1)
    return float(frame_consistency(prev, first).mean())


def linear_interpolation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Weight-free stand-in for AMT: the mean of the two neighbouring frames."""
    return ((a.astype(np.uint16) + b.astype(np.uint16) + 1) // 2).astype(np.uint8)


def motion_smoothness(frames: np.ndarray, interpolate: Interpolator = linear_interpolation) -> float:
    even, odd = frames[0::2], frames[1::2]
    n = min(len(odd), len(even) - 1)
    if n < 1:
        raise ValueError("motion smoothness needs at least 3 frames")
    errors = [np.abs(interpolate(even[i], even[i + 1]).astype(np.float32) - odd[i].astype(np.float32)).mean() for i in range(n)]
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


def evaluate_frames(frames: np.ndarray, subject: FeatureExtractor, background: FeatureExtractor) -> VBenchScores:
    """The four dimensions of one video."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) < 3:
        raise ValueError(f"frames: expected uint8 [F>=3, H, W, 3], got {frames.dtype} {frames.shape}")
    return VBenchScores(
        subject_consistency=feature_consistency(subject(frames)),
        background_consistency=feature_consistency(background(frames)),
        motion_smoothness=motion_smoothness(frames),
        temporal_flickering=temporal_flickering(frames),
        subject_features=subject.name,
        background_features=background.name,
        interpolator="linear (weight-free fallback for AMT)",
    )
