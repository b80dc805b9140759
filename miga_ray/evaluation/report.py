"""``miga eval``: a video file or a finished job -> VBench-form numbers (and, for toy prompts, the
toy world's ground truth measured from pixels), from frames streamed once in chunks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av

from ..config import ConfigError
from ..job import StoredJob
from ..models.toy_world import parse_prompt
from ..storage import check_video, open_store, read_job
from .features import feature_extractor
from .frames import FrameSource, job_source, video_source
from .toy_world import ToyStream
from .vbench import VBenchStream


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
            return source_report(video_source(path), prompt, dino, clip, bins)
        except (av.error.FFmpegError, ValueError, IndexError) as exc:  # not a video (or none FFmpeg can read): a usage error
            raise ConfigError(f"{target}: not a video FFmpeg can read ({getattr(exc, 'strerror', None) or exc})") from None
    base, _, job_id = target.rstrip("/").rpartition("/")
    store = open_store(base or ".", check=False)  # read only: a missing path must not be created
    record = read_job(store, job_id)
    if record is None:
        raise ConfigError(f"{target}: neither a video file nor a job (<out>/<job_id> with a job.json)")
    if record.status == "done":
        check_video(store, job_id)
    with job_source(store, job_id) as source:
        source.name = f"{target}/{source.name}"
        return source_report(source, prompt or StoredJob.of(record).prompt, dino, clip, bins)


def source_report(
    source: FrameSource, prompt: str | None, dino: str | None = None, clip: str | None = None, bins: int = 10
) -> dict[str, Any]:
    """The report of ``evaluate`` from one pass over the source's frames: VBench-form numbers, and the toy
    sections for a toy prompt. ValueError when the frames are not the source's announced count."""
    vbench = VBenchStream(feature_extractor("dino", dino), feature_extractor("clip", clip))
    toy, note = None, None
    if prompt:
        try:
            parse_prompt(prompt)
        except ValueError as exc:
            note = f"toy-world numbers do not apply: the prompt is outside the toy grammar ({exc})"
        else:
            toy = ToyStream(prompt, source.count, min(bins, max(1, source.count)))
    for chunk in source.chunks():
        vbench.push(chunk)
        if toy is not None:
            try:
                toy.push(chunk)
            except ValueError as exc:  # frames the analyzer cannot judge, e.g. smaller than its MIN_SIDE
                toy, note = None, f"toy-world numbers do not apply: {exc}"
    if vbench.seen != source.count:
        raise ValueError(f"{source.name}: {vbench.seen} frames decode, of the {source.count} it holds")
    if vbench.seen < 3:
        raise ValueError(f"{source.name} holds {vbench.seen} frames; evaluation needs at least 3")
    report: dict[str, Any] = {"source": source.name, "frames": vbench.seen, "vbench": vbench.scores().to_dict()}
    if prompt:
        report.update(toy.finish() if toy is not None else {"toy_world": note})
    return report
