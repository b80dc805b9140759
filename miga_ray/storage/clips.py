"""A user's video or image file read into uint8 frames, to continue it (``miga render --init-video``).

Videos are decoded with PyAV, images (``IMAGE_SUFFIXES``) with Pillow. The frames are then fitted to
the render: scaled to its size when they differ (the aspect ratio is not kept), and cut to the
longest prefix the model's VAE encodes whole (1 + k x its ``encode_step``: 4 for the Wan family, 1 for
VideoCrafter2's 2-D VAE).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class Clip:
    """Frames ``[n, H, W, 3]`` uint8 of a file, and the file's sha256 (what a job's identity records)."""

    path: str
    sha256: str
    frames: np.ndarray


def read_clip(path: str | Path, max_frames: int) -> Clip:
    """The first ``max_frames`` frames of a video file, or an image as one frame.

    ValueError naming the file and the rule when it is missing, cannot be decoded or holds no frame."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such file")
    data = p.read_bytes()
    try:
        frames = _image(p) if p.suffix.lower() in IMAGE_SUFFIXES else _video(p, max_frames)
    except (av.FFmpegError, UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{p}: must be a video PyAV decodes or an image ({', '.join(IMAGE_SUFFIXES)}): {exc}") from None
    if not frames:
        raise ValueError(f"{p}: must hold at least one video frame (it holds none)")
    return Clip(str(p), hashlib.sha256(data).hexdigest(), np.stack(frames))


def _image(path: Path) -> list[np.ndarray]:
    with Image.open(path) as image:
        return [np.asarray(image.convert("RGB"))]


def _video(path: Path, max_frames: int) -> list[np.ndarray]:
    frames: list[np.ndarray] = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise av.InvalidDataError(0, "no video stream")
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) >= max_frames:
                break
    return frames


def fit_frames(frames: np.ndarray, height: int, width: int, step: int) -> np.ndarray:
    """Frames scaled to ``height x width`` (when they differ) and cut to 1 + k x ``step`` of them."""
    keep = 1 + (len(frames) - 1) // step * step
    frames = frames[:keep]
    if frames.shape[1:3] == (height, width):
        return frames
    scaled = [av.VideoFrame.from_ndarray(f, format="rgb24").reformat(width=width, height=height).to_ndarray(format="rgb24") for f in frames]
    return np.stack(scaled)
