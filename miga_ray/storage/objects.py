"""Object stores: one small interface over a local directory and any S3-compatible service.

Keys are relative, ``/``-separated names (``job-1/segments/00000.ts``). Every write replaces the
whole object at once (temp file + ``os.replace`` locally, a single PUT or a completed multipart
upload on S3), so a reader sees either the old object or the new one, never a torn one.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import random
import shutil
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any, TypeVar

import boto3
import botocore.exceptions as bce
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

log = logging.getLogger(__name__)

T = TypeVar("T")
MiB = 1024 * 1024
_TMP_PREFIX = ".tmp-"
_CONTENT_TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t", ".mp4": "video/mp4", ".html": "text/html; charset=utf-8"}


def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file under the process umask (0644 with the usual 022).

    Read once, at import: setting the umask to read it is not safe while other threads create files."""
    mask = os.umask(0o077)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _new_file_mode()

_TRANSIENT_CODES = {"SlowDown", "Throttling", "RequestTimeout", "InternalError", "ServiceUnavailable"}


class StoreError(RuntimeError):
    """A store cannot be used (unreachable, not writable, wrong credentials, missing bucket)."""


class ObjectNotFound(StoreError, LookupError):
    """The key names no object."""


class WriteRefused(StoreError):
    """This process may no longer write here (its job's lease is lost): retrying cannot help."""


def check_key(key: str) -> str:
    """Reject keys that could escape the store root or collide with temp files; return the key."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or p.startswith(_TMP_PREFIX) for p in parts):
        raise ValueError(f"invalid object key {key!r}")
    return key


class ObjectStore(ABC):
    """Whole-object reads and atomic whole-object writes under one root (a directory or bucket/prefix)."""

    uri: str

    @abstractmethod
    def check(self) -> None:
        """Fail now with a StoreError naming the location and the cause if the store is unusable."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, commit_check: Callable[[], None] | None = None) -> None:
        """Write an object atomically, replacing any previous one; ``commit_check`` may refuse it (raise) at the last
        moment before the object becomes visible (a writer's lease, see ``lease.FencedStore``)."""

    @abstractmethod
    def put_file(self, key: str, path: str | os.PathLike[str], commit_check: Callable[[], None] | None = None) -> None:
        """Upload a local file atomically (multipart on S3 when large) without reading it into memory (``commit_check``
        as for ``put_bytes``)."""

    @abstractmethod
    def create_if_absent(self, key: str, data: bytes) -> bool:
        """Write an object only if none exists under ``key``, atomically; False if one does."""

    def honours_conditional_create(self) -> bool:
        """Whether ``create_if_absent`` really refuses to replace an object (a store may ignore the condition)."""
        return True

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read a whole object; raise ObjectNotFound if it does not exist."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object exists under exactly this key."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """All keys that start with ``prefix`` (a plain string prefix), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; removing a missing object is not an error."""

    def remove_temp(self, prefix: str) -> int:
        """Remove temp objects left under ``prefix`` by killed writes; return how many (none on S3, whose writes leave none)."""
        return 0

    @contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        """A local file holding the object, for readers that stream from a file (PyAV), removed afterwards;
        the object never sits in memory whole. ObjectNotFound if it does not exist."""
        with tempfile.TemporaryDirectory(prefix="miga-object-") as folder:
            path = Path(folder, key.rpartition("/")[2])
            self._download(key, path)
            yield path

    def _download(self, key: str, path: Path) -> None:
        """Write the object to ``path`` (the generic way: through memory)."""
        path.write_bytes(self.get_bytes(key))

    def submit(self, key: str, data: bytes | os.PathLike[str]) -> None:
        """Write bytes or a local file now: the synchronous twin of ``Uploader.submit``."""
        if isinstance(data, bytes):
            self.put_bytes(key, data)
        else:
            self.put_file(key, data)

    def submit_delete(self, key: str) -> None:
        """Delete now: the synchronous twin of ``Uploader.submit_delete``."""
        self.delete(key)

    def flush(self) -> None:
        """Nothing to wait for: writes to a store are synchronous."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class LocalStore(ObjectStore):
    """Objects as files under a root directory: the embedded default for laptops and tests."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=_TMP_PREFIX):
                pass
        except OSError as e:
            raise StoreError(f"local store {self.root} is not a writable directory: {e}") from e

    def _write_atomic(self, key: str, fill: Callable[[int], None], commit_check: Callable[[], None] | None) -> None:
        """Write through a temp file in the target directory, fsync it, ``commit_check``, then rename it into place."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX)
        try:
            os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600; a finished object is as readable as any new file
            fill(fd)
            os.fsync(fd)
            os.close(fd)
            fd = -1
            if commit_check is not None:
                commit_check()
            os.replace(tmp, path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            os.unlink(tmp)
            raise

    def put_bytes(self, key: str, data: bytes, commit_check: Callable[[], None] | None = None) -> None:
        def fill(fd: int) -> None:
            with open(fd, "wb", closefd=False) as f:
                f.write(data)

        self._write_atomic(key, fill, commit_check)

    def put_file(self, key: str, path: str | os.PathLike[str], commit_check: Callable[[], None] | None = None) -> None:
        def fill(fd: int) -> None:
            with open(path, "rb") as src, open(fd, "wb", closefd=False) as dst:
                shutil.copyfileobj(src, dst, 4 * MiB)

        self._write_atomic(key, fill, commit_check)

    def create_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=_TMP_PREFIX)  # outside any job: a job's temp cleanup never races it
        try:
            with open(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)  # atomic, and fails if the name exists
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise ObjectNotFound(f"no object {key!r} in {self.uri}") from e

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    @contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        """The object's own file: no copy needed."""
        if not self.exists(key):
            raise ObjectNotFound(f"no object {key!r} in {self.uri}")
        yield self._path(key)

    def list(self, prefix: str = "") -> list[str]:
        folder = prefix.rpartition("/")[0]
        base = self.root / check_key(folder) if folder else self.root
        if not base.is_dir():
            return []
        keys = []
        for dirpath, _, files in os.walk(base):
            for name in files:
                if not name.startswith(_TMP_PREFIX):
                    key = Path(dirpath, name).relative_to(self.root).as_posix()
                    if key.startswith(prefix):
                        keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def remove_temp(self, prefix: str) -> int:
        base = self._path(prefix.strip("/"))
        stale = [p for p in base.rglob(f"{_TMP_PREFIX}*") if p.is_file()] if base.is_dir() else []
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)


def _is_transient(exc: BaseException) -> bool:
    """Whether an S3 failure is worth retrying: connection trouble, timeouts, throttling, 5xx."""
    if isinstance(exc, S3UploadFailedError) and exc.__context__ is not None:
        return _is_transient(exc.__context__)
    if isinstance(exc, bce.ConnectionError | bce.HTTPClientError):
        return True
    if isinstance(exc, bce.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or exc.response.get("Error", {}).get("Code") in _TRANSIENT_CODES
    return False


def _drop_expect_continue(params: dict[str, Any], **_: Any) -> None:
    """Send bodies without ``Expect: 100-continue``.

    When a server answers such a request with a final status at once (SeaweedFS does for empty
    bodies, any server may for errors), botocore's connection misreads the next response on
    that connection and stalls until the read timeout.
    """
    params["headers"].pop("Expect", None)


def _content_type(key: str) -> dict[str, str]:
    """``ContentType`` for an upload, from the key's extension, so a browser reading the bucket renders the
    gallery page and plays the video and HLS playlist (none for types it cannot tell)."""
    kind = _CONTENT_TYPES.get(Path(key).suffix) or mimetypes.guess_type(key)[0]
    return {"ContentType": kind} if kind else {}


def _error_code(exc: bce.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Store(ObjectStore):
    """Objects in an S3-compatible bucket (AWS, MinIO, SeaweedFS, Ceph, R2) through boto3.

    Credentials come only from the standard AWS chain (environment, shared files, instance
    roles); this class never takes or records a key. Transient failures are retried twice over:
    by botocore (``max_attempts``) and by an outer loop with backoff until ``retry_deadline_s``.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        profile_name: str | None = None,
        path_style: bool = False,
        max_attempts: int = 4,
        retry_deadline_s: float = 20.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        multipart_threshold: int = 16 * MiB,
        multipart_chunksize: int = 16 * MiB,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.retry_deadline_s = retry_deadline_s
        self._honours: bool | None = None
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._where = self.uri + (f" at {endpoint_url}" if endpoint_url else "")
        config = Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            s3={"addressing_style": "path" if path_style else "auto"},
            signature_version="s3v4",  # also for presigned URLs (botocore may presign with SigV2 otherwise)
        )
        session = boto3.session.Session(profile_name=profile_name, region_name=region_name)
        self._client = session.client("s3", endpoint_url=endpoint_url, config=config)
        self._client.meta.events.register_last("before-call.s3", _drop_expect_continue)
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunksize, max_concurrency=4
        )

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        """Call ``fn``, retrying transient failures with jittered exponential backoff until the deadline."""
        deadline = time.monotonic() + self.retry_deadline_s
        delay = 0.2
        while True:
            try:
                return fn()
            except Exception as e:
                if not _is_transient(e) or time.monotonic() + delay > deadline:
                    raise
                log.warning("%s on %s failed (%s); retrying in %.1fs", what, self._where, e, delay)
                time.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 5.0)

    def check(self) -> None:
        where = f"bucket {self.bucket!r} ({self._where})"
        probe = self._full(f".miga-probe-{uuid.uuid4().hex}")
        try:
            self._client.head_bucket(Bucket=self.bucket)
            self._client.put_object(Bucket=self.bucket, Key=probe, Body=b"")
            self._client.delete_object(Bucket=self.bucket, Key=probe)
        except bce.NoCredentialsError as e:
            raise StoreError(f"{where}: no AWS credentials in the standard chain (env, ~/.aws, role)") from e
        except bce.ClientError as e:
            code = _error_code(e)
            if code in ("404", "NoSuchBucket"):
                cause = "the bucket does not exist"
            elif code in ("403", "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId"):
                cause = f"access denied ({code}): wrong credentials or no read/write permission"
            else:
                cause = str(e)
            raise StoreError(f"{where} is not usable: {cause}") from e
        except bce.BotoCoreError as e:
            raise StoreError(f"{where} is not usable: {e}") from e

    def put_bytes(self, key: str, data: bytes, commit_check: Callable[[], None] | None = None) -> None:
        full = self._full(key)

        def put() -> None:
            if commit_check is not None:  # before every attempt: a retry may come after the writer lost its right to write
                commit_check()
            self._client.upload_fileobj(BytesIO(data), self.bucket, full, ExtraArgs=_content_type(key), Config=self._transfer)

        self._retry(f"put {key}", put)

    def put_file(self, key: str, path: str | os.PathLike[str], commit_check: Callable[[], None] | None = None) -> None:
        full = self._full(key)

        def put() -> None:
            if commit_check is not None:
                commit_check()
            self._client.upload_file(os.fspath(path), self.bucket, full, ExtraArgs=_content_type(key), Config=self._transfer)

        self._retry(f"put {key}", put)

    def presigned_url(self, key: str, expires_s: int) -> str:
        """A URL that reads ``key`` without credentials for ``expires_s`` seconds (SigV4 allows at most 7 days)."""
        return self._client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": self._full(key)}, ExpiresIn=expires_s)

    def create_if_absent(self, key: str, data: bytes) -> bool:
        full = self._full(key)
        try:
            self._retry(f"create {key}", lambda: self._client.put_object(Bucket=self.bucket, Key=full, Body=data, IfNoneMatch="*"))
        except bce.ClientError as e:
            if _error_code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def honours_conditional_create(self) -> bool:
        """Probe once: a second conditional create of one key must be refused."""
        if self._honours is None:
            probe = f".miga-probe-{uuid.uuid4().hex}"
            try:
                self._honours = self.create_if_absent(probe, b"1") and not self.create_if_absent(probe, b"2")
            finally:
                self.delete(probe)
        return self._honours

    def get_bytes(self, key: str) -> bytes:
        full = self._full(key)
        try:
            return self._retry(
                f"get {key}", lambda: self._client.get_object(Bucket=self.bucket, Key=full)["Body"].read()
            )
        except bce.ClientError as e:
            if _error_code(e) in ("NoSuchKey", "404"):
                raise ObjectNotFound(f"no object {key!r} in {self._where}") from e
            raise

    def _download(self, key: str, path: Path) -> None:
        """Stream the object into ``path`` (ranged GETs), never whole in memory."""
        full = self._full(key)
        try:
            self._retry(f"download {key}", lambda: self._client.download_file(self.bucket, full, str(path), Config=self._transfer))
        except bce.ClientError as e:
            if _error_code(e) in ("NoSuchKey", "404"):
                raise ObjectNotFound(f"no object {key!r} in {self._where}") from e
            raise

    def exists(self, key: str) -> bool:
        full = self._full(key)
        try:
            self._retry(f"head {key}", lambda: self._client.head_object(Bucket=self.bucket, Key=full))
        except bce.ClientError as e:
            if _error_code(e) in ("NoSuchKey", "404"):
                return False
            raise
        return True

    def list(self, prefix: str = "") -> list[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix

        def scan() -> list[str]:
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
            return sorted(obj["Key"][strip:] for page in pages for obj in page.get("Contents", ()))

        return self._retry(f"list {prefix}", scan)

    def delete(self, key: str) -> None:
        full = self._full(key)
        self._retry(f"delete {key}", lambda: self._client.delete_object(Bucket=self.bucket, Key=full))


def open_store(uri: str | os.PathLike[str], check: bool = True, **s3_options: Any) -> ObjectStore:
    """Open ``s3://bucket/prefix`` (S3Store, options passed on) or a local path; ``check`` it is usable (a write probe)."""
    text = os.fspath(uri)
    store: ObjectStore
    if text.startswith("s3://"):
        bucket, _, prefix = text.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {text!r}")
        store = S3Store(bucket, prefix, **s3_options)
    elif "://" in text and not text.startswith("file://"):
        raise ValueError(f"unsupported store URI {text!r}: use s3://bucket/prefix or a local path")
    else:
        if s3_options:
            raise TypeError(f"S3 options {sorted(s3_options)} given for local store {text!r}")
        store = LocalStore(text.removeprefix("file://"))
    if check:
        store.check()
    return store
