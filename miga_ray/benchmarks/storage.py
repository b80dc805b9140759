"""Storage cost of a render: S3 (SeaweedFS on loopback) against a local directory.

``python -m miga_ray.benchmarks.storage`` prints:

- the wall time of the same toy render (default 600 frames) into a local directory and into
  SeaweedFS, alternating, and their ratio (target: S3 at most 1.05x local);
- checkpoint size, the time the render loop spends per checkpoint (state_dict, serialise, hash,
  hand to the background uploader) and the time a synchronous checkpoint write takes to be stored;
- the time from a restart to the first new frame (resume from the newest checkpoint, rebuild the
  decoder cache, first new latent decoded), plus what a command-line restart adds before that
  (Python imports, model load).

The S3 server is ``miga_ray.storage.seaweed`` (the developer script ``infra/seaweedfs.sh``: ``weed
mini`` on loopback, an enforced identity with fresh random keys, free ports), stopped at the end.

Example: miga bench storage --frames 200 --repeats 2
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from miga_ray.config import RenderConfig, load_config
from miga_ray.engines import load_for
from miga_ray.models.registry import LoadedModel
from miga_ray.render import JobRun, Progress
from miga_ray.storage import CheckpointStore, JobLayout, LatentWriter, ObjectStore, open_store
from miga_ray.storage.seaweed import SeaweedServer

from .measure import model_identity

PROMPT = "a red circle moving over sand"
BUCKET = "miga-bench"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ReadTimer(ObjectStore):
    """An ObjectStore that forwards to another and adds up the seconds spent in reads (get, list, exists)."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner, self.uri, self.read_seconds = inner, inner.uri, 0.0

    def _timed(self, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.read_seconds += time.perf_counter() - start

    def check(self) -> None:
        self.inner.check()

    def put_bytes(self, key: str, data: bytes, commit_check: Callable[[], None] | None = None) -> None:
        self.inner.put_bytes(key, data, commit_check)

    def put_file(self, key: str, path: str | os.PathLike[str], commit_check: Callable[[], None] | None = None) -> None:
        self.inner.put_file(key, path, commit_check)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def create_if_absent(self, key: str, data: bytes) -> bool:
        return self.inner.create_if_absent(key, data)

    def honours_conditional_create(self) -> bool:
        return self.inner.honours_conditional_create()

    def get_bytes(self, key: str) -> bytes:
        return self._timed(lambda: self.inner.get_bytes(key))

    def exists(self, key: str) -> bool:
        return self._timed(lambda: self.inner.exists(key))

    def list(self, prefix: str = "") -> list[str]:
        return self._timed(lambda: self.inner.list(prefix))


class TimedJobRun(JobRun):
    """A JobRun that records how long the render loop spends in each checkpoint and in resuming."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checkpoint_seconds: list[float] = []
        self.resume_seconds = 0.0

    def _checkpoint(self, *args: Any, **kwargs: Any) -> None:
        """Time the parent's checkpoint (state_dict, serialise, hash, enqueue, job.json)."""
        start = time.perf_counter()
        super()._checkpoint(*args, **kwargs)
        self.checkpoint_seconds.append(time.perf_counter() - start)

    def _resume(self, *args: Any, **kwargs: Any) -> int | None:
        """Time the parent's resume (newest checkpoint, decoder cache, re-decoding what the video lacks)."""
        start = time.perf_counter()
        try:
            return super()._resume(*args, **kwargs)
        finally:
            self.resume_seconds = time.perf_counter() - start


@dataclass
class Timed:
    """One whole render: wall and CPU seconds (this process; the S3 server apart) and its checkpoints."""

    wall: float
    cpu: float
    server_cpu: float
    checkpoints: list[float]


def timed_render(store: ObjectStore, cfg: RenderConfig, model: LoadedModel, job_id: str, server_pid: int | None) -> Timed:
    """Render a new job from scratch and time it."""
    run = TimedJobRun(store, PROMPT, cfg, model, job_id=job_id)
    server0 = cpu_seconds(server_pid) if server_pid else 0.0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    run.run()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return Timed(wall, cpu, (cpu_seconds(server_pid) - server0) if server_pid else 0.0, run.checkpoint_seconds)


def checkpoint_writes(store: ObjectStore, job_id: str, repeats: int) -> tuple[int, int, list[float]]:
    """The job's newest checkpoint: its step, stored size, and the seconds each of ``repeats`` synchronous saves of it takes."""
    ckpts = CheckpointStore(store, JobLayout(job_id).state)
    latest = ckpts.load_latest()
    if latest is None:
        raise RuntimeError(f"job {job_id} has no checkpoint (render more latents than checkpoint.every_latents)")
    step, tensors, meta = latest
    size = len(store.get_bytes(f"{JobLayout(job_id).state}/ckpt-{step:09d}.safetensors"))
    seconds = []
    for i in range(repeats):
        start = time.perf_counter()
        ckpts.save(step + 1 + i, tensors, meta)
        seconds.append(time.perf_counter() - start)
    return step, size, seconds


class _Stop(Exception):
    """Stands in for a crash."""


def crash_at(store: ObjectStore, cfg: RenderConfig, model: LoadedModel, job_id: str, stop_at: int) -> int:
    """Render a new job until frame ``stop_at`` and crash; return the latent its newest checkpoint resumes from."""

    def crash(progress: Progress) -> None:
        if progress.frames_done >= stop_at:
            raise _Stop

    try:
        JobRun(store, PROMPT, cfg, model, job_id=job_id).run(crash)
    except _Stop:
        pass
    latest = CheckpointStore(store, JobLayout(job_id).state).load_latest()
    if latest is None:
        raise RuntimeError(f"no checkpoint before frame {stop_at}: crash later or checkpoint more often")
    return latest[0]


def restart_to_first_frame(store: ObjectStore, cfg: RenderConfig, model: LoadedModel, job_id: str) -> tuple[float, float, float]:
    """Time a run of a crashed job from its start to its first new frame, then crash it again (the
    checkpoint pointer stays where it was, so this can be repeated). Returns that, the part spent in
    resuming, and the part of it spent reading from the store."""
    first: list[float] = []
    reads = ReadTimer(store)

    def first_frame(progress: Progress) -> None:
        if not first:
            first.append(time.perf_counter())
            raise _Stop

    run = TimedJobRun(reads, PROMPT, cfg, model, job_id=job_id)
    start = time.perf_counter()
    try:
        run.run(first_frame)
    except _Stop:
        pass
    if not first:
        raise RuntimeError("the restarted render produced no frame")
    return first[0] - start, run.resume_seconds, reads.read_seconds


def decoder_rebuild_seconds(store: ObjectStore, model: LoadedModel, job_id: str, step: int) -> tuple[float, int]:
    """Seconds to rebuild the VAE's causal cache at latent ``step`` from the stored latents before it, and their count."""
    decoder = model.decoder()
    latents = LatentWriter(store, JobLayout(job_id))
    before = [latents.read(i) for i in range(max(0, step - decoder.context_latents), step)]
    start = time.perf_counter()
    decoder.resume(torch.stack(before, dim=1).unsqueeze(0).to(model.device, model.dtype), step)
    return time.perf_counter() - start, len(before)


def stored_objects(store: ObjectStore, job_id: str) -> tuple[int, int]:
    """How many objects a job left in the store, and their total bytes."""
    keys = store.list(job_id + "/")
    return len(keys), sum(len(store.get_bytes(k)) for k in keys)


def import_seconds() -> float:
    """Seconds a fresh interpreter needs to import the command line and the render path."""
    code = "import time; t = time.perf_counter(); import miga_ray.cli, miga_ray.render; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def model_load_seconds(cfg: RenderConfig) -> float:
    """Seconds to load the configured model (again: files are in the page cache by now)."""
    start = time.perf_counter()
    load_for(cfg)
    return time.perf_counter() - start


def _s(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s (" + ", ".join(f"{v:.2f}" for v in values) + ")"


def _ms(values: list[float]) -> str:
    return f"median {1000 * statistics.median(values):.1f} ms, min {1000 * min(values):.1f}, max {1000 * max(values):.1f} (n={len(values)})"


def compare_renders(stores: dict[str, ObjectStore], server_pid: int, cfg: RenderConfig, model: LoadedModel, repeats: int) -> dict[str, list[Timed]]:
    """Render the same job into each store ``repeats`` times (ABBA order) and print wall and CPU time."""
    runs: dict[str, list[Timed]] = {name: [] for name in stores}
    timed_render(stores["local"], cfg.model_copy(update={"frames": 9}), model, "warm-up", None)  # first-call costs
    for i in range(repeats):
        for name in ("local", "s3") if i % 2 == 0 else ("s3", "local"):  # ABBA: drift in machine load cancels
            t = timed_render(stores[name], cfg, model, f"bench-{i}", server_pid if name == "s3" else None)
            runs[name].append(t)
            print(f"render -> {name:<5}: wall {t.wall:7.2f} s, CPU {t.cpu:7.2f} s (+ S3 server {t.server_cpu:5.2f} s), "
                  f"{len(t.checkpoints)} checkpoints", flush=True)  # fmt: skip
    wall = {name: statistics.median(t.wall for t in ts) for name, ts in runs.items()}
    cpu = {name: statistics.median(t.cpu + t.server_cpu for t in ts) for name, ts in runs.items()}
    print(f"S3 / local, medians: wall {wall['s3'] / wall['local']:.3f} (target <= 1.05); "
          f"CPU incl. the S3 server {cpu['s3'] / cpu['local']:.3f}")  # fmt: skip
    count, size = stored_objects(stores["s3"], "bench-0")
    print(f"one render leaves {count} objects, {size / 2**20:.1f} MiB (the playlist and job.json are also rewritten as it goes)")
    return runs


def report_checkpoints(stores: dict[str, ObjectStore], runs: dict[str, list[Timed]]) -> None:
    """Print checkpoint size, the render loop's time per checkpoint and a synchronous save's time, per store."""
    for name, store in stores.items():
        step, size, writes = checkpoint_writes(store, "bench-0", 10)
        in_loop = [c for t in runs[name] for c in t.checkpoints]
        print(f"checkpoint {name:<5}: {size / 1024:.1f} KiB stored (at latent {step}); render loop per checkpoint {_ms(in_loop)}; "
              f"synchronous save {_ms(writes)}")  # fmt: skip


def report_restarts(stores: dict[str, ObjectStore], cfg: RenderConfig, model: LoadedModel) -> None:
    """Crash a render half-way in each store, then print the time from a restart to its first new frame (3 times)."""
    stop_at = cfg.frames // 2
    for name, store in stores.items():
        step = crash_at(store, cfg, model, "bench-restart", stop_at)
        times = [restart_to_first_frame(store, cfg, model, "bench-restart") for _ in range(3)]
        rebuild, context = decoder_rebuild_seconds(store, model, "bench-restart", step)
        print(f"restart -> first new frame, {name:<5}: {_s([t[0] for t in times])}; resuming {_s([t[1] for t in times])}; "
              f"storage reads {_s([t[2] for t in times])}; rebuilding the decoder cache alone from {context} latents "
              f"{rebuild:.2f} s (crashed at frame {stop_at}, resumed from latent {step})")  # fmt: skip
    print(f"a command-line restart adds before that: imports {import_seconds():.2f} s, model load {model_load_seconds(cfg):.2f} s")


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Parse arguments, start SeaweedFS, print the three measurements."""
    parser = argparse.ArgumentParser(prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy", help="toy or a diffusers Wan directory")
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=2, help="renders per store, in the order local, S3, S3, local, ...")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared machine)")
    parser.add_argument("--set", action="append", default=[], help="extra config overrides, key=value")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(None, ["model.device=cpu", f"model.name={args.model}", *args.set], frames=args.frames)
    model = load_for(cfg)
    print(f"model {model_identity(args.model)}, {args.frames} frames, sampler {cfg.sampler.kind} preset {cfg.sampler.preset}, "
          f"checkpoint every {cfg.checkpoint.every_latents} latents / {cfg.checkpoint.every_seconds:g} s, {args.threads} torch thread(s)")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="miga-bench-storage-") as tmp, SeaweedServer(Path(tmp, "data"), BUCKET) as server:
        os.environ.update(server.aws_env())  # open_store finds the server exactly as the command line would
        stores = {"local": open_store(Path(tmp, "out")), "s3": open_store(f"{server.uri}/render")}
        runs = compare_renders(stores, server.proc.pid, cfg, model, args.repeats)
        report_checkpoints(stores, runs)
        report_restarts(stores, cfg, model)


if __name__ == "__main__":
    main()
