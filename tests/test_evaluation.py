"""VBench-form metrics on videos whose answers are known, and ``miga eval`` on files and jobs."""

from __future__ import annotations

import io
import json

import av
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from miga_ray.cli import app
from miga_ray.evaluation.features import PixelFeatures
from miga_ray.evaluation.report import decode_video, evaluate
from miga_ray.evaluation.vbench import evaluate_frames, feature_consistency, motion_smoothness, temporal_flickering
from miga_ray.models.toy_world import parse_prompt, render_clip
from miga_ray.storage import JobRecord, LocalStore, write_job

PROMPT = "a red circle moving over sand"


def ramp(frames: int = 9) -> np.ndarray:
    """Brightness rising linearly in time: perfectly smooth, steadily changing."""
    return np.stack([np.full((16, 16, 3), 10 + 20 * t, dtype=np.uint8) for t in range(frames)])


def test_flickering_follows_vbench():
    static = np.full((5, 8, 8, 3), 100, dtype=np.uint8)
    assert temporal_flickering(static) == 1.0
    strobe = np.stack([np.full((8, 8, 3), 255 * (t % 2), dtype=np.uint8) for t in range(6)])
    assert temporal_flickering(strobe) == 0.0
    assert temporal_flickering(ramp()) == pytest.approx((255 - 20) / 255)


def test_motion_smoothness_is_perfect_on_a_linear_ramp_and_low_on_noise():
    assert motion_smoothness(ramp()) == 1.0
    noise = np.random.default_rng(0).integers(0, 256, size=(9, 16, 16, 3), dtype=np.uint8)
    assert motion_smoothness(noise) < 0.8


def test_consistency_takes_first_and_previous_frames():
    same = torch.nn.functional.normalize(torch.ones(4, 3), dim=1)
    assert feature_consistency(same) == pytest.approx(1.0)
    flip = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # frame 2 equals frame 0, frame 1 is orthogonal
    assert feature_consistency(flip) == pytest.approx((0.0 + (0.0 + 1.0) / 2) / 2)


def test_ground_truth_toy_video_scores_high_and_shuffled_lower():
    clip = render_clip(parse_prompt(PROMPT), 33, 64, 64, seed=1)
    truth = evaluate_frames(clip, PixelFeatures(), PixelFeatures())
    shuffled = evaluate_frames(clip[np.random.default_rng(1).permutation(33)], PixelFeatures(), PixelFeatures())
    assert truth.subject_consistency > 0.8 and truth.motion_smoothness > 0.98
    assert shuffled.motion_smoothness < truth.motion_smoothness and shuffled.subject_consistency <= truth.subject_consistency
    assert truth.overall == pytest.approx(
        (truth.subject_consistency + truth.background_consistency + truth.motion_smoothness + truth.temporal_flickering) / 4
    )
    assert "fallback" in truth.to_dict()["subject_features"]


def write_mp4(path, frames):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "10"}
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())


def test_eval_reads_a_video_file_and_a_job(tmp_path):
    clip = render_clip(parse_prompt(PROMPT), 17, 64, 64, seed=2)
    write_mp4(tmp_path / "v.mp4", clip)
    assert decode_video(tmp_path / "v.mp4").shape == clip.shape
    report = evaluate(str(tmp_path / "v.mp4"), prompt=PROMPT)
    assert report["frames"] == 17 and report["toy_world"]["color_rate"] > 0.9
    store = LocalStore(tmp_path / "out")
    write_job(store, JobRecord("job", status="done", config={"prompt": PROMPT}))
    for i, frame in enumerate(clip):
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="PNG")
        store.put_bytes(f"job/frames/{i:06d}.png", buf.getvalue())
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "out" / "job")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["source"].endswith("frames/*.png") and data["toy_world"]["background_rate"] > 0.9
    assert data["vbench"]["overall_is"] == "plain mean of the four dimensions"
    missing = CliRunner().invoke(app, ["eval", str(tmp_path / "nothing-here")])
    assert missing.exit_code == 2
