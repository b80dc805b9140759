"""Uploader: order, backpressure, riding out a server outage, and failing loudly when it lasts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from miga_ray.storage import LocalStore, ObjectStore, S3Store, Uploader, UploadError

if TYPE_CHECKING:
    from conftest import SeaweedServer


def record_applied(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Log every key the store has successfully written or deleted, in order."""
    applied: list[str] = []
    for name in ("submit", "delete"):
        method = getattr(store, name)

        def wrapped(key: str, *args: object, _method: Callable[..., None] = method) -> None:
            _method(key, *args)
            applied.append(key)

        monkeypatch.setattr(store, name, wrapped)
    return applied


def test_order_files_and_deletes(local_store: LocalStore, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    applied = record_applied(local_store, monkeypatch)
    path = tmp_path / "f.bin"
    path.write_bytes(b"file")
    with Uploader(local_store) as up:
        up.submit("a", b"1")
        up.submit("b", path)
        up.submit_delete("a")
        up.submit("c", b"3")
    assert applied == ["a", "b", "a", "c"]
    assert local_store.list() == ["b", "c"] and local_store.get_bytes("b") == b"file"
    with pytest.raises(FileNotFoundError):
        Uploader(local_store).submit("d", tmp_path / "missing")


def test_queue_is_bounded(local_store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    put = local_store.put_bytes
    monkeypatch.setattr(local_store, "put_bytes", lambda key, data: (gate.wait(), put(key, data)))
    up = Uploader(local_store, max_pending=2)
    up.submit("a", b"1")
    up.submit("b", b"2")
    third = threading.Thread(target=up.submit, args=("c", b"3"))
    third.start()
    third.join(0.3)
    assert third.is_alive() and up.pending == 2  # the producer waits for room
    gate.set()
    third.join(5)
    up.close()
    assert local_store.list() == ["a", "b", "c"]


def test_outage_of_five_seconds_loses_nothing(
    seaweedfs_control: SeaweedServer, make_s3_store: Callable[..., S3Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_s3_store(retry_deadline_s=0.5, max_attempts=1)
    applied = record_applied(store, monkeypatch)
    expected: list[str] = []
    up = Uploader(store, deadline_s=60, backoff_s=0.2, max_backoff_s=1.0)
    producer_time = 0.0
    stopped_at = 0.0
    for i in range(40):
        if i == 10:
            up.flush()
            seaweedfs_control.stop()
            stopped_at = time.monotonic()
        start = time.monotonic()
        up.submit(f"segments/{i:05d}.ts", f"segment {i}".encode())
        up.submit("video.m3u8", f"playlist up to {i}".encode())
        producer_time += time.monotonic() - start
        expected += [f"segments/{i:05d}.ts", "video.m3u8"]
        time.sleep(0.02)
    assert producer_time < 1.0  # storage being down did not stall the producer
    assert up.pending > 0
    time.sleep(max(0.0, 5.0 - (time.monotonic() - stopped_at)))
    seaweedfs_control.start()
    up.close()
    assert applied == expected  # each exactly once, in submission order
    assert store.list() == sorted(set(expected))
    assert store.get_bytes("video.m3u8") == b"playlist up to 39"
    assert all(store.get_bytes(f"segments/{i:05d}.ts") == f"segment {i}".encode() for i in range(40))


def test_lasting_outage_raises_within_deadline(
    seaweedfs_control: SeaweedServer, make_s3_store: Callable[..., S3Store]
) -> None:
    store = make_s3_store(retry_deadline_s=0.5, max_attempts=1, connect_timeout_s=1.0)
    up = Uploader(store, deadline_s=3.0, backoff_s=0.2, max_backoff_s=1.0)
    up.submit("before", b"x")
    up.flush()
    seaweedfs_control.stop()
    start = time.monotonic()
    up.submit("lost-1", b"y")
    up.submit("lost-2", b"z")
    with pytest.raises(UploadError, match="'lost-1'.*2 operations left unwritten"):
        up.flush()
    assert time.monotonic() - start < 3.0 + 2.0
    with pytest.raises(UploadError):
        up.submit("after", b"w")
    with pytest.raises(UploadError):
        up.close()


def test_a_full_disk_is_not_retried(local_store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC cannot go away by waiting: the uploader fails at once, naming it, instead of retrying to its deadline."""
    import errno

    calls = []

    def full(key: str, data: bytes) -> None:
        calls.append(key)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local_store, "put_bytes", full)
    started = time.monotonic()
    up = Uploader(local_store, deadline_s=60.0, backoff_s=0.05)
    up.submit("a", b"1")
    with pytest.raises(UploadError, match="not retried.*No space left on device"):
        up.close()
    assert calls == ["a"] and time.monotonic() - started < 5.0
