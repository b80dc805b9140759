"""One job end to end on the shipped toy model: video, storage layout, checkpoints and exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from miga_ray.config import ConfigError, identity_hash, job_id_for, job_identity, load_config
from miga_ray.engines import load_for
from miga_ray.render import JobRun
from miga_ray.storage import LocalStore, read_job
from toy_model import TOY, toy_latents

PROMPT = "a red circle moving over sand"


@pytest.fixture(scope="module")
def toy():
    return load_for(load_config(None, ["model.device=cpu", f"model.name={TOY}"]))


def small_config(**fields):
    overrides = ["model.device=cpu", f"model.name={TOY}", "sampler.num_levels=24", "sampler.miga.stage2_levels=3", "sampler.miga.reflect_after=4",
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
    assert record.config["identity"] == identity_hash(job_identity(PROMPT, cfg))
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
        JobRun(store, PROMPT, small_config(), toy, job_id="fixed").run(stop_after(10))
    changed = small_config(**{"sampler.miga.group": 1})
    with pytest.raises(ConfigError, match=r"job fixed holds another render \(sampler\.miga\.group: stored None, requested 1\).*--restart"):
        JobRun(store, PROMPT, changed, toy, job_id="fixed").run()
    result = JobRun(store, PROMPT, changed, toy, job_id="fixed", restart=True).run()
    assert result.resumed_from is None and read_job(store, result.job_id).status == "done"


OTHER = "a red circle moving over grass"


def test_default_ids_differ_for_every_output_affecting_change():
    cfg = small_config()
    ids = {job_id_for(PROMPT, cfg), job_id_for(OTHER, cfg), job_id_for(PROMPT + "!", cfg), job_id_for(PROMPT, small_config(seed=1)),
           job_id_for(PROMPT, small_config(frames=30)), job_id_for(PROMPT, small_config(**{"sampler.cfg_scale": 3.5})),
           job_id_for(PROMPT, small_config(negative_prompt="blurry"))}  # fmt: skip
    assert len(ids) == 7 and all(i.startswith("a-red-circle-moving-over-") for i in ids)
    assert job_id_for(PROMPT, cfg) == job_id_for(PROMPT, small_config(**{"checkpoint.every_latents": 5, "model.device": "cpu"}))
    long_prompt = "x" * 300 + " over sand"
    assert job_id_for(long_prompt, cfg) != job_id_for("x" * 300 + " over snow", cfg) and len(job_id_for(long_prompt, cfg)) <= 61


def test_a_job_holding_another_prompt_is_never_reused(tmp_path, toy):
    """Done, interrupted (job.json says running) or only a checkpoint left: another prompt under the id is refused."""
    store, cfg = LocalStore(tmp_path), small_config(frames=9)
    JobRun(store, PROMPT, cfg, toy, job_id="shared").run()
    with pytest.raises(ConfigError, match=r"prompt: stored 'a red circle moving over sand', requested 'a red circle moving over grass'"):
        JobRun(store, OTHER, cfg, toy, job_id="shared").run()
    with pytest.raises(Stop):
        JobRun(store, PROMPT, small_config(), toy, job_id="cut").run(stop_after(10))
    (tmp_path / "cut" / "job.json").unlink()  # a kill before job.json: only the checkpoint knows the identity
    with pytest.raises(ConfigError, match="checkpoint was made for another prompt"):
        JobRun(store, OTHER, small_config(), toy, job_id="cut").run()
    assert not (tmp_path / "cut" / "job.json").exists(), "a refused run wrote to the job"
    assert len(list((tmp_path / "shared" / "latents").glob("*"))) == toy_latents(9), "nothing was overwritten"


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
    store, cfg = LocalStore(tmp_path), small_config(frames=61, **{"sampler.kind": "fifo"})  # FIFO: model work remains after frame 8
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

    store, cfg = LocalStore(tmp_path), small_config()
    with pytest.raises(KeyboardInterrupt):
        JobRun(store, PROMPT, cfg, toy).run(interrupt)
    record = read_job(store, job_id_for(PROMPT, cfg))
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


def set_running(job: Path) -> None:
    """Rewrite job.json as a run killed before its last write leaves it: status running."""
    record = json.loads((job / "job.json").read_text())
    (job / "job.json").write_text(json.dumps(record | {"status": "running", "frames_done": 16}))


@pytest.mark.parametrize("point", ["after-playlist-end", "before-playlist-end", "before-mp4"])
def test_a_kill_in_the_finishing_window_finishes_as_done_on_rerun(tmp_path, toy, point):
    """Killed after the video was (partly) finished but before job.json said done: the rerun completes the job."""
    cfg = small_config(frames=21)
    store = LocalStore(tmp_path)
    first = JobRun(store, PROMPT, cfg, toy).run()
    job = tmp_path / first.job_id
    reference = decoded_frames(job / "video.mp4")
    set_running(job)
    playlist = (job / "video.m3u8").read_text()
    if point != "after-playlist-end":
        (job / "video.m3u8").write_text(playlist.replace("#EXT-X-ENDLIST\n", ""))
    if point == "before-mp4":
        (job / "video.mp4").unlink()
    again = JobRun(store, PROMPT, cfg, toy).run()
    assert not again.skipped and again.resumed_from is not None
    record = read_job(store, first.job_id)
    assert record.status == "done" and record.frames_done == 21
    assert (job / "video.m3u8").read_text() == playlist
    video = decoded_frames(job / "video.mp4")
    assert video.shape == reference.shape and np.abs(video.astype(int) - reference.astype(int)).mean() < 1.0


def test_job_json_tells_the_frames_on_disk_after_a_failure_and_temp_leftovers_go(tmp_path, toy):
    """A rerun that fails at once still reports the frames its segments hold; killed writes' temp files are removed."""
    import subprocess
    import tempfile

    cfg = small_config(frames=41)
    store = LocalStore(tmp_path)
    with pytest.raises(Stop):
        JobRun(store, PROMPT, cfg, toy, job_id="j").run(stop_after(30))
    on_disk = sum(round(float(line[8:].split(",")[0]) * 8) for line in (tmp_path / "j" / "video.m3u8").read_text().splitlines() if line.startswith("#EXTINF:"))
    assert on_disk >= 16
    (tmp_path / "j" / "segments" / ".tmp-killed").write_bytes(b"half a segment")
    (tmp_path / "j" / ".tmp-job").write_bytes(b"{")
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = Path(tempfile.gettempdir()) / f"miga-mp4-{dead.pid}-test"
    stale.mkdir()
    (stale / "video.mp4").write_bytes(b"half an mp4")
    with pytest.raises(Stop):
        JobRun(store, PROMPT, cfg, toy, job_id="j").run(stop_after(0))
    record = read_job(store, "j")
    assert record.status == "failed" and record.frames_done == on_disk
    assert not list((tmp_path / "j").rglob(".tmp-*")) and not stale.exists()


def cut_render(tmp_path, toy, frames: int = 30):
    """A 41-frame job stopped after ``frames`` frames; returns (store, config, job directory)."""
    cfg = small_config(frames=41)
    store = LocalStore(tmp_path / "cut")
    with pytest.raises(Stop):
        JobRun(store, PROMPT, cfg, toy, job_id="j").run(stop_after(frames))
    return store, cfg, tmp_path / "cut" / "j"


@pytest.mark.parametrize("damage", ["deleted", "pickled", "valid-but-wrong"])
def test_a_damaged_stored_latent_fails_the_job_naming_it(tmp_path, toy, damage):
    """Latent 1 sits before every checkpoint of the job: no checkpoint can rebuild it, so the rerun exits naming it."""
    import pickle

    from safetensors.torch import save as save_safetensors

    from miga_ray.storage import DamagedError

    store, cfg, job = cut_render(tmp_path, toy)
    latent = job / "latents" / "000001.safetensors"
    if damage == "deleted":
        latent.unlink()
    elif damage == "pickled":
        latent.write_bytes(pickle.dumps({"latent": [0.0] * 16}))
    else:
        latent.write_bytes(save_safetensors({"latent": torch.zeros(4, 8, 8)}, metadata={"index": "1"}))
    with pytest.raises(DamagedError, match=r"latent 1 \(j/latents/000001.safetensors\) (is missing|differs from the one written)"):
        JobRun(store, PROMPT, cfg, toy, job_id="j").run()
    record = read_job(store, "j")
    assert record.status == "failed" and "latent 1" in record.error and not (job / "video.mp4").exists()


def test_a_truncated_segment_is_decoded_again_from_the_stored_latents(tmp_path, toy):
    whole = JobRun(LocalStore(tmp_path / "whole"), PROMPT, small_config(frames=41), toy, job_id="j").run()
    reference = decoded_frames(tmp_path / "whole" / "j" / "video.mp4")
    store, cfg, job = cut_render(tmp_path, toy)
    segment = job / "segments" / "00000.ts"
    segment.write_bytes(segment.read_bytes()[: segment.stat().st_size // 3])
    result = JobRun(store, PROMPT, cfg, toy, job_id="j").run()
    assert result.record.status == "done" and result.record.metrics["repaired_from_segment"] == 0
    video = decoded_frames(job / "video.mp4")
    assert whole.record.metrics["repaired_from_segment"] is None
    assert video.shape == reference.shape == (41, 64, 64, 3) and np.abs(video.astype(int) - reference.astype(int)).mean() < 1.0


@pytest.mark.parametrize("damage", ["segment", "mp4"])
def test_a_done_job_with_a_damaged_video_is_repaired_not_reported_done(tmp_path, toy, damage):
    """Rerunning a job recorded done verifies it first: a damaged segment or MP4 is rebuilt, the video equals the original."""
    store, cfg = LocalStore(tmp_path), small_config(frames=41)
    first = JobRun(store, PROMPT, cfg, toy, job_id="j").run()
    reference = decoded_frames(tmp_path / "j" / "video.mp4")
    assert (tmp_path / "j" / "latents.sha256").read_text().count("latents/") == toy_latents(41)
    assert JobRun(store, PROMPT, cfg, toy, job_id="j").run().skipped, "an intact done job is not rendered again"
    target = tmp_path / "j" / ("segments/00001.ts" if damage == "segment" else "video.mp4")
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    again = JobRun(store, PROMPT, cfg, toy, job_id="j").run()
    assert not again.skipped and again.record.status == "done" and first.record.status == "done"
    video = decoded_frames(tmp_path / "j" / "video.mp4")
    assert video.shape == reference.shape and np.abs(video.astype(int) - reference.astype(int)).mean() < 1.0


def test_a_second_writer_of_a_job_is_refused_naming_the_holder(tmp_path, toy):
    """While one run holds the job, another (here with another config, same id) exits 2 naming it; the first finishes alone."""
    store, cfg = LocalStore(tmp_path), small_config(frames=21)
    other = small_config(frames=21, **{"sampler.cfg_scale": 3.0})
    refused = []

    def second_writer(progress):
        if not refused:
            with pytest.raises(ConfigError, match=r"job j is being written by [^ ]+ \(pid \d+ on") as info:
                JobRun(store, PROMPT, other, toy, job_id="j").run()
            refused.append(str(info.value))

    result = JobRun(store, PROMPT, cfg, toy, job_id="j").run(second_writer)
    assert refused and result.record.status == "done"
    assert read_job(store, "j").config["identity"] == identity_hash(job_identity(PROMPT, cfg))
    assert not (tmp_path / "j" / "lease").exists() or not list((tmp_path / "j" / "lease").iterdir()), "the lease is released"


@pytest.mark.parametrize("sampler", ["miga", "fifo"])
def test_a_checkpoint_made_while_the_queue_fills_resumes_to_the_same_latents(tmp_path, toy, monkeypatch, sampler):
    """Checkpoints come on time even before the first clean latent; a crash then resumes from one, not from scratch."""
    cfg = small_config(frames=21, **{"sampler.kind": sampler, "checkpoint.every_seconds": 0.001, "checkpoint.every_latents": 1000})
    whole = JobRun(LocalStore(tmp_path / "whole"), PROMPT, cfg, toy, job_id="j").run()
    original = JobRun._checkpoint
    calls_at_crash = []

    def crash_in_the_fill(self, ckpts, engine, uploader, record):
        original(self, ckpts, engine, uploader, record)
        if engine.emitted == 0 and engine.counters.total_calls >= 20:
            calls_at_crash.append(engine.counters.total_calls)
            raise Stop("in the fill")

    store = LocalStore(tmp_path / "cut")
    monkeypatch.setattr(JobRun, "_checkpoint", crash_in_the_fill)
    with pytest.raises(Stop):
        JobRun(store, PROMPT, cfg, toy, job_id="j").run()
    monkeypatch.setattr(JobRun, "_checkpoint", original)
    assert not list((tmp_path / "cut" / "j").glob("latents/*")), "the crash came before any clean latent"
    resumed = JobRun(store, PROMPT, cfg, toy, job_id="j").run()
    assert resumed.resumed_from == 0 and calls_at_crash
    total = sum(whole.record.metrics["model_calls"]["calls"].values())
    assert sum(resumed.record.metrics["model_calls"]["calls"].values()) == total
    for i in range(toy_latents(21)):
        name = f"latents/{i:06d}.safetensors"
        assert (tmp_path / "whole" / "j" / name).read_bytes() == (tmp_path / "cut" / "j" / name).read_bytes(), name


def test_a_run_may_wait_out_a_live_lease(tmp_path, toy):
    """A holder on another node (its pid means nothing here) is respected; a batch worker waits for its expiry."""
    import time

    lease = tmp_path / "j" / "lease" / "0000000000.json"
    lease.parent.mkdir(parents=True)
    lease.write_text(json.dumps({"holder": "node-b:7:abc", "host": "node-b", "pid": 7, "expires": time.time() + 1.5}))
    store, cfg = LocalStore(tmp_path), small_config(frames=9)
    with pytest.raises(ConfigError, match=r"job j is being written by node-b:7:abc \(pid 7 on node-b\)"):
        JobRun(store, PROMPT, cfg, toy, job_id="j").run()
    started = time.monotonic()
    result = JobRun(store, PROMPT, cfg, toy, job_id="j", lease_ttl_s=2.0, lease_wait_s=30.0).run()
    assert result.record.status == "done" and time.monotonic() - started >= 0.5


def test_a_done_job_loses_the_temp_files_of_a_write_killed_after_it(tmp_path, toy):
    """A kill during the evaluation's job.json write leaves a temp file; the "already done" rerun removes it too."""
    store, cfg = LocalStore(tmp_path), small_config(frames=5)
    JobRun(store, PROMPT, cfg, toy, job_id="j").run()
    (tmp_path / "j" / ".tmp-killed-evaluation").write_bytes(b'{"job_id": "j", "metr')
    assert JobRun(store, PROMPT, cfg, toy, job_id="j").run().skipped
    assert not list((tmp_path / "j").rglob(".tmp-*"))
