"""Cost of the integrity work on a toy render (docs/PERF.md, issues 18 and 27): the end-to-end verification before
done, the rerun of a done job (every latent's and the video's sha256 checked, then skip), the video check of
``miga status`` and ``miga eval`` (``video.sha256``), and the job lease (acquire, one renewal, release), on a local
directory and on S3 (SeaweedFS on loopback); then the peak memory of ``miga render --init-video`` with a large clip
(2048x2048, 200 frames) against the same render without it, each in a fresh process.

Run inside a loopback-only network namespace, one torch thread:
    OMP_NUM_THREADS=1 unshare -rn sh -c 'ip link set lo up && exec "$0" "$@"' python jobs/integrity_cost.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from miga_ray.config import RenderConfig, load_config
from miga_ray.engines import load_for
from miga_ray.models.registry import LoadedModel
from miga_ray.render import JobRun
from miga_ray.storage import JobLayout, ObjectStore, open_store, video_problem
from miga_ray.storage.lease import Lease
from miga_ray.storage.seaweed import SeaweedServer

PROMPT = "a red circle moving over sand"
PEAK_RSS = """import resource, sys
from miga_ray.cli import main
sys.argv = ["miga", *sys.argv[1:]]
try:
    main()
finally:
    print(f"peak_rss_mib {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}", file=sys.stderr)
"""


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


def median_seconds(fn: Callable[..., object], *args: object, rounds: int = 5) -> float:
    """Median wall seconds of ``rounds`` calls of ``fn(*args)``; exits if one returns something false."""
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        if not fn(*args):
            sys.exit(f"{fn.__name__} failed")
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def rerun_skips(store: ObjectStore, cfg: RenderConfig, model: LoadedModel) -> bool:
    """The same render again: the done job is verified, then skipped."""
    return JobRun(store, PROMPT, cfg, model).run().skipped


def video_intact(store: ObjectStore, job_id: str) -> bool:
    """The check ``miga status`` and ``miga eval`` make of a done job's video."""
    return video_problem(store, JobLayout(job_id)) is None


def renders(stores: list[str], frames: int, tmp: Path) -> None:
    """Render once per store in the given order; print one line per render."""
    cfg = load_config(None, ["model.device=cpu"], frames=frames)
    model = load_for(cfg)
    server = SeaweedServer(tmp / "weed", bucket="perf")
    if "s3" in stores:
        server.start()
        os.environ.update(AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key, AWS_ENDPOINT_URL=server.endpoint,
                          AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)  # fmt: skip
    try:
        for n, name in enumerate(stores):
            store = open_store(f"s3://perf/r{n}" if name == "s3" else str(tmp / f"r{n}"))
            t0 = time.perf_counter()
            result = JobRun(store, PROMPT, cfg, model).run()
            wall = time.perf_counter() - t0
            rerun = median_seconds(rerun_skips, store, cfg, model)
            check = median_seconds(video_intact, store, result.job_id)
            acquire, renew, release = lease_seconds(store)
            lease = acquire + release + wall / 20.0 * renew  # one renewal every TTL_S / 3 = 20 s
            verify = result.timings["verify"]
            print(f"{name}: render {wall:.1f} s, verify {verify:.3f} s ({100 * verify / wall:.2f}%), rerun of the done job {1000 * rerun:.1f} ms, "
                  f"video check (status, eval) {1000 * check:.1f} ms, lease acquire/renew/release {1000 * acquire:.1f}/{1000 * renew:.1f}/"
                  f"{1000 * release:.1f} ms, lease per render {lease:.3f} s ({100 * lease / wall:.2f}%)", flush=True)  # fmt: skip
    finally:
        if "s3" in stores:
            server.stop()


def large_clip(path: Path, frames: int, side: int = 2048) -> Path:
    """An H.264 clip of ``frames`` frames of ``side`` x ``side`` (one flat frame repeated: quick to encode)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8, options={"preset": "ultrafast", "crf": "40"})
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.full((side, side, 3), 90, np.uint8), format="rgb24").reformat(format="yuv420p")
        for i in range(frames):
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def peak_rss_mib(args: list[str]) -> tuple[int, float]:
    """Peak RSS (MiB) and wall seconds of ``miga ARGS`` in a fresh process."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, *args], capture_output=True, text=True, check=False,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})  # fmt: skip
    if done.returncode != 0:
        sys.exit(done.stderr[-2000:])
    return int(done.stderr.rsplit("peak_rss_mib ", 1)[1].split()[0]), time.perf_counter() - t0


def init_video_memory(clip_frames: int, tmp: Path) -> None:
    """Peak RSS of a toy render continuing a 2048x2048 clip, and of the same render without it."""
    clip = large_clip(tmp / "large.mp4", clip_frames)
    frames = clip_frames + 41
    base = ["render", PROMPT, "--frames", str(frames), "--set", "model.device=cpu", "--set", "evaluation.enabled=false"]
    with_clip, with_s = peak_rss_mib([*base, "--out", str(tmp / "clip"), "--init-video", str(clip)])
    without, without_s = peak_rss_mib([*base, "--out", str(tmp / "plain")])
    raw = clip_frames * 2048 * 2048 * 3 / 2**20
    print(f"--init-video 2048x2048 x {clip_frames} frames ({raw:.0f} MiB as RGB), {frames}-frame render: peak RSS {with_clip} MiB "
          f"({with_s:.0f} s) vs {without} MiB without the clip ({without_s:.0f} s)", flush=True)  # fmt: skip


def main() -> None:
    """Parse the options, then measure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="local,s3,s3,local", help="render stores in order: local and/or s3, comma-separated")
    parser.add_argument("--frames", type=int, default=600, help="frames per render")
    parser.add_argument("--clip-frames", type=int, default=200, help="frames of the large --init-video clip (0: skip)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="integrity-cost-"))
    renders([s for s in args.stores.split(",") if s], args.frames, tmp)
    if args.clip_frames:
        init_video_memory(args.clip_frames, tmp)


if __name__ == "__main__":
    main()
