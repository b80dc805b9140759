"""Job layout: key names, job.json without secrets, latent files."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from miga_ray.storage import (
    JobLayout,
    JobRecord,
    LatentWriter,
    LocalStore,
    ObjectStore,
    read_job,
    scrub_secrets,
    write_job,
)


def test_keys() -> None:
    job = JobLayout("corgi-0001")
    assert job.job_json == "corgi-0001/job.json"
    assert job.latent(7) == "corgi-0001/latents/000007.safetensors"
    assert job.segment(3) == "corgi-0001/segments/00003.ts"
    assert (job.playlist, job.mp4, job.state) == ("corgi-0001/video.m3u8", "corgi-0001/video.mp4", "corgi-0001/state")
    with pytest.raises(ValueError):
        JobLayout("a/b")


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
