"""The job lease: one holder at a time on a local directory and on S3 (SeaweedFS), stale leases taken over."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time

import pytest

from miga_ray.storage import ObjectStore
from miga_ray.storage.lease import Lease, LeaseHeld, LeaseLost


def dead_pid() -> int:
    """The id of a process that has just exited."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def plant(store: ObjectStore, generation: int, **fields: object) -> None:
    """Write a lease generation as another process would have."""
    record = {"holder": "other:1:abc", "host": "elsewhere", "pid": 1, "expires": time.time() + 600} | fields
    store.put_bytes(f"job/lease/{generation:010d}.json", json.dumps(record).encode())


def test_conditional_create(store: ObjectStore) -> None:
    assert store.create_if_absent("job/x", b"first") and not store.create_if_absent("job/x", b"second")
    assert store.get_bytes("job/x") == b"first" and store.honours_conditional_create()
    assert not [k for k in store.list("job/") if "tmp" in k]


def test_one_holder_then_the_next(store: ObjectStore) -> None:
    first = Lease(store, "job")
    first.acquire()
    second = Lease(store, "job")
    with pytest.raises(LeaseHeld, match=rf"job job is being written by {first.holder} \(pid \d+ on {socket.gethostname()}\) until"):
        second.acquire()
    first.release()
    second.acquire()
    assert store.list("job/lease/") == ["job/lease/0000000000.json"]  # a released generation is gone
    second.release()
    assert store.list("job/lease/") == []


@pytest.mark.parametrize("stale", ["expired", "dead-pid-on-this-host"])
def test_a_stale_lease_is_taken_over(store: ObjectStore, stale: str) -> None:
    if stale == "expired":
        plant(store, 4, expires=time.time() - 1)
    else:
        plant(store, 4, host=socket.gethostname(), pid=dead_pid())
    lease = Lease(store, "job")
    lease.acquire()
    assert lease.generation == 5 and store.list("job/lease/") == ["job/lease/0000000005.json"]
    lease.release()


def test_a_live_lease_elsewhere_is_respected(store: ObjectStore) -> None:
    plant(store, 0, host="another-node", pid=dead_pid())  # that pid means nothing on another host
    with pytest.raises(LeaseHeld, match="other:1:abc"):
        Lease(store, "job").acquire()


def test_racing_takers_have_one_winner(store: ObjectStore) -> None:
    leases = [Lease(store, "job") for _ in range(4)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(leases))

    def take(lease: Lease) -> None:
        barrier.wait()
        try:
            lease.acquire()
            outcomes.append("won")
        except LeaseHeld:
            outcomes.append("held")

    threads = [threading.Thread(target=take, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["held", "held", "held", "won"]
    for lease in leases:
        lease.release()


def test_a_holder_that_was_taken_over_stops(store: ObjectStore) -> None:
    lease = Lease(store, "job", ttl_s=3.0)
    lease.acquire()
    plant(store, 1)  # another process took over (say, after this one stalled past its expiry)
    deadline = time.monotonic() + 10
    while lease.lost is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(LeaseLost, match="taken over by other:1:abc"):
        lease.check()
    lease.release()
    assert store.exists("job/lease/0000000001.json"), "a lost lease must not delete the new holder's"


def test_a_holder_whose_generation_was_reused_stops(store: ObjectStore) -> None:
    """Taken over and released by another, then taken again under the same generation number: still lost."""
    lease = Lease(store, "job", ttl_s=3.0)
    lease.acquire()
    plant(store, 0)
    deadline = time.monotonic() + 10
    while lease.lost is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(LeaseLost):
        lease.check()
    lease.release()
    assert json.loads(store.get_bytes("job/lease/0000000000.json"))["holder"] == "other:1:abc"


def test_renewal_extends_the_expiry(store: ObjectStore) -> None:
    lease = Lease(store, "job", ttl_s=3.0)  # renewed every second: generous for a loaded machine
    lease.acquire()
    first = json.loads(store.get_bytes("job/lease/0000000000.json"))["expires"]
    time.sleep(1.6)
    assert json.loads(store.get_bytes("job/lease/0000000000.json"))["expires"] > first + 0.5
    lease.check()
    lease.release()


def test_a_holder_past_its_expiry_is_fenced_by_the_clock_before_its_renewal_notices(store: ObjectStore) -> None:
    """A stopped process's renewal thread notices nothing; its next write checks the clock and is refused, also
    through an uploader, which stops at once instead of retrying."""
    from miga_ray.storage import Uploader

    lease = Lease(store, "job", ttl_s=3.0)
    lease.acquire()
    fenced = lease.fenced()
    fenced.put_bytes("job/a", b"1")
    lease._stop.set()  # as if the process were stopped: no renewal
    lease._thread.join()
    time.sleep(max(0.0, lease.expires - time.time()) + 0.1)
    assert lease.lost is None
    with pytest.raises(LeaseLost, match="its lease expired at"):
        fenced.put_bytes("job/b", b"2")
    uploader = Uploader(fenced, deadline_s=60)
    t0 = time.monotonic()
    with pytest.raises(LeaseLost):
        uploader.submit("job/c", b"3")
        uploader.flush()
    assert time.monotonic() - t0 < 5 and not store.exists("job/b") and not store.exists("job/c")
    lease.release()
