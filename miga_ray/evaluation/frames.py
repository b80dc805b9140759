"""Where evaluation reads a video from: its frame count first, then its frames in chunks, read once.

A 10,000-frame 832x480 video is 12 GB of pixels; evaluation holds one chunk of them at a time (about
``CHUNK_PIXELS`` pixels, and at least ``MIN_CHUNK`` frames so feature extractors see batches), so its
memory does not grow with the video's length.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from ..storage import JobLayout, ObjectStore

CHUNK_PIXELS = 1 << 18  # pixels per chunk: 64 frames of 64x64
MIN_CHUNK = 16  # frames per chunk at least: 16 of 832x480 (19 MB)


@dataclass
class FrameSource:
    """A video as its frame count and a one-pass reader of its frames, uint8 ``[n, H, W, 3]`` chunks."""

    name: str
    count: int
    chunks: Callable[[], Iterator[np.ndarray]]


def chunk_frames(height: int, width: int) -> int:
    """Frames per chunk at this size."""
    return max(MIN_CHUNK, CHUNK_PIXELS // max(1, height * width))


def _batched(frames: Iterator[np.ndarray], size: int | None) -> Iterator[np.ndarray]:
    """Consecutive frames stacked into chunks of ``size`` (by ``chunk_frames`` of the first frame when None)."""
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) >= (size or chunk_frames(*frame.shape[:2])):
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def _frame_count(path: str) -> int:
    """Frames of a video file, by counting its packets (demuxed, not decoded; container metadata may be wrong)."""
    with av.open(path) as container:
        return sum(1 for packet in container.demux(container.streams.video[0]) if packet.size)


def video_source(path: str | Path, chunk: int | None = None) -> FrameSource:
    """A video file read through FFmpeg (ValueError / av errors when it is not a video)."""
    path = str(path)
    count = _frame_count(path)

    def chunks() -> Iterator[np.ndarray]:
        with av.open(path) as container:
            yield from _batched((f.to_ndarray(format="rgb24") for f in container.decode(video=0)), chunk)

    return FrameSource(path, count, chunks)


def png_source(store: ObjectStore, keys: list[str], name: str, chunk: int | None = None) -> FrameSource:
    """Lossless PNG frames stored under ``keys``, in order."""

    def chunks() -> Iterator[np.ndarray]:
        frames = (np.asarray(Image.open(io.BytesIO(store.get_bytes(k))).convert("RGB")) for k in keys)
        yield from _batched(frames, chunk)

    return FrameSource(name, len(keys), chunks)


@contextmanager
def job_source(store: ObjectStore, job_id: str) -> Iterator[FrameSource]:
    """A job's lossless PNG frames when it kept them, else its video.mp4 (read from a local copy); its name says which."""
    job = JobLayout(job_id)
    pngs = store.list(job.frames + "/")
    if pngs:
        yield png_source(store, pngs, "frames/*.png")
        return
    with store.local_copy(job.mp4) as path:
        source = video_source(path)
        source.name = "video.mp4"
        yield source
