"""One writer per job: a lease taken by conditional create before any write, renewed while rendering.

Under a job's ``lease/`` prefix, generation ``n`` is the object ``lease/NNNNNNNNNN.json`` =
``{"holder", "host", "pid", "expires"}``. The holder of the highest generation owns the job while
its lease has not expired. Taking a lease creates the next generation with a conditional create
(``O_EXCL``-style ``link`` on a local directory, ``If-None-Match: *`` on S3): of two processes
racing for the same generation exactly one wins. A lease is stale once ``expires`` has passed, or
at once when its holder ran on this host and that process is gone (a killed render); a stale
lease is taken over by creating the next generation, so a takeover race has one winner too. The
holder renews from a background thread every ``ttl_s / 3`` and counts itself lost when a newer
generation appears or it could not renew before its expiry; the render checks ``check`` between
latents and stops.

Every write of a leased job goes through ``fenced()``, a view of the store that checks the lease against the
clock before each write: a process stopped (SIGSTOP, a suspended VM) past its expiry writes nothing more,
even before its renewal thread has noticed. ``held`` takes the lease for one short write (the evaluation's
job.json update).

A store that ignores ``If-None-Match`` (a probe detects it) lets two processes that start within
the same moment both create the same generation; the read-back after the create catches most of
those races, not all, and a warning says so. The job's identity check and checksums still apply.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from .layout import LEASE_DIR, join
from .objects import ObjectNotFound, ObjectStore, StoreError, WriteRefused

log = logging.getLogger(__name__)
_NAME = re.compile(r"(\d{10})\.json$")
TTL_S = 60.0  # a lease's lifetime unless renewed
FENCE_MARGIN = 0.1  # writes stop this share of the TTL before the expiry: a write begun just before it lands after it


class LeaseHeld(StoreError):
    """Another live process holds the job's lease."""


class LeaseLost(WriteRefused):
    """This process's lease was taken over or expired: it must stop writing."""


@dataclass(frozen=True)
class LeaseRecord:
    """The content of one lease generation."""

    holder: str
    host: str
    pid: int
    expires: float

    def describe(self) -> str:
        """``holder (pid P on HOST) until <UTC time>``, for messages."""
        until = datetime.fromtimestamp(self.expires, UTC).isoformat(timespec="seconds")
        return f"{self.holder} (pid {self.pid} on {self.host}) until {until}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """The lease of one job prefix (see the module docstring)."""

    def __init__(self, store: ObjectStore, prefix: str, ttl_s: float = TTL_S) -> None:
        self.store, self.prefix, self.ttl_s = store, prefix, ttl_s
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.holder = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.generation: int | None = None
        self.expires = 0.0
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _key(self, generation: int) -> str:
        return join(self.prefix, f"{LEASE_DIR}/{generation:010d}.json")

    def _generations(self) -> list[int]:
        names = (k.rsplit("/", 1)[-1] for k in self.store.list(join(self.prefix, LEASE_DIR + "/")))
        return sorted(int(m.group(1)) for n in names if (m := _NAME.match(n)))

    def _read(self, generation: int) -> LeaseRecord | None:
        """A generation's record; None if it is gone or unreadable (then it protects nothing)."""
        try:
            return LeaseRecord(**json.loads(self.store.get_bytes(self._key(generation))))
        except (ObjectNotFound, ValueError, TypeError):
            return None

    def _record(self, expires: float) -> bytes:
        return json.dumps(asdict(LeaseRecord(self.holder, self.host, self.pid, expires))).encode()

    def _stale(self, record: LeaseRecord | None) -> bool:
        if record is None or record.expires < time.time():
            return True
        return record.host == self.host and record.pid != self.pid and not pid_alive(record.pid)

    def acquire(self) -> None:
        """Take the lease (creating the next generation) and start renewing it; LeaseHeld if a live holder has it."""
        if not self.store.honours_conditional_create():
            log.warning("%s ignores If-None-Match: the job lease cannot exclude a writer that starts at the same moment", self.store.uri)
        generations = self._generations()
        if generations:
            current = self._read(generations[-1])
            if not self._stale(current):
                assert current is not None
                raise LeaseHeld(f"job {self.prefix} is being written by {current.describe()}; wait for it, or stop it first")
        generation = generations[-1] + 1 if generations else 0
        expires = time.time() + self.ttl_s
        self.store.create_if_absent(self._key(generation), self._record(expires))
        back = self._read(generation)  # not the result of the create: a retried create may have won already
        if back is None or back.holder != self.holder:
            raise LeaseHeld(f"job {self.prefix}: another process took its lease at the same moment ({back.describe() if back else 'unknown'})")
        self.generation, self.expires, self.lost = generation, expires, None
        for old in generations:
            self.store.delete(self._key(old))
        self._thread = threading.Thread(target=self._renew_loop, name="miga-lease", daemon=True)
        self._thread.start()

    def renew(self) -> None:
        """Extend the lease; mark it lost if a newer generation exists or it has already expired."""
        if self.lost or self.generation is None:
            return
        current = self._read(self.generation)
        if self._generations()[-1:] != [self.generation] or current is None or current.holder != self.holder:
            self.lost = f"job {self.prefix}: its lease was taken over by {self._describe_newest()}"
        elif time.time() > self.expires:
            self.lost = f"job {self.prefix}: its lease expired before it could be renewed"
        else:
            expires = time.time() + self.ttl_s
            self.store.put_bytes(self._key(self.generation), self._record(expires))
            self.expires = expires  # only once stored: the expiry others see is the one the fence keeps to

    def _describe_newest(self) -> str:
        generations = self._generations()
        record = self._read(generations[-1]) if generations else None
        return record.describe() if record else "another process"

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - storage trouble: try again; expiry decides
                log.warning("renewing the lease of %s failed (%s); retrying", self.prefix, exc)
                if time.time() > self.expires:
                    self.lost = f"job {self.prefix}: its lease expired while storage was unreachable"

    def check(self) -> None:
        """Raise LeaseLost if this process may no longer write the job: the lease was lost, is not held, or by the
        clock it expires within the fence margin (whatever the renewal thread has seen)."""
        if self.lost:
            raise LeaseLost(self.lost)
        if self.generation is None:
            raise LeaseLost(f"job {self.prefix}: this process does not hold its lease")
        if time.time() > self.expires - FENCE_MARGIN * self.ttl_s:
            until = datetime.fromtimestamp(self.expires, UTC).isoformat(timespec="seconds")
            self.lost = f"job {self.prefix}: its lease expired at {until} (this process was stopped or could not renew it)"
            raise LeaseLost(self.lost)

    def fenced(self) -> ObjectStore:
        """The store as this lease's holder may write it: every write checks the lease first (``check``)."""
        return FencedStore(self.store, self)

    def release(self) -> None:
        """Stop renewing and delete this process's generation (unless the lease was lost)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.generation is not None and not self.lost:
            try:
                self.store.delete(self._key(self.generation))
            except StoreError as exc:  # the lease expires on its own
                log.warning("could not release the lease of %s: %s", self.prefix, exc)
        self.generation = None


class FencedStore(ObjectStore):
    """A store whose writes each check a lease against the clock (``Lease.check``) first and again when they commit;
    reads pass through. A write is refused, never half done: LeaseLost."""

    def __init__(self, store: ObjectStore, lease: Lease) -> None:
        self.store, self.lease, self.uri = store, lease, store.uri

    def check(self) -> None:
        self.store.check()

    def _commit_check(self, also: Callable[[], None] | None) -> Callable[[], None]:
        """The lease's check (and ``also``) at the commit: the process may have stopped since the write began."""

        def check() -> None:
            self.lease.check()
            if also is not None:
                also()

        return check

    def put_bytes(self, key: str, data: bytes, commit_check: Callable[[], None] | None = None) -> None:
        self.lease.check()
        self.store.put_bytes(key, data, self._commit_check(commit_check))

    def put_file(self, key: str, path: str | os.PathLike[str], commit_check: Callable[[], None] | None = None) -> None:
        self.lease.check()
        self.store.put_file(key, path, self._commit_check(commit_check))

    def create_if_absent(self, key: str, data: bytes) -> bool:
        self.lease.check()
        return self.store.create_if_absent(key, data)

    def honours_conditional_create(self) -> bool:
        return self.store.honours_conditional_create()

    def get_bytes(self, key: str) -> bytes:
        return self.store.get_bytes(key)

    def exists(self, key: str) -> bool:
        return self.store.exists(key)

    def list(self, prefix: str = "") -> list[str]:
        return self.store.list(prefix)

    def local_copy(self, key: str) -> AbstractContextManager[Path]:
        """The inner store's (a local store's own file, S3 streamed to disk): a read, not fenced."""
        return self.store.local_copy(key)

    def delete(self, key: str) -> None:
        self.lease.check()
        self.store.delete(key)

    def remove_temp(self, prefix: str) -> int:
        self.lease.check()
        return self.store.remove_temp(prefix)


@contextmanager
def held(store: ObjectStore, prefix: str, ttl_s: float = TTL_S) -> Iterator[ObjectStore]:
    """Hold the lease of ``prefix`` for a short write: yields the store fenced by it (LeaseHeld if a live process has it)."""
    lease = Lease(store, prefix, ttl_s)
    lease.acquire()
    try:
        yield lease.fenced()
    finally:
        lease.release()
