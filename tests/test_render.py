"""One job end to end on the shipped toy model: video, storage layout, checkpoints and exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from miga_ray.config import ConfigError, load_config
from miga_ray.engines import load_for
from miga_ray.render import JobRun
from miga_ray.storage import LocalStore, read_job
from toy_model import TOY, toy_latents

PROMPT = "a red circle moving over sand"


@pytest.fixture(scope="module")
def toy():
    return load_for(load_config(None, ["model.device=cpu", f"model.name={TOY}"]))


def small_config(**fields):
    overrides = ["model.device=cpu", f"model.name={TOY}", "sampler.num_levels=16", "sampler.miga.stage2_levels=3", "sampler.miga.reflect_after=4",
                 "checkpoint.every_latents=2", "video.fps=8"]
    frames = fields.pop("frames", 29)
    return load_config(None, overrides + [f"{k}={v}" for k, v in fields.items()], frames=frames)


def decoded_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


class Stop(Exception):
    """Stands in for a crash at a chosen point."""


def stop_after(frames: int):
    def hook(progress):
        if progress.frames_done >= frames:
            raise Stop(progress.frames_done)
    return hook


def test_render_writes_the_job_layout(tmp_path, toy):
    cfg = small_config()
    result = JobRun(LocalStore(tmp_path), PROMPT, cfg, toy).run()
    job = tmp_path / result.job_id
    frames = decoded_frames(job / "video.mp4")
    assert frames.shape == (29, 64, 64, 3)
    playlist = (job / "video.m3u8").read_text()
    assert "#EXT-X-ENDLIST" in playlist and playlist.count("#EXTINF") == len(list((job / "segments").glob("*.ts")))
    assert len(list((job / "latents").glob("*.safetensors"))) == toy_latents(29)
    record = read_job(LocalStore(tmp_path), result.job_id)
    assert record.status == "done" and record.frames_done == 29
    assert record.config["fingerprint"] == cfg.fingerprint()
    assert record.metrics["model_calls"]["calls"]["stage2"] > 0
    sheet = Image.open(job / "contact_sheet.png")
    assert sheet.size == (4 * 128, 3 * (128 + 14))  # 12 frames of 64x64, doubled, in 4 columns
    assert len(list((job / "sheet").glob("*.png"))) == 12
    again = JobRun(LocalStore(tmp_path), PROMPT, cfg, toy).run()
    assert again.skipped and again.record.status == "done"


@pytest.mark.parametrize("sampler", ["miga", "fifo"])
def test_interrupted_render_resumes_to_the_same_video(tmp_path, toy, sampler):
    cfg = small_config(**{"sampler.kind": sampler, "frames": 41, "video.png_frames": "true"})
    whole = JobRun(LocalStore(tmp_path / "whole"), PROMPT, cfg, toy).run()
    reference = decoded_frames(tmp_path / "whole" / whole.job_id / "video.mp4")
    store = LocalStore(tmp_path / "cut")
    for cut in (6, 19, 30):
        with pytest.raises(Stop):
            JobRun(store, PROMPT, cfg, toy).run(stop_after(cut))
        assert read_job(store, whole.job_id).status == "failed"
    resumed = JobRun(store, PROMPT, cfg, toy).run()
    assert resumed.resumed_from is not None and resumed.resumed_from > 0
    for i in range(11):
        a = (tmp_path / "whole" / whole.job_id / "latents" / f"{i:06d}.safetensors").read_bytes()
        assert a == (tmp_path / "cut" / whole.job_id / "latents" / f"{i:06d}.safetensors").read_bytes()
    pngs = sorted((tmp_path / "whole" / whole.job_id / "frames").glob("*.png"))
    assert len(pngs) == 41
    for png in pngs:  # lossless frames: identical
        assert png.read_bytes() == (tmp_path / "cut" / whole.job_id / "frames" / png.name).read_bytes()
    # H.264: same frame count; x264 may encode a re-encoded segment a little differently
    video = decoded_frames(tmp_path / "cut" / whole.job_id / "video.mp4")
    assert video.shape == reference.shape and np.abs(video.astype(int) - reference.astype(int)).mean() < 1.0


def test_a_changed_config_is_refused_unless_restarted(tmp_path, toy):
    store = LocalStore(tmp_path)
    with pytest.raises(Stop):
        JobRun(store, PROMPT, small_config(), toy).run(stop_after(10))
    changed = small_config(**{"sampler.miga.group": 1})
    with pytest.raises(ConfigError, match="differs.*--restart"):
        JobRun(store, PROMPT, changed, toy).run()
    result = JobRun(store, PROMPT, changed, toy, restart=True).run()
    assert result.resumed_from is None and read_job(store, result.job_id).status == "done"


def test_trace_file_has_one_line_per_model_call(tmp_path, toy):
    trace = tmp_path / "calls.jsonl"
    with trace.open("w") as sink:
        result = JobRun(LocalStore(tmp_path / "out"), PROMPT, small_config(), toy, trace=sink).run()
    calls = [json.loads(line) for line in trace.read_text().splitlines()]
    expected = sum(result.record.metrics["model_calls"]["calls"].values())
    assert len(calls) == expected and {"call", "phase", "latents", "levels", "guidance", "kept"} <= set(calls[0])


@pytest.mark.parametrize("sampler", ["miga", "fifo"])
def test_progress_is_the_planned_sampler_work_from_the_first_call(tmp_path, toy, sampler):
    cfg = small_config(**{"sampler.kind": sampler, "sampler.miga.reflect_delta": 0})
    seen = []
    result = JobRun(LocalStore(tmp_path), PROMPT, cfg, toy).run(seen.append, tick_s=0)
    calls = result.record.metrics["model_calls"]["calls"]
    if sampler == "miga":
        assert calls.get("reflect", 0) > 0, "reflection ran: its candidate calls are outside the plan"
    first, last = seen[0], seen[-1]
    assert first.frames_done == 0 and first.work_done == 0 and first.eta is None and first.work_total > 0
    before_frames = [p for p in seen if p.frames_done == 0]
    assert before_frames[-1].work_done > first.work_total // 4 and before_frames[-1].eta is not None, "work shows before frames"
    assert [p.work_done for p in seen] == sorted(p.work_done for p in seen)
    assert last.work_done == last.work_total == sum(calls.values()) - calls.get("reflect", 0)
    assert last.frames_done == 29 and last.eta == 0


def test_a_resumed_run_rates_its_own_work_only(tmp_path, toy):
    store, cfg = LocalStore(tmp_path), small_config(frames=61)  # long enough that model work remains after frame 8
    with pytest.raises(Stop):
        JobRun(store, PROMPT, cfg, toy).run(stop_after(8))
    seen = []
    JobRun(store, PROMPT, cfg, toy).run(seen.append)
    start = seen[0]
    assert start.frames_before > 0 and start.frames_done == start.frames_before and start.fps == 0.0
    assert 0 < start.work_before == start.work_done < start.work_total and start.eta is None
    last = seen[-1]
    assert last.fps == pytest.approx((61 - start.frames_before) / last.seconds)


def test_ctrl_c_records_interrupted_with_how_to_resume(tmp_path, toy):
    def interrupt(progress):
        if progress.frames_done >= 6:
            raise KeyboardInterrupt

    store = LocalStore(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        JobRun(store, PROMPT, small_config(), toy).run(interrupt)
    record = read_job(store, "a-red-circle-moving-over-sand-s0")
    assert record.status == "interrupted" and "SIGINT" in record.error and "same command again" in record.error


def test_cpu_threads_share_the_idle_cpus_unless_omp_num_threads_says(monkeypatch):
    import miga_ray.render as render

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert render.cpu_threads(2) == (3, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(render, "usable_cpus", lambda: 8)
    monkeypatch.setattr(render.os, "getloadavg", lambda: (4.0, 4.0, 4.0))
    assert render.cpu_threads(2)[0] == 2, "4 idle CPUs shared by 2 renders"
    assert render.cpu_threads(1)[0] == 4
    monkeypatch.setattr(render.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert render.cpu_threads(2)[0] == 1, "a busy machine: one thread each, never oversubscribed"
