"""Cost of the integrity work on a 600-frame toy render (docs/PERF.md, issue 18): the end-to-end
verification before done, the rerun of a done job (verification, then skip), and the job lease
(acquire, one renewal, release), on a local directory and on S3 (SeaweedFS on loopback).

Run inside a loopback-only network namespace, one torch thread:
    OMP_NUM_THREADS=1 unshare -rn sh -c 'ip link set lo up && exec "$0" "$@"' python jobs/integrity_cost.py
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from miga_ray.config import load_config
from miga_ray.engines import load_for
from miga_ray.render import JobRun
from miga_ray.storage import ObjectStore, open_store
from miga_ray.storage.lease import Lease
from miga_ray.storage.seaweed import SeaweedServer

PROMPT = "a red circle moving over sand"
FRAMES = 600


def lease_seconds(store: ObjectStore, rounds: int = 10) -> tuple[float, float, float]:
    """Median seconds of one lease acquire, renewal and release on ``store``."""
    samples = []
    for _ in range(rounds):
        lease = Lease(store, "lease-bench")
        t0 = time.perf_counter()
        lease.acquire()
        t1 = time.perf_counter()
        lease.renew()
        t2 = time.perf_counter()
        lease.release()
        samples.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
    return tuple(statistics.median(s[k] for s in samples) for k in range(3))  # type: ignore[return-value]


def main() -> None:
    """Render once per store in the order local, S3, S3, local; print one line per render."""
    cfg = load_config(None, ["model.device=cpu"], frames=FRAMES)
    model = load_for(cfg)
    tmp = Path(tempfile.mkdtemp(prefix="integrity-cost-"))
    server = SeaweedServer(tmp / "weed", bucket="perf")
    server.start()
    os.environ.update(AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key, AWS_ENDPOINT_URL=server.endpoint,
                      AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)  # fmt: skip
    try:
        for name, out in [("local", str(tmp / "a")), ("s3", "s3://perf/a"), ("s3", "s3://perf/b"), ("local", str(tmp / "b"))]:
            store = open_store(out)
            t0 = time.perf_counter()
            result = JobRun(store, PROMPT, cfg, model).run()
            wall = time.perf_counter() - t0
            t0 = time.perf_counter()
            assert JobRun(store, PROMPT, cfg, model).run().skipped
            rerun = time.perf_counter() - t0
            acquire, renew, release = lease_seconds(store)
            lease = acquire + release + wall / 20.0 * renew  # one renewal every TTL_S / 3 = 20 s
            verify = result.timings["verify"]
            print(f"{name}: render {wall:.1f} s, verify {verify:.3f} s ({100 * verify / wall:.2f}%), rerun of the done job {rerun:.3f} s, "
                  f"lease acquire/renew/release {1000 * acquire:.1f}/{1000 * renew:.1f}/{1000 * release:.1f} ms, "
                  f"lease per render {lease:.3f} s ({100 * lease / wall:.2f}%)", flush=True)  # fmt: skip
    finally:
        server.stop()


if __name__ == "__main__":
    main()
