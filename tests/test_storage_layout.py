"""Job layout: key names, job.json without secrets, latent files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from miga_ray.cli import app
from miga_ray.storage import (
    JobLayout,
    JobRecord,
    LatentWriter,
    LocalStore,
    ObjectStore,
    check_job_id,
    read_job,
    scrub_secrets,
    write_job,
)
from miga_ray.storage.layout import RESERVED_JOB_IDS


def test_keys() -> None:
    job = JobLayout("corgi-0001")
    assert job.job_json == "corgi-0001/job.json"
    assert job.latent(7) == "corgi-0001/latents/000007.safetensors"
    assert job.segment(3) == "corgi-0001/segments/00003.ts"
    assert (job.playlist, job.mp4, job.state) == ("corgi-0001/video.m3u8", "corgi-0001/video.mp4", "corgi-0001/state")
    assert (job.lease, job.frames, job.sheet) == ("corgi-0001/lease", "corgi-0001/frames", "corgi-0001/sheet")
    assert (job.frame(4), job.sheet_frame(9)) == ("corgi-0001/frames/000004.png", "corgi-0001/sheet/000009.png")
    assert (job.latent_sums, job.contact_sheet) == ("corgi-0001/latents.sha256", "corgi-0001/contact_sheet.png")
    assert job.video_sums == "corgi-0001/video.sha256"
    with pytest.raises(ValueError):
        JobLayout("a/b")


def test_a_job_id_may_not_be_a_name_the_layout_reserves() -> None:
    """A run's own objects and every name inside a job: a job there would overwrite them or be mistaken for them."""
    job = JobLayout("j")
    inside = {k.removeprefix("j/") for k in (job.job_json, job.playlist, job.mp4, job.latent_sums, job.video_sums,
                                             job.contact_sheet, job.state, job.lease, job.frames, job.sheet)}  # fmt: skip
    inside |= {job.latent(0).split("/")[1], job.segment(0).split("/")[1]}
    for name in inside | {"index.html", "index.presigned.html", "manifest.parquet"}:
        assert name in RESERVED_JOB_IDS
        with pytest.raises(ValueError, match=re.escape(repr(name))):
            check_job_id(name)
    check_job_id("index.htm")


@pytest.mark.parametrize("name", ["index.html", "manifest.parquet", "lease"])
def test_render_refuses_a_reserved_job_id_before_writing_anything(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["render", "a red circle moving over sand", "--frames", "9", "--job-id", name, "--out", str(out)])
    assert result.exit_code == 2 and f"--job-id: a job id must not be '{name}', a reserved name" in " ".join(result.output.split()), result.output
    assert not out.exists()


def test_scrub_secrets() -> None:
    config: dict[str, Any] = {
        "prompt": "a corgi",
        "max_tokens": 226,
        "keyframe_every": 4,
        "aws_secret_access_key": "x",
        "accessKeyId": "x",
        "api-key": "x",
        "HF_TOKEN": "x",
        "storage": {"endpoint_url": "http://s3", "password": "x", "credentials": {"a": 1}},
        "hooks": [{"token": "x", "name": "ok"}],
    }
    assert scrub_secrets(config) == {
        "prompt": "a corgi",
        "max_tokens": 226,
        "keyframe_every": 4,
        "storage": {"endpoint_url": "http://s3"},
        "hooks": [{"name": "ok"}],
    }
    assert config["storage"]["password"] == "x"  # the caller's dict is untouched


def test_job_json_round_trip(store: ObjectStore) -> None:
    assert read_job(store, "job-1") is None
    record = JobRecord("job-1", frames_total=120, config={"seed": 3, "s3": {"secret_key": "hunter2"}})
    write_job(store, record)
    record.status, record.frames_done, record.timings = "done", 120, {"total_s": 12.5}
    write_job(store, record)
    raw = store.get_bytes("job-1/job.json")
    assert b"hunter2" not in raw and json.loads(raw)["status"] == "done"
    loaded = read_job(store, "job-1")
    assert loaded is not None and loaded.frames_done == 120 and loaded.config == {"seed": 3, "s3": {}}
    with pytest.raises(ValueError, match="status"):
        JobRecord("job-1", status="paused")  # type: ignore[arg-type]


def test_latents(local_store: LocalStore) -> None:
    writer = LatentWriter(local_store, JobLayout("job"))
    latents = [torch.randn(4, 6, 8) for _ in range(3)]
    for i in (0, 1, 3):
        writer.write(i, latents[min(i, 2)])
    assert writer.count() == 2  # 2 is missing: a resumed job continues there
    assert torch.equal(writer.read(1), latents[1])
