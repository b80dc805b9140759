"""Shared fixtures: a real S3 server (SeaweedFS ``weed mini`` on loopback, keys enforced) and stores."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from miga_ray.storage import LocalStore, ObjectStore, S3Store
from miga_ray.storage.seaweed import SeaweedServer


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One SeaweedFS for the session: loopback only, free ports, a bucket, one enforced identity."""
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs") / "data", bucket="miga-test")
    try:
        server.start()
        yield server
    finally:
        server.stop(grace=0)  # its data dies with the session; a graceful stop takes ~12 s


@pytest.fixture
def seaweedfs_control(seaweedfs: SeaweedServer) -> Iterator[SeaweedServer]:
    """The session server for fault tests that stop it; it is running again after the test."""
    yield seaweedfs
    if seaweedfs.proc is None:
        seaweedfs.start()


@pytest.fixture
def s3_env(seaweedfs: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> SeaweedServer:
    """The server's credentials in the standard AWS environment variables, isolated from ~/.aws."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return seaweedfs


@pytest.fixture
def make_s3_store(s3_env: SeaweedServer) -> Callable[..., S3Store]:
    """Factory of S3Stores on the test bucket, each under a fresh prefix, with quick retries."""

    def make(**options: Any) -> S3Store:
        options = {
            "max_attempts": 2,
            "retry_deadline_s": 2.0,
            "connect_timeout_s": 2.0,
            "read_timeout_s": 10.0,
        } | options
        prefix = f"t-{uuid.uuid4().hex[:12]}"
        return S3Store(s3_env.bucket, prefix, endpoint_url=s3_env.endpoint, path_style=True, **options)

    return make


@pytest.fixture
def s3_store(make_s3_store: Callable[..., S3Store]) -> S3Store:
    store = make_s3_store()
    store.check()
    return store


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "out")
    store.check()
    return store


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    """Each ObjectStore backend in turn."""
    return request.getfixturevalue(f"{request.param}_store")
