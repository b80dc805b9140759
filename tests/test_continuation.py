"""Continuations on the shipped toy model: a user's video continued (``--init-video``), a finished job
extended in place (``miga extend``), their bad input, identity and exact resume."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from miga_ray.cli import app
from miga_ray.config import job_id_for, load_config
from miga_ray.continuation import Extension, InitVideo
from miga_ray.engines import load_for
from miga_ray.models.toy_world.render import render_clip
from miga_ray.models.toy_world.world import parse_prompt
from miga_ray.render import JobRun
from miga_ray.storage import LocalStore, read_job
from miga_ray.storage.clips import decode_clip, fit_frames, probe_clip
from test_render import PROMPT, Stop, decoded_frames, small_config, stop_after
from toy_model import TOY

runner = CliRunner()
SMALL = [f"--set={s}" for s in ("model.device=cpu", "sampler.num_levels=16", "sampler.miga.stage2_levels=3", "sampler.miga.reflect_after=4", "video.fps=8")]


@pytest.fixture(scope="module")
def toy():
    return load_for(load_config(None, ["model.device=cpu", f"model.name={TOY}"]))


def write_mp4(path: Path, frames: np.ndarray, fps: int = 8) -> Path:
    """A real H.264 file of ``frames`` (uint8 [n, H, W, 3])."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    """11 frames of a red circle over sand at 80x96 (the toy model renders 64x64, so it is scaled)."""
    frames = render_clip(parse_prompt(PROMPT), 11, 80, 96, seed=3)
    return write_mp4(tmp_path_factory.mktemp("clip") / "clip.mp4", frames)


def pngs(job: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((job / "frames").glob("*.png"))]


def test_reading_a_clip_fits_it_to_the_render(clip_file, tmp_path):
    clip = probe_clip(clip_file, max_frames=100)
    assert (clip.count, clip.height, clip.width) == (11, 80, 96) and clip.sha256 == hashlib.sha256(clip_file.read_bytes()).hexdigest()
    assert probe_clip(clip_file, max_frames=4).count == 4
    whole = decode_clip(clip, 80, 96, 1)  # the render's size, a step of 1: as it is
    assert whole.shape == (11, 80, 96, 3)
    fitted = decode_clip(clip, 64, 64, 4)
    assert fitted.shape == (9, 64, 64, 3)  # 1 + 4k frames, scaled while decoded
    assert np.abs(fitted.astype(int) - fit_frames(whole, 64, 64, 4)).mean() < 3  # as scaling the decoded frames would
    Image.fromarray(whole[0]).save(tmp_path / "still.png")
    still = probe_clip(tmp_path / "still.png", max_frames=100)
    assert still.count == 1 and np.array_equal(decode_clip(still, 80, 96, 4), whole[:1])
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="must be a video PyAV decodes or an image"):
        probe_clip(tmp_path / "bad.mp4", 10)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="must be a video PyAV decodes or an image"):
        probe_clip(tmp_path / "bad.png", 10)
    with pytest.raises(ValueError, match="no such file"):
        probe_clip(tmp_path / "missing.mp4", 10)


@pytest.mark.parametrize("sampler", ["miga", "fifo"])
def test_an_init_video_begins_the_output_and_the_render_continues_it(tmp_path, toy, clip_file, sampler):
    cfg = small_config(**{"sampler.kind": sampler, "frames": 21, "video.png_frames": "true"})
    start = InitVideo(probe_clip(clip_file, cfg.frames))
    store = LocalStore(tmp_path / "out")
    result = JobRun(store, PROMPT, cfg, toy, start=start).run()
    job = tmp_path / "out" / result.job_id
    fitted = decode_clip(start.clip, 64, 64, toy.encode_step)
    encoded = toy.encode_video(torch.from_numpy(fitted))
    frames = np.stack([np.asarray(Image.open(job / "frames" / f"{i:06d}.png")) for i in range(21)])
    assert np.array_equal(frames[: len(fitted)], fitted), "the video begins with the user's own frames"
    decoder = toy.decoder()  # every stored latent through the VAE, one at a time as a render decodes them
    decoded = np.concatenate([decoder.push(store_latent(job, i)[None, :, None])[0].numpy() for i in range(len(list((job / "latents").iterdir())))])
    assert not np.array_equal(decoded[: len(fitted)], fitted), "the VAE does not reproduce them: the test can fail"
    assert np.array_equal(frames[len(fitted) :], decoded[len(fitted) :]), "generated frames follow as decoded"
    assert decoded_frames(job / "video.mp4").shape == (21, 64, 64, 3)
    assert torch.equal(store_latent(job, 3), encoded[0, :, 3])
    record = read_job(store, result.job_id)
    assert record.status == "done" and record.config["start"] == {"init_video_sha256": start.clip.sha256}
    # another clip, another job; the same render without a clip, another job
    plain = job_id_for(PROMPT, cfg)
    other = job_id_for(PROMPT, cfg, {"init_video_sha256": "0" * 64})
    assert len({result.job_id, plain, other}) == 3
    # interrupted and run again: the same frames
    cut = LocalStore(tmp_path / "cut")
    for frames in (len(fitted), 15):  # before the first new latent (no checkpoint yet), then later
        with pytest.raises(Stop):
            JobRun(cut, PROMPT, cfg, toy, start=start).run(stop_after(frames))
    JobRun(cut, PROMPT, cfg, toy, start=start).run()
    assert pngs(tmp_path / "cut" / result.job_id) == pngs(job)


def store_latent(job: Path, index: int) -> torch.Tensor:
    from safetensors.torch import load

    return load((job / "latents" / f"{index:06d}.safetensors").read_bytes())["latent"]


def test_init_video_bad_input_exits_2_and_writes_nothing(tmp_path, clip_file):
    out = tmp_path / "out"
    (tmp_path / "bad.mp4").write_bytes(b"garbage")
    cases = [
        (["--init-video", str(tmp_path / "bad.mp4")], "--init-video"),
        (["--init-video", str(tmp_path / "none.mp4")], "no such file"),
        (["--init-video", str(clip_file), "--frames", "11"], "--frames: must exceed the frames of --init-video"),
    ]
    for args, needle in cases:
        result = runner.invoke(app, ["render", PROMPT, "--out", str(out), "--frames", "30", *SMALL, *args])
        assert result.exit_code == 2 and needle in " ".join(result.output.split()), result.output
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("sampler", ["miga", "fifo"])
def test_extend_continues_a_finished_job_in_place_and_resumes_exactly(tmp_path, toy, sampler):
    cfg = small_config(**{"sampler.kind": sampler, "frames": 17, "video.png_frames": "true"})
    base = JobRun(LocalStore(tmp_path / "a"), PROMPT, cfg, toy).run()
    job_a = tmp_path / "a" / base.job_id
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    latents_before = {p.name: p.read_bytes() for p in (job_a / "latents").iterdir()}
    segments_before = sorted((job_a / "segments").iterdir())
    assert [len(decoded_frames(p)) for p in segments_before] == [16, 1]  # 2 s segments at video.fps 8
    full_before = {p.name: p.read_bytes() for p in segments_before[:-1]}
    frames_before = pngs(job_a)
    identity = read_job(LocalStore(tmp_path / "a"), base.job_id).config["identity"]

    result = runner.invoke(app, ["extend", str(job_a), "--frames", "33"])
    assert result.exit_code == 0, result.output
    record = read_job(LocalStore(tmp_path / "a"), base.job_id)
    assert record.status == "done" and record.frames_done == record.frames_total == 33
    assert record.config["start"] == {"extends": identity, "from_frames": 17} and record.config["render"]["frames"] == 33
    # the first part as it was: its latents and full segments byte for byte, its frames; the partial last
    # segment is written again, whole, with the frames that follow
    assert all((job_a / "latents" / n).read_bytes() == b for n, b in latents_before.items())
    assert all((job_a / "segments" / n).read_bytes() == b for n, b in full_before.items())
    assert pngs(job_a)[:17] == frames_before and len(pngs(job_a)) == 33
    assert decoded_frames(job_a / "video.mp4").shape == (33, 64, 64, 3)
    playlist = (job_a / "video.m3u8").read_text()
    assert playlist.count("#EXTINF") == len(list((job_a / "segments").glob("*.ts"))) == 3 and "#EXT-X-ENDLIST" in playlist
    assert len((job_a / "latents.sha256").read_text().splitlines()) == 33
    again = runner.invoke(app, ["extend", str(job_a), "--frames", "33"])
    assert again.exit_code == 0 and "already done (33 frames)" in again.output

    # the copy: interrupted during the extension, run again: the same video as the uninterrupted one
    store_b = LocalStore(tmp_path / "b")
    start = Extension(identity, 17)
    longer = small_config(**{"sampler.kind": sampler, "frames": 33, "video.png_frames": "true"})
    for frames in (17, 27):  # before the first new latent (no checkpoint of the extension yet), then later
        with pytest.raises(Stop):
            JobRun(store_b, PROMPT, longer, toy, job_id=base.job_id, start=start).run(stop_after(frames))
    assert read_job(store_b, base.job_id).config["start"] == {"extends": identity, "from_frames": 17}
    resumed = runner.invoke(app, ["extend", str(tmp_path / "b" / base.job_id), "--frames", "33"])
    assert resumed.exit_code == 0, resumed.output
    assert pngs(tmp_path / "b" / base.job_id) == pngs(job_a)
    assert (tmp_path / "b" / base.job_id / "latents.sha256").read_bytes() == (job_a / "latents.sha256").read_bytes()


def test_extend_refuses_what_it_cannot_extend(tmp_path, toy):
    store = LocalStore(tmp_path)
    cfg = small_config(frames=9)
    with pytest.raises(Stop):
        JobRun(store, PROMPT, cfg, toy, job_id="cut").run(stop_after(3))
    done = JobRun(store, PROMPT, cfg, toy, job_id="done").run()
    cases = [
        ([str(tmp_path / "cut"), "--frames", "20"], "job cut is failed, not done"),
        ([str(tmp_path / "done"), "--frames", "9"], "--frames: must exceed the job's 9 frames (got 9)"),
        ([str(tmp_path / "nothing"), "--frames", "20"], "no job there"),
    ]
    for args, needle in cases:
        result = runner.invoke(app, ["extend", *args])
        assert result.exit_code == 2 and needle in " ".join(result.output.split()), result.output
    assert read_job(store, done.job_id).frames_total == 9 and not (tmp_path / "nothing").exists()
    # a damaged latent of the finished job: the extension fails naming it, the job stays as it was
    (tmp_path / "done" / "latents" / "000008.safetensors").write_bytes(b"x")
    result = runner.invoke(app, ["extend", str(tmp_path / "done"), "--frames", "20"])
    assert result.exit_code == 1 and "latent 8" in result.output and read_job(store, "done").frames_total == 9


def test_extend_a_job_on_s3(s3_store, s3_env, monkeypatch, toy):
    """``miga extend s3://bucket/prefix/job`` on a real S3 server (SeaweedFS)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)
    cfg = small_config(frames=9)
    JobRun(s3_store, PROMPT, cfg, toy, job_id="job").run()
    uri = f"s3://{s3_env.bucket}/{s3_store.prefix}/job"
    result = runner.invoke(app, ["extend", uri, "--frames", "15"])
    assert result.exit_code == 0, result.output
    record = read_job(s3_store, "job")
    assert record.status == "done" and record.frames_total == 15 and record.config["start"]["from_frames"] == 9
    assert len(s3_store.get_bytes("job/latents.sha256").decode().splitlines()) == 15


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says ``width`` x ``height`` (its pixel data is a few bytes: only a decoder would notice)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("size", [(30000, 30000), (5000, 4000)])
def test_an_init_image_too_large_exits_2_naming_the_limit_and_writes_nothing(tmp_path, size):
    out = tmp_path / "out"
    big = png_header(tmp_path / "big.png", *size)
    result = runner.invoke(app, ["render", PROMPT, "--out", str(out), "--frames", "30", *SMALL, "--init-video", str(big)])
    assert result.exit_code == 2 and "its frames must hold at most 16,777,216 pixels per frame (4096x4096)" in " ".join(result.output.split())
    assert "Traceback" not in result.output and not out.exists()


LARGE_CLIP = """
import resource, sys
import av, numpy as np
from miga_ray.storage.clips import decode_clip, probe_clip
with av.open(sys.argv[1], "w") as container:  # 200 frames of 2048x2048 (2.4 GiB as RGB)
    stream = container.add_stream("libx264", rate=8, options={"preset": "ultrafast", "crf": "40"})
    stream.width = stream.height = 2048
    stream.pix_fmt = "yuv420p"
    frame = av.VideoFrame.from_ndarray(np.full((2048, 2048, 3), 90, np.uint8), format="rgb24").reformat(format="yuv420p")
    for i in range(200):
        frame.pts = i
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
clip = probe_clip(sys.argv[1], 201)
frames = decode_clip(clip, 64, 64, 4)
assert frames.shape[1:] == (64, 64, 3)
print(clip.count, len(frames), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_a_large_clip_is_decoded_frame_by_frame_within_its_memory_bound(tmp_path):
    """200 frames of 2048x2048: probed, then decoded and scaled one frame at a time; peak memory grows by far
    less than the clip's 2.4 GiB at its own size (the bound: one source frame and the fitted frames)."""
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", LARGE_CLIP, str(tmp_path / "large.mp4")], capture_output=True, text=True,
                          check=False, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    count, frames, grown_mib = map(int, done.stdout.split())
    assert (count, frames) == (200, 197) and grown_mib < 200, done.stdout  # 1 + 4k frames for a step of 4
