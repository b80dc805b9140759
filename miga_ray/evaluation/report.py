"""``miga eval``: a video file or a finished job -> VBench-form numbers (and, for toy prompts, the
toy world's ground truth measured from pixels)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from ..config import ConfigError
from ..storage import ObjectStore, check_video, open_store, read_job
from .features import feature_extractor
from .vbench import evaluate_frames


def decode_video(data: bytes | str | Path) -> np.ndarray:
    """All frames of a video file (path or bytes) as uint8 ``[F, H, W, 3]``, via FFmpeg."""
    source = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    with av.open(source) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def job_frames(store: ObjectStore, job_id: str) -> tuple[np.ndarray, str]:
    """A job's lossless PNG frames when it kept them, else its decoded video.mp4; and which it was."""
    pngs = store.list(f"{job_id}/frames/")
    if pngs:
        return np.stack([np.asarray(Image.open(io.BytesIO(store.get_bytes(k))).convert("RGB")) for k in pngs]), "frames/*.png"
    return decode_video(store.get_bytes(f"{job_id}/video.mp4")), "video.mp4"


def evaluate(
    target: str, prompt: str | None = None, dino: str | None = None, clip: str | None = None, bins: int = 10
) -> dict[str, Any]:
    """Scores for a video path or a job (``<out>/<job_id>``); the prompt comes from job.json when not given.

    A toy-world prompt adds the analyzer's ground truth and its drift summary over `bins` bins of
    frames (at most one per frame).
    """
    path = Path(target)
    if path.is_file():
        try:
            frames, source = decode_video(path), str(path)
        except (av.error.FFmpegError, ValueError) as exc:  # not a video (or none FFmpeg can read): a usage error
            raise ConfigError(f"{target}: not a video FFmpeg can read ({getattr(exc, 'strerror', None) or exc})") from None
    else:
        base, _, job_id = target.rstrip("/").rpartition("/")
        store = open_store(base or ".", check=False)  # read only: a missing path must not be created
        record = read_job(store, job_id)
        if record is None:
            raise ConfigError(f"{target}: neither a video file nor a job (<out>/<job_id> with a job.json)")
        if record.status == "done":
            check_video(store, job_id)
        prompt = prompt or record.config.get("prompt")
        frames, source = job_frames(store, job_id)
        source = f"{target}/{source}"
    return frames_report(frames, source, prompt, dino, clip, bins)


def frames_report(
    frames: np.ndarray, source: str, prompt: str | None, dino: str | None = None, clip: str | None = None, bins: int = 10
) -> dict[str, Any]:
    """The report of ``evaluate`` for decoded frames: VBench-form numbers, and the toy sections for a toy prompt."""
    scores = evaluate_frames(frames, feature_extractor("dino", dino), feature_extractor("clip", clip))
    report: dict[str, Any] = {"source": source, "frames": len(frames), "vbench": scores.to_dict()}
    if prompt:
        report.update(_toy_sections(frames, prompt, bins))
    return report


def _toy_sections(frames: np.ndarray, prompt: str, bins: int) -> dict[str, Any]:
    """``toy_world`` (the analyzer's ground truth) and ``drift`` (its summary), or a ``toy_world`` line saying
    why the toy numbers do not apply to this prompt."""
    from ..models.toy_world import analyze, parse_prompt

    try:
        parse_prompt(prompt)
    except ValueError as exc:
        return {"toy_world": f"toy-world numbers do not apply: the prompt is outside the toy grammar ({exc})"}
    try:
        toy = analyze(frames, prompt)
    except ValueError as exc:  # frames the analyzer cannot judge, e.g. smaller than its MIN_SIDE
        return {"toy_world": f"toy-world numbers do not apply: {exc}"}
    return {"toy_world": toy.to_dict(per_frame=False), "drift": toy.summary(min(bins, len(frames)))}
