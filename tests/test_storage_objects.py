"""ObjectStore contract on both backends, open-time checks, and the test server's access control."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from miga_ray.storage import LocalStore, ObjectNotFound, ObjectStore, S3Store, StoreError, open_store

if TYPE_CHECKING:
    from conftest import SeaweedServer


def test_round_trip_list_delete(store: ObjectStore) -> None:
    store.put_bytes("job/a.bin", b"first")
    store.put_bytes("job/a.bin", b"second")  # replaces
    store.put_bytes("job/sub/b.bin", b"")
    store.put_bytes("jobs.txt", b"x")
    assert store.get_bytes("job/a.bin") == b"second"
    assert store.get_bytes("job/sub/b.bin") == b""
    assert store.exists("job/a.bin") and not store.exists("job/nope")
    assert store.list("job/") == ["job/a.bin", "job/sub/b.bin"]
    assert store.list("job") == ["job/a.bin", "job/sub/b.bin", "jobs.txt"]
    assert store.list("nothing/") == []
    store.delete("job/a.bin")
    store.delete("job/a.bin")  # deleting a missing object is fine
    assert not store.exists("job/a.bin")
    with pytest.raises(ObjectNotFound, match="job/a.bin"):
        store.get_bytes("job/a.bin")


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../up", "a/./b", "a/.tmp-x"])
def test_invalid_keys_rejected(local_store: LocalStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        local_store.put_bytes(key, b"x")


def test_put_file(store: ObjectStore, tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"0123456789" * 1000)
    store.put_file("files/blob", path)
    assert store.get_bytes("files/blob") == path.read_bytes()


def test_s3_multipart_upload(s3_env: SeaweedServer, make_s3_store: Callable[..., S3Store], tmp_path: Path) -> None:
    store = make_s3_store(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20)
    path = tmp_path / "big"
    path.write_bytes(bytes(range(256)) * (12 * 2**20 // 256))
    store.put_file("big", path)
    assert store.get_bytes("big") == path.read_bytes()
    head = boto3.client("s3", endpoint_url=s3_env.endpoint).head_object(Bucket=s3_env.bucket, Key=f"{store.prefix}/big")
    assert head["ETag"].strip('"').endswith("-3")  # three parts


def test_local_writes_leave_no_temp_files(local_store: LocalStore) -> None:
    for i in range(5):
        local_store.put_bytes("k/v", bytes([i]) * 100)
    assert sorted(p.name for p in (local_store.root / "k").iterdir()) == ["v"]


def test_local_not_writable_fails_at_open(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match=str(blocker / "out")):
        open_store(blocker / "out")


def test_open_store_local(tmp_path: Path) -> None:
    store = open_store(tmp_path / "runs")
    assert isinstance(store, LocalStore) and (tmp_path / "runs").is_dir()
    assert isinstance(open_store(f"file://{tmp_path}/runs2"), LocalStore)
    with pytest.raises(ValueError, match="unsupported"):
        open_store("gs://bucket/x")


def test_open_store_s3(s3_env: SeaweedServer) -> None:
    store = open_store(f"s3://{s3_env.bucket}/runs/a", endpoint_url=s3_env.endpoint, path_style=True)
    assert isinstance(store, S3Store) and store.uri == f"s3://{s3_env.bucket}/runs/a"
    store.put_bytes("x", b"1")
    assert open_store(f"s3://{s3_env.bucket}/runs", endpoint_url=s3_env.endpoint).get_bytes("a/x") == b"1"


def test_wrong_secret_fails_at_open(s3_env: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + s3_env.secret_key)
    with pytest.raises(StoreError, match=f"bucket '{s3_env.bucket}'.*access denied"):
        open_store(f"s3://{s3_env.bucket}/runs", endpoint_url=s3_env.endpoint, max_attempts=1)


def test_missing_bucket_fails_at_open(s3_env: SeaweedServer) -> None:
    with pytest.raises(StoreError, match="bucket 'no-such-bucket'.*does not exist"):
        open_store("s3://no-such-bucket/runs", endpoint_url=s3_env.endpoint, max_attempts=1)


def test_no_credentials_fails_at_open(s3_env: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StoreError, match="no AWS credentials"):
        open_store(f"s3://{s3_env.bucket}/runs", endpoint_url=s3_env.endpoint)


def test_server_refuses_unsigned_and_wrong_key_requests(seaweedfs: SeaweedServer) -> None:
    unsigned = boto3.client(
        "s3", endpoint_url=seaweedfs.endpoint, region_name="us-east-1", config=Config(signature_version=UNSIGNED)
    )
    wrong = boto3.client(
        "s3",
        endpoint_url=seaweedfs.endpoint,
        region_name="us-east-1",
        aws_access_key_id=seaweedfs.access_key,
        aws_secret_access_key="not-the-secret",
    )
    for client in (unsigned, wrong):
        with pytest.raises(ClientError) as put:
            client.put_object(Bucket=seaweedfs.bucket, Key="intruder", Body=b"x")
        assert put.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        with pytest.raises(ClientError) as get:
            client.get_object(Bucket=seaweedfs.bucket, Key=".ready")
        assert get.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_local_objects_are_readable_as_the_umask_allows(local_store: LocalStore) -> None:
    """Not mkstemp's 0600: a web server or a teammate can read a finished video."""
    local_store.put_bytes("job/video.mp4", b"x")
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE((local_store.root / "job/video.mp4").stat().st_mode) == 0o666 & ~mask != 0o600


def test_local_copy_streams_an_object_to_a_file(store: ObjectStore) -> None:
    data = bytes(range(256)) * 4096
    store.put_bytes("job/video.mp4", data)
    with store.local_copy("job/video.mp4") as path:
        assert path.read_bytes() == data and path.name == "video.mp4"
    if isinstance(store, S3Store):
        assert not path.exists(), "a downloaded copy is removed afterwards"
    with pytest.raises(ObjectNotFound), store.local_copy("job/none.mp4"):
        pass
