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
from miga_ray.evaluation.compare import LEGEND_HEIGHT, PALETTE, PANEL
from miga_ray.evaluation.features import PixelFeatures
from miga_ray.evaluation.frames import video_source
from miga_ray.evaluation.report import evaluate
from miga_ray.evaluation.toy_world import drift_summary
from miga_ray.evaluation.vbench import evaluate_frames, feature_consistency, motion_smoothness, temporal_flickering
from miga_ray.models.toy_world import parse_prompt, render_clip
from miga_ray.storage import JobLayout, JobRecord, LocalStore, SegmentWriter, write_job
from miga_ray.storage.layout import sums_text

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
    assert np.concatenate(list(video_source(tmp_path / "v.mp4").chunks())).shape == clip.shape
    report = evaluate(str(tmp_path / "v.mp4"), prompt=PROMPT)
    assert report["frames"] == 17 and report["toy_world"]["color_rate"] > 0.9
    store = LocalStore(tmp_path / "out")
    write_job(store, JobRecord("job", status="done", config={"prompt": PROMPT}))
    video = SegmentWriter(store, "job", 8, 64, 64)  # a done job's video and its checksums, which eval checks
    video.write(clip)
    video.finish()
    store.put_bytes(JobLayout("job").video_sums, sums_text(video.sums()))
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


def halfway_blue(frames: int = 64) -> np.ndarray:
    """The red circle's clip whose second half shows a blue circle instead."""
    clip = render_clip(parse_prompt(PROMPT), frames, 64, 64, seed=0)
    clip[frames // 2 :] = render_clip(parse_prompt("a blue circle moving over sand"), frames, 64, 64, seed=0)[frames // 2 :]
    return clip


def test_eval_adds_a_drift_section_for_toy_prompts(tmp_path):
    write_mp4(tmp_path / "v.mp4", halfway_blue())
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "v.mp4"), "--prompt", PROMPT, "--bins", "4"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["vbench"]["subject_consistency"] == data["vbench"]["background_consistency"]  # the pixel fallback
    toy = data["toy_world"]
    assert toy["subject_consistency"] < 0.6 and toy["background_consistency"] > 0.99  # the toy world tells them apart
    assert data["drift"]["curves"]["color_rate"] == [1.0, 1.0, 0.0, 0.0]
    assert data["drift"]["drift"]["color_rate"] == -1.0
    assert data["drift"]["mean"]["subject_consistency"] == toy["subject_consistency"]
    many = json.loads(CliRunner().invoke(app, ["eval", str(tmp_path / "v.mp4"), "--prompt", PROMPT, "--bins", "99"]).stdout)
    assert len(many["drift"]["bin_starts"]) == 64  # at most one bin per frame


def test_eval_outside_the_toy_grammar_still_gives_vbench_numbers(tmp_path):
    write_mp4(tmp_path / "v.mp4", render_clip(parse_prompt(PROMPT), 9, 64, 64, seed=0))
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "v.mp4"), "--prompt", "a purple circle moving over sand"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert "do not apply" in data["toy_world"] and "'purple'" in data["toy_world"]
    assert "drift" not in data and 0 < data["vbench"]["overall"] <= 1
    assert "'purple'" in result.stderr
    write_mp4(tmp_path / "small.mp4", render_clip(parse_prompt(PROMPT), 9, 16, 16, seed=0))
    small = CliRunner().invoke(app, ["eval", str(tmp_path / "small.mp4"), "--prompt", PROMPT])
    assert small.exit_code == 0, small.output
    data = json.loads(small.stdout)
    assert "do not apply" in data["toy_world"] and "32x32" in data["toy_world"] and "overall" in data["vbench"]


def test_compare_draws_each_variant_and_tabulates_drift(tmp_path):
    steady = render_clip(parse_prompt(PROMPT), 64, 64, 64, seed=0)
    (tmp_path / "steady.json").write_text(json.dumps(drift_summary(steady, PROMPT, bins=8)))
    videos = [drift_summary(halfway_blue(), PROMPT, bins=8), drift_summary(steady, PROMPT, bins=8)]
    (tmp_path / "flip.jsonl").write_text("\n".join(json.dumps(v) for v in videos))  # one video drifts, one does not
    png = tmp_path / "c.png"
    args = ["compare", str(tmp_path / "steady.json"), str(tmp_path / "flip.jsonl"), "--png", str(png), "--metric", "color_rate"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:]}
    assert rows["metric"] == ["steady", "flip"] and rows["videos"] == ["1", "2"]
    assert rows["color_rate"] == ["1.000", "(+0.000)", "0.750", "(-0.500)"]
    image = np.asarray(Image.open(png).convert("RGB"))[LEGEND_HEIGHT:]  # one panel: color_rate
    rows_of = {c: np.flatnonzero(np.all(image == c, axis=-1).any(axis=1)) for c in PALETTE[:2]}
    assert np.ptp(rows_of[PALETTE[0]]) <= 4  # steady: a flat line (it may hide under flip's in the first half)
    assert np.ptp(rows_of[PALETTE[1]]) > 0.5 * (PANEL[1] - 60)  # flip: from 1.0 down to 0.5
    bad = CliRunner().invoke(app, ["compare", str(tmp_path / "steady.json"), "--metric", "colour_rate"])
    assert bad.exit_code == 2 and "colour_rate" in bad.output and "color_rate" in bad.output
    (tmp_path / "vbench.json").write_text(json.dumps({"vbench": {}}))
    assert CliRunner().invoke(app, ["compare", str(tmp_path / "vbench.json")]).exit_code == 2
