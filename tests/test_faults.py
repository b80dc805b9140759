"""Fault tests against the real S3 server (SeaweedFS on loopback) with real ``miga render`` processes.

SIGKILL at seeded random points then the same command again, a storage outage in the middle of a
render, wrong credentials and an unwritable output directory. Every resumed or delayed render must
equal an uninterrupted one: clean latents and lossless PNG frames byte for byte, the H.264 video
frame for frame within a small mean difference (x264 may encode a re-encoded segment differently).

Kills are triggered by a new latent appearing in the store; checkpoints come every 3 latents, so
most kills land between checkpoints, with later latents, segments and frames already uploaded.
``MIGA_TEST_FAULT_SEED`` picks other kill points.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import av
import boto3
import numpy as np
import pytest

from miga_ray.config import job_id_for, load_config
from miga_ray.storage import S3Store, read_job
from toy_model import TOY, toy_frames

if TYPE_CHECKING:
    from conftest import SeaweedServer

PROMPT = "a red circle moving over sand"
LATENTS = 21
FRAMES = toy_frames(LATENTS)
FPS = 8  # 16-frame segments, the last one short
SEED = int(os.environ.get("MIGA_TEST_FAULT_SEED", "20261121"))
SETTINGS = [
    "model.device=cpu", f"model.name={TOY}", "sampler.num_levels=16", "sampler.miga.stage2_levels=3",
    "sampler.miga.reflect_after=4", "checkpoint.every_latents=3", f"video.fps={FPS}", "video.png_frames=true",
]  # fmt: skip
JOB = job_id_for(PROMPT, load_config(None, SETTINGS, frames=FRAMES))
RUN_TIMEOUT_S = 240.0


def render_args(out: str) -> list[str]:
    """The ``miga render`` command line of every render in this file, writing to ``out``."""
    sets = [arg for s in SETTINGS for arg in ("--set", s)]
    return [sys.executable, "-m", "miga_ray.cli", "render", PROMPT, "--out", out, "--frames", str(FRAMES), *sets]


def base_env() -> dict[str, str]:
    """This process's environment without AWS settings, with one torch thread per render."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return env | {"OMP_NUM_THREADS": "1"}  # two torch threads on a busy 2-core machine are ~20x slower than one


def cli_env(server: SeaweedServer, **changes: str | None) -> dict[str, str]:
    """``base_env`` with the test identity's AWS settings (``None`` removes one)."""
    env = base_env() | {
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_ENDPOINT_URL": server.endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@dataclass
class Render:
    """One ``miga render`` process; its output goes to a log file (a full pipe would stall it)."""

    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, out: str, env: dict[str, str], log: Path, args: list[str] | None = None) -> Render:
        """Start ``render_args(out)`` (or ``args``) with ``env``, appending its output to ``log``."""
        with log.open("ab") as sink:
            proc = subprocess.Popen(args or render_args(out), env=env, stdout=sink, stderr=subprocess.STDOUT)
        return cls(proc, log)

    @property
    def output(self) -> str:
        """Everything the process has printed so far (stdout and stderr)."""
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None

    def wait(self, timeout_s: float = RUN_TIMEOUT_S) -> int:
        """Exit code; a render still running after ``timeout_s`` is killed and fails the test."""
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"render ran past {timeout_s}s:\n{self.output[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def wait_until(self, condition: Callable[[], bool], timeout_s: float = RUN_TIMEOUT_S) -> None:
        """Poll ``condition`` (bounded) while the render runs; fail if it ends or times out first."""
        give_up = time.monotonic() + timeout_s
        while not condition():
            if not self.alive():
                pytest.fail(f"render exited ({self.proc.returncode}) before the awaited point:\n{self.output[-3000:]}")
            if time.monotonic() > give_up:
                self.kill()
                pytest.fail(f"awaited point not reached in {timeout_s}s:\n{self.output[-3000:]}")
            time.sleep(0.05)


def s3_reader(server: SeaweedServer, prefix: str) -> S3Store:
    """A store over ``s3://<bucket>/<prefix>`` for this process (credentials from ``s3_env``)."""
    return S3Store(server.bucket, prefix, endpoint_url=server.endpoint, path_style=True, max_attempts=2, retry_deadline_s=10.0)


def new_prefix(name: str) -> str:
    """A fresh prefix in the shared bucket, so tests never see each other's objects."""
    return f"{name}-{uuid.uuid4().hex[:10]}"


def latent_key(index: int) -> str:
    """Key of the job's clean latent ``index``, relative to the output prefix."""
    return f"{JOB}/latents/{index:06d}.safetensors"


def stored_latents(store: S3Store) -> list[int]:
    """Indices of the job's stored clean latents."""
    return [int(k.rsplit("/", 1)[1].split(".")[0]) for k in store.list(f"{JOB}/latents/")]


def latents_modified(server: SeaweedServer, prefix: str) -> dict[str, datetime]:
    """When the server last wrote each of the job's latents (whole seconds)."""
    client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=server.bucket, Prefix=f"{prefix}/{JOB}/latents/")
    return {o["Key"]: o["LastModified"] for page in pages for o in page.get("Contents", ())}


def objects(store: S3Store, folder: str) -> dict[str, bytes]:
    """Every object under ``<job>/<folder>/``, by key."""
    return {key: store.get_bytes(key) for key in store.list(f"{JOB}/{folder}/")}


def decode(data: bytes) -> np.ndarray:
    """All frames of an encoded video (MP4 or MPEG-TS) as uint8 ``[n, H, W, 3]``."""
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def playlist_entries(text: str) -> list[tuple[str, int]]:
    """``(segment name, frame count)`` for every segment the HLS playlist lists, in order."""
    lines = text.splitlines()
    return [(uri, round(float(line[8:].split(",")[0]) * FPS)) for line, uri in zip(lines, lines[1:]) if line.startswith("#EXTINF:")]


def assert_segments_complete(store: S3Store) -> None:
    """The playlist is finished and lists consecutive segments, each holding the frames it claims, summing to FRAMES."""
    text = store.get_bytes(f"{JOB}/video.m3u8").decode()
    entries = playlist_entries(text)
    assert text.rstrip().endswith("#EXT-X-ENDLIST")
    assert [name for name, _ in entries] == [f"segments/{i:05d}.ts" for i in range(len(entries))], "a segment missing or repeated"
    assert sum(n for _, n in entries) == FRAMES
    assert sorted(store.list(f"{JOB}/segments/")) == [f"{JOB}/{name}" for name, _ in entries], "stray segment objects"
    for name, n in entries:
        assert decode(store.get_bytes(f"{JOB}/{name}")).shape[0] == n, f"{name} does not hold {n} frames"


def assert_same_render(got: S3Store, want: S3Store) -> None:
    """Latents and PNG frames identical, video the same length and nearly equal, job done, segments whole."""
    latents, reference_latents = objects(got, "latents"), objects(want, "latents")
    assert len(reference_latents) == LATENTS and sorted(latents) == sorted(reference_latents)
    differing = [k for k in reference_latents if latents[k] != reference_latents[k]]
    assert not differing, f"latents differ from the uninterrupted run: {differing}"
    frames, reference_frames = objects(got, "frames"), objects(want, "frames")
    assert len(reference_frames) == FRAMES and sorted(frames) == sorted(reference_frames)
    differing = [k for k in reference_frames if frames[k] != reference_frames[k]]
    assert not differing, f"PNG frames differ from the uninterrupted run: {differing}"
    video, reference_video = decode(got.get_bytes(f"{JOB}/video.mp4")), decode(want.get_bytes(f"{JOB}/video.mp4"))
    assert video.shape == reference_video.shape == (FRAMES, 64, 64, 3)
    assert np.abs(video.astype(np.int16) - reference_video.astype(np.int16)).mean() < 1.0
    assert_segments_complete(got)
    record = read_job(got, JOB)
    assert record is not None and record.status == "done" and record.frames_done == FRAMES


@pytest.fixture(scope="module")
def reference(seaweedfs: SeaweedServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Prefix of one uninterrupted render, the result every faulty render must equal."""
    prefix = new_prefix("reference")
    log = tmp_path_factory.mktemp("reference") / "render.log"
    render = Render.start(f"s3://{seaweedfs.bucket}/{prefix}", cli_env(seaweedfs), log)
    assert render.wait() == 0, render.output[-3000:]
    return prefix


@dataclass(frozen=True)
class KillPoint:
    """Kill when latent ``latent`` (or a later new one) is stored, or ``seconds`` after the start."""

    latent: int | None = None
    seconds: float | None = None


def kill_plan(rng: random.Random) -> list[KillPoint]:
    """Five kills at distinct, increasing stored-latent counts and one at a random time, in a random slot."""
    latents = sorted(2 * k for k in rng.sample(range(1, (LATENTS - 1) // 2), 5))
    plan = [KillPoint(latent=k) for k in latents]
    plan.insert(rng.randrange(len(plan) + 1), KillPoint(seconds=round(rng.uniform(2.0, 10.0), 2)))
    return plan


def kill_at(point: KillPoint, store: S3Store, out: str, env: dict[str, str], log: Path) -> str:
    """Start the render, SIGKILL it at ``point``; returns what the kill interrupted, for the report (or why none was made)."""
    done = stored_latents(store)
    if point.latent is not None and len(done) == LATENTS:  # a loaded machine let the last run store every latent before its kill
        return f"no kill at latent {point.latent}: all {LATENTS} latents already stored"
    render = Render.start(out, env, log)
    if point.seconds is not None:
        give_up = time.monotonic() + point.seconds
        render.wait_until(lambda: time.monotonic() >= give_up)
        what = f"{point.seconds}s after start"
    else:
        target = max([point.latent] + [i + 1 for i in done])  # a latent this run has to make
        assert target < LATENTS, f"kill plan ran past the end: {done}"
        render.wait_until(lambda: store.exists(latent_key(target)))
        what = f"latent {target} stored"
    assert render.alive()
    render.kill()
    assert render.proc.returncode == -signal.SIGKILL
    return what


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_render(
    s3_env: SeaweedServer, reference: str, tmp_path: Path
) -> None:
    """Six SIGKILLs (five at new stored latents, one at a random time), then the same command to the end."""
    prefix = new_prefix("sigkill")
    out, env, store = f"s3://{s3_env.bucket}/{prefix}", cli_env(s3_env), s3_reader(s3_env, prefix)
    plan = kill_plan(random.Random(SEED))
    assert len(plan) >= 5
    kills = [kill_at(point, store, out, env, tmp_path / "render.log") for point in plan]
    print(f"SIGKILLed at: {'; '.join(kills)}")
    assert read_job(store, JOB).status == "running", "a SIGKILLed render cannot record its failure"
    final = Render.start(out, env, tmp_path / "render.log")
    assert final.wait() == 0, final.output[-3000:]
    record = read_job(store, JOB)
    assert record.metrics["resumed_from_latent"], f"the last run did not resume (kills: {kills})"
    assert_same_render(store, s3_reader(s3_env, reference))


def test_storage_outage_mid_render_completes_equal(
    seaweedfs_control: SeaweedServer, s3_env: SeaweedServer, reference: str, tmp_path: Path
) -> None:
    """The server is stopped for 5 s once latent 2 is stored; the render waits, then finishes in one go."""
    server = seaweedfs_control
    prefix = new_prefix("outage")
    store = s3_reader(server, prefix)
    render = Render.start(f"s3://{server.bucket}/{prefix}", cli_env(server), tmp_path / "render.log")
    render.wait_until(lambda: store.exists(latent_key(2)))
    server.stop()
    assert render.alive(), "the render must still be running when storage goes away"
    time.sleep(5.0)  # the outage itself
    assert render.alive(), "the render must wait for storage, not fail"
    restarted = datetime.now(UTC).replace(microsecond=0)
    server.start()
    assert render.wait() == 0, render.output[-3000:]
    written = latents_modified(server, prefix)
    assert min(written.values()) < restarted <= max(written.values()), "latents were not written on both sides of the outage"
    assert read_job(store, JOB).metrics["resumed_from_latent"] is None, "rendered in one go, without a restart"
    assert_same_render(store, s3_reader(server, reference))


@pytest.mark.parametrize(
    "changes,cause",
    [
        ({"AWS_SECRET_ACCESS_KEY": "wrong-secret-0000"}, "access denied"),
        ({"AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY000"}, "access denied"),
        ({"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}, "no AWS credentials"),
    ],
    ids=["wrong-secret", "unknown-key-id", "no-credentials"],
)
def test_bad_credentials_exit_2_before_rendering(
    s3_env: SeaweedServer, tmp_path: Path, changes: dict[str, str | None], cause: str
) -> None:
    """Exit 2 within seconds, naming bucket, endpoint and cause; no model loaded, nothing written."""
    prefix = new_prefix("badcreds")
    started = time.monotonic()
    render = Render.start(f"s3://{s3_env.bucket}/{prefix}", cli_env(s3_env, **changes), tmp_path / "render.log")
    code = render.wait(60)
    elapsed = time.monotonic() - started
    message = render.output
    assert code == 2, message
    assert f"bucket '{s3_env.bucket}'" in message and s3_env.endpoint in message and cause in message, message
    assert "Loading weights" not in message, "the model was loaded before the store was checked"
    assert s3_reader(s3_env, prefix).list("") == [], "objects were written"
    assert elapsed < 30.0, f"took {elapsed:.1f}s to report bad credentials"


def read_only_mount_args(directory: Path, out: Path) -> list[str] | None:
    """``miga render`` inside a new mount namespace where ``directory`` is a read-only bind mount (None: no namespaces)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    probe = subprocess.run([unshare, "-m", "sh", "-c", script, "sh", str(directory), "true"], capture_output=True)
    if probe.returncode != 0:
        return None
    return [unshare, "-m", "sh", "-c", script, "sh", str(directory), *render_args(str(out))]


def test_output_under_a_regular_file_exits_2(tmp_path: Path) -> None:
    """Root ignores permission bits, so the unwritable directory is one whose parent is a regular file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    render = Render.start(str(blocker / "out"), base_env(), tmp_path / "render.log")
    code = render.wait(60)
    message = render.output
    assert code == 2, message
    assert f"--out {blocker / 'out'}" in message and "Not a directory" in message, message
    assert "Loading weights" not in message
    assert blocker.read_text() == "not a directory"


def test_output_on_a_read_only_mount_exits_2(tmp_path: Path) -> None:
    """A read-only bind mount in a private mount namespace stops even root."""
    directory = tmp_path / "readonly"
    directory.mkdir()
    args = read_only_mount_args(directory, directory / "out")
    if args is None:
        pytest.skip("cannot create a mount namespace here (unshare -m refused)")
    render = Render.start("", base_env(), tmp_path / "render.log", args=args)
    code = render.wait(60)
    message = render.output
    assert code == 2, message
    assert f"--out {directory / 'out'}" in message and "Read-only file system" in message, message
    assert "Loading weights" not in message
    assert list(directory.iterdir()) == []


def test_a_second_render_of_a_running_job_exits_2_naming_the_holder(s3_env: SeaweedServer, reference: str, tmp_path: Path) -> None:
    """The first render is paused (SIGSTOP) while it holds the job; the same command again exits 2 naming it, then the first finishes equal."""
    prefix = new_prefix("twowriters")
    out, env, store = f"s3://{s3_env.bucket}/{prefix}", cli_env(s3_env), s3_reader(s3_env, prefix)
    first = Render.start(out, env, tmp_path / "first.log")
    first.wait_until(lambda: store.exists(latent_key(1)))
    first.proc.send_signal(signal.SIGSTOP)
    try:
        second = Render.start(out, env, tmp_path / "second.log")
        assert second.wait(120) == 2, second.output[-3000:]
        assert "is being written by" in second.output and f"(pid {first.proc.pid} on" in second.output, second.output[-3000:]
    finally:
        first.proc.send_signal(signal.SIGCONT)
    assert first.wait() == 0, first.output[-3000:]
    assert_same_render(store, s3_reader(s3_env, reference))
