"""A bounded background writer, so that slow or briefly unavailable storage does not stall rendering.

One worker thread applies writes and deletes strictly in submission order, so an object that
names another (a playlist naming a segment, a pointer naming a checkpoint) is never visible
before it. A write that keeps failing is retried with backoff (a full, over-quota or read-only disk is not); once it has failed for longer
than the deadline the uploader stops, keeps every unwritten operation, and raises the error on
the next ``submit``/``flush``/``close``: the producer stops with its state intact instead of
silently skipping output.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

from .objects import ObjectStore, StoreError, WriteRefused, check_key

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where storage writers send objects: an ``ObjectStore`` (synchronous) or an ``Uploader``."""

    def submit(self, key: str, data: bytes | os.PathLike[str]) -> None: ...

    def submit_delete(self, key: str) -> None: ...

    def flush(self) -> None: ...


_PERMANENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def _permanent(exc: BaseException) -> bool:
    """Whether retrying a write cannot help: the disk is full, over quota or read-only."""
    return isinstance(exc, OSError) and exc.errno in _PERMANENT_ERRNOS


class UploadError(StoreError):
    """A write kept failing past the uploader's deadline; nothing after it was written."""


@dataclass(frozen=True)
class _Op:
    key: str
    data: bytes | Path | None  # None: delete

    @property
    def size(self) -> int:
        return len(self.data) if isinstance(self.data, bytes) else 0

    def apply(self, store: ObjectStore) -> None:
        if self.data is None:
            store.delete(self.key)
        else:
            store.submit(self.key, self.data)


class Uploader:
    """Background, order-preserving, bounded queue of writes to one store (see module docstring)."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        max_pending: int = 64,
        max_pending_bytes: int = 512 * 1024 * 1024,
        deadline_s: float = 300.0,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.store = store
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.deadline_s = deadline_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._queue: deque[_Op] = deque()
        self._queued_bytes = 0
        self._error: StoreError | None = None
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="miga-uploader", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Operations submitted but not yet applied (including the one in flight)."""
        with self._cond:
            return len(self._queue)

    def submit(self, key: str, data: bytes | os.PathLike[str]) -> None:
        """Queue a write of bytes or of a local file (which must stay in place until flushed)."""
        if isinstance(data, bytes):
            self._enqueue(_Op(check_key(key), data))
        elif Path(data).is_file():
            self._enqueue(_Op(check_key(key), Path(data)))
        else:
            raise FileNotFoundError(f"cannot upload {data}: not a file")

    def submit_delete(self, key: str) -> None:
        """Queue a delete, applied after everything submitted before it."""
        self._enqueue(_Op(check_key(key), None))

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued operation is applied; raise the uploader's error if it failed."""
        with self._cond:
            if not self._cond.wait_for(lambda: not self._queue or self._error is not None, timeout):
                raise TimeoutError(f"{len(self._queue)} uploads to {self.store.uri} still pending")
            self._raise_if_failed()

    def close(self) -> None:
        """Flush, then stop the worker thread; idempotent."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        with self._cond:
            self._raise_if_failed()

    def __enter__(self) -> Uploader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _enqueue(self, op: _Op) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("uploader is closed")
            self._cond.wait_for(lambda: self._error is not None or self._has_room(op.size))
            self._raise_if_failed()
            self._queue.append(op)
            self._queued_bytes += op.size
            self._cond.notify_all()

    def _has_room(self, size: int) -> bool:
        if not self._queue:
            return True
        return len(self._queue) < self.max_pending and self._queued_bytes + size <= self.max_pending_bytes

    def _run(self) -> None:
        """Worker: apply the head operation (retrying), then pop it; stop on close or lasting failure."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                op = self._queue[0]
            try:
                self._apply_with_retry(op)
            except WriteRefused as e:  # raised as it is: the producer must stop, not report a storage failure
                with self._cond:
                    self._error = e
                    self._cond.notify_all()
                return
            except Exception as e:
                with self._cond:
                    self._error = UploadError(
                        f"writing {op.key!r} to {self.store.uri} failed "
                        f"{'(not retried)' if _permanent(e) else f'for over {self.deadline_s:g}s'} "
                        f"({len(self._queue)} operations left unwritten): {e}"
                    )
                    self._error.__cause__ = e
                    self._cond.notify_all()
                return
            with self._cond:
                self._queue.popleft()
                self._queued_bytes -= op.size
                self._cond.notify_all()

    def _apply_with_retry(self, op: _Op) -> None:
        """Apply one operation, retrying any failure with exponential backoff until the deadline."""
        give_up = time.monotonic() + self.deadline_s
        delay = self.backoff_s
        while True:
            try:
                op.apply(self.store)
                return
            except Exception as e:
                if _permanent(e) or isinstance(e, WriteRefused) or time.monotonic() + delay > give_up:
                    raise
                log.warning("upload of %r failed (%s); retrying in %.1fs", op.key, e, delay)
                time.sleep(delay)
                delay = min(2 * delay, self.max_backoff_s)
