"""A user's video or image file to continue (``miga render --init-video``): probed first, decoded frame by frame.

``probe_clip`` reads only what it needs before any pixel is decoded: the file's sha256 (in chunks), the frame
size from the header, and the frame count (video packets, up to the render's length). A frame larger than
``MAX_PIXELS`` is refused, naming the limit. ``decode_clip`` then decodes one frame at a time and scales each to
the render's size as it reads it (the aspect ratio is not kept), so memory holds one source frame at its own size
(at most ``MAX_PIXELS``, a few copies while it is converted) and the fitted frames at the render's size (frames x
height x width x 3 bytes), never the clip at its own size. The frames
are cut to the longest prefix the model's VAE encodes whole (1 + k x its ``encode_step``: 4 for the Wan family,
1 for VideoCrafter2's 2-D VAE). Videos are read with PyAV, images (``IMAGE_SUFFIXES``) with Pillow.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_SIDE = 4096
MAX_PIXELS = MAX_SIDE * MAX_SIDE  # per source frame: 48 MiB as RGB
LIMIT = f"at most {MAX_PIXELS:,} pixels per frame ({MAX_SIDE}x{MAX_SIDE})"
_UNREADABLE = (av.FFmpegError, UnidentifiedImageError, OSError, Image.DecompressionBombError, IndexError, ValueError)


@dataclass(frozen=True)
class Clip:
    """A probed file: its sha256 (what a job's identity records), frame size and frame count (at most the render's)."""

    path: str
    sha256: str
    width: int
    height: int
    count: int

    @property
    def is_image(self) -> bool:
        return Path(self.path).suffix.lower() in IMAGE_SUFFIXES


def file_sha256(path: Path) -> str:
    """sha256 of a local file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def probe_clip(path: str | Path, max_frames: int) -> Clip:
    """The file's sha256, frame size and frame count (at most ``max_frames``), without decoding a frame.

    ValueError naming the file and the rule when it is missing, not a video or image, holds no frame, or its
    frames exceed ``MAX_PIXELS``."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such file")
    try:
        if p.suffix.lower() in IMAGE_SUFFIXES:
            with Image.open(p) as image:  # reads the header only
                (width, height), count = image.size, 1
        else:
            width, height, count = _probe_video(p, max_frames)
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{p}: its frames must hold {LIMIT} ({exc})") from None
    except _UNREADABLE as exc:
        raise ValueError(f"{p}: must be a video PyAV decodes or an image ({', '.join(IMAGE_SUFFIXES)}): {exc}") from None
    if width * height > MAX_PIXELS:
        raise ValueError(f"{p}: its frames must hold {LIMIT}; they are {width}x{height}")
    if count < 1:
        raise ValueError(f"{p}: must hold at least one video frame (it holds none)")
    return Clip(str(p), file_sha256(p), width, height, count)


def _probe_video(path: Path, max_frames: int) -> tuple[int, int, int]:
    """Width, height and frames (packets, up to ``max_frames``) of a video's first stream, from its container."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise av.InvalidDataError(0, "no video stream")
        stream = container.streams.video[0]
        count = 0
        for packet in container.demux(stream):
            count += packet.size > 0
            if count >= max_frames:
                break
        return stream.codec_context.width, stream.codec_context.height, count


def decode_clip(clip: Clip, height: int, width: int, step: int) -> np.ndarray:
    """Frames ``[n, height, width, 3]`` uint8 of the clip, n = 1 + k x ``step`` of its first ``clip.count``, each
    scaled as it is decoded; ValueError naming the file when it cannot be decoded."""
    keep = 1 + (clip.count - 1) // step * step
    out = np.empty((keep, height, width, 3), np.uint8)
    n = 0
    try:
        if clip.is_image:
            with Image.open(clip.path) as image:
                out[0] = _scaled(av.VideoFrame.from_ndarray(np.asarray(image.convert("RGB")), format="rgb24"), height, width)
            n = 1
        else:
            with av.open(clip.path) as container:
                for frame in container.decode(video=0):
                    out[n] = _scaled(frame, height, width)
                    n += 1
                    if n == keep:
                        break
    except _UNREADABLE as exc:
        raise ValueError(f"{clip.path}: cannot be decoded: {exc}") from None
    if n < 1:
        raise ValueError(f"{clip.path}: must hold at least one video frame (it holds none)")
    return out[: 1 + (n - 1) // step * step]


def _scaled(frame: av.VideoFrame, height: int, width: int) -> np.ndarray:
    """One frame as RGB at ``height x width`` (converted and scaled in one step when its size differs)."""
    if (frame.height, frame.width) != (height, width):
        frame = frame.reformat(width=width, height=height, format="rgb24")
    return frame.to_ndarray(format="rgb24")


def fit_frames(frames: np.ndarray, height: int, width: int, step: int) -> np.ndarray:
    """Frames in memory scaled to ``height x width`` (when they differ) and cut to 1 + k x ``step`` of them."""
    keep = 1 + (len(frames) - 1) // step * step
    frames = frames[:keep]
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([_scaled(av.VideoFrame.from_ndarray(f, format="rgb24"), height, width) for f in frames])
