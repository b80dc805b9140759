"""Evaluation streams a video once in chunks: the same numbers as the whole-video evaluation, in memory
that does not grow with the video's length."""

from __future__ import annotations

import json
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from miga_ray.evaluation.bins import DriftAccumulator
from miga_ray.evaluation.frames import FrameSource, video_source
from miga_ray.evaluation.report import source_report
from miga_ray.evaluation.toy_world import analyze
from miga_ray.models.toy_world import parse_prompt, render_clip
from test_evaluation import write_mp4

PROMPT = "a large red circle and a blue square moving over sand"
GOLDEN = Path(__file__).parent / "data" / "eval_golden.json"


def golden_video() -> np.ndarray:
    """41 noisy frames whose second part shows another scene: every curve and drift figure moves."""
    first = render_clip(parse_prompt(PROMPT), 23, 72, 96, seed=4)
    second = render_clip(parse_prompt("a large green circle and a blue triangle moving over grass"), 18, 72, 96, seed=5)
    video = np.concatenate([first, second]).astype(np.int16)
    video += np.random.default_rng(0).integers(-12, 13, size=video.shape, dtype=np.int16)
    return np.clip(video, 0, 255).astype(np.uint8)


def in_chunks(video: np.ndarray, size: int) -> FrameSource:
    return FrameSource("golden", len(video), lambda: (video[i : i + size] for i in range(0, len(video), size)))


def leaves(value, path=""):
    """Every number or string of a JSON document by its path."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, f"{path}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from leaves(item, f"{path}[{i}]")
    else:
        yield path, value


@pytest.mark.parametrize("chunk", [1, 5, 41])
def test_streamed_report_equals_the_whole_video_evaluation(chunk):
    """GOLDEN is the report of the whole-video evaluation before streaming (frames_report of the decoded video)."""
    golden = dict(leaves(json.loads(GOLDEN.read_text())))
    streamed = dict(leaves(json.loads(json.dumps(source_report(in_chunks(golden_video(), chunk), PROMPT, bins=6)))))
    assert streamed.keys() == golden.keys()
    for path, value in golden.items():
        if isinstance(value, float):  # float32 means before, float64 sums now: equal to 1e-7
            assert streamed[path] == pytest.approx(value, abs=1e-6), path
        else:
            assert streamed[path] == value, path
    assert golden["/drift/drift/color_rate"] < -0.2, "the video drifts, so the figures test something"


def test_accumulated_summary_equals_the_per_frame_series():
    video = golden_video()
    report = analyze(video, PROMPT)
    acc = DriftAccumulator(len(video), 4, 16)
    for start in range(0, len(video), 7):
        acc.add(start, {name: values[start : start + 7] for name, values in report.series.items()})
    series = report.series["subject_consistency"]
    assert acc.mean("subject_consistency") == pytest.approx(np.nanmean(series))
    assert acc.chunk_means("subject_consistency")[-1] == pytest.approx(np.nanmean(series[32:]))
    last, first = np.nanmean(series[-10:]), np.nanmean(series[:10])
    assert acc.summary(PROMPT)["drift"]["subject_consistency"] == pytest.approx(last - first)
    assert math.isnan(acc.mean("no such series"))


def traced_peak(path: Path) -> int:
    """Peak bytes Python and numpy allocate while ``miga eval``'s report of the file is made, in chunks of 8 frames."""
    tracemalloc.start()
    try:
        source_report(video_source(path, chunk=8), "a red circle moving over sand", bins=10)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_evaluation_memory_does_not_grow_with_the_video(tmp_path):
    clip = render_clip(parse_prompt("a red circle moving over sand"), 40, 64, 64, seed=0)
    write_mp4(tmp_path / "short.mp4", clip)
    write_mp4(tmp_path / "long.mp4", np.concatenate([clip] * 10))
    traced_peak(tmp_path / "short.mp4")  # caches (colour tables, features) are filled once per process
    short, long = traced_peak(tmp_path / "short.mp4"), traced_peak(tmp_path / "long.mp4")
    held = 360 * 64 * 64 * 3  # the 360 more frames of the long video, as uint8
    assert long - short < held / 4, f"peak {short} bytes at 40 frames, {long} at 400: evaluation holds the video"
