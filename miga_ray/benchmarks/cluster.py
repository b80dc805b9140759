"""Ray cluster costs on this machine: batch throughput with 1 vs 2 workers, the driver's overhead per
job, and self-reflection latency with candidates grown on 1 vs 2 workers.

``python -m miga_ray.benchmarks.cluster [--model toy] [--jobs 4] [--frames 29]`` starts a local Ray
on 127.0.0.1 (run it inside ``unshare -rn`` like the tests), prints tables, shuts Ray down.
Throughput is output latents per second of wall time from the first dispatch to the last result,
with every worker's model already loaded; the driver overhead of a job is its round trip (dispatch to
result in the driver) minus the time the worker spent on it.

Example: unshare -rn sh -c 'ip link set lo up && miga bench cluster --frames 29'
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import ray

from miga_ray.cluster.batch import BatchDriver
from miga_ray.cluster.jobs import BatchJob
from miga_ray.cluster.runtime import WorkerSpec, connect, start_workers
from miga_ray.config import RenderConfig, load_config

from .measure import model_identity

SMALL = ["model.device=cpu", "sampler.num_levels=16", "sampler.miga.stage2_levels=3", "sampler.miga.reflect_after=4", "video.fps=8"]
PROMPTS = ["a red circle moving over sand", "a blue circle moving over grass", "a yellow circle moving over snow", "a green circle moving over water"]


def config(model: str, frames: int, *extra: str) -> RenderConfig:
    return load_config(None, [*SMALL, f"model.name={model}", *extra], frames=frames)


def ready(workers: list) -> float:
    """Seconds until every worker has loaded the model."""
    t0 = time.perf_counter()
    ray.get([w.ready.remote() for w in workers])
    return time.perf_counter() - t0


def throughput(model: str, n: int, threads: int, jobs: int, frames: int) -> dict[str, float]:
    """One batch of ``jobs`` jobs on ``n`` workers with ``threads`` torch threads each."""
    cfg = config(model, frames)
    workers = start_workers(n, cfg, WorkerSpec(num_cpus=threads, threads=threads))
    try:
        startup = ready(workers)
        batch = [BatchJob(f"j{i}", PROMPTS[i % len(PROMPTS)], cfg.model_copy(update={"seed": i}), i + 1) for i in range(jobs)]
        with tempfile.TemporaryDirectory() as out:
            result = BatchDriver(workers, out, poll_s=1.0).run(batch)
    finally:
        for w in workers:
            ray.kill(w)
    assert not result.failed, [s.errors for s in result.failed]
    latents = sum(s.outcome.latents for s in result.states)
    overheads = [s.overhead_s for s in result.states]
    return {"startup_s": startup, "wall_s": result.wall_s, "latents": latents, "rate": latents / result.wall_s,
            "overhead_ms": 1000 * statistics.mean(overheads), "overhead_max_ms": 1000 * max(overheads)}  # fmt: skip


def reflection(model: str, n: int, frames: int) -> dict[str, float]:
    """Mean latency of one reflection (3 candidates) with candidates on ``n`` workers; one job, peers idle."""
    cfg = config(model, frames, "sampler.miga.reflect_delta=0", "sampler.miga.reflect_during=always")
    workers = start_workers(n, cfg, WorkerSpec(num_cpus=1, threads=1))
    try:
        ready(workers)
        with tempfile.TemporaryDirectory() as out:
            outcome = ray.get(workers[0].render.remote(BatchJob("r", PROMPTS[0], cfg, 1), out))
        stats = ray.get(workers[0].get_stats.remote())
    finally:
        for w in workers:
            ray.kill(w)
    return {"reflections": stats["reflections"], "ms": stats["reflect_ms"] / max(1, stats["reflections"]),
            "sent": stats["sent_requests"], "local": stats["local_requests"], "run_s": outcome.run_s}  # fmt: skip


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Start a local Ray, print the throughput and reflection tables, shut Ray down."""
    parser = argparse.ArgumentParser(prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("MIGA_TEST_TOY", "toy"))
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--frames", type=int, default=29)
    parser.add_argument("--reflect-frames", type=int, default=41)
    args = parser.parse_args(argv)
    started = connect(num_cpus=2, object_store_mb=128)
    try:
        print(f"model {model_identity(args.model)}, {args.jobs} jobs x {args.frames} frames, T=16, CPU ({os.cpu_count()} cores)\n")
        print("| workers x torch threads | worker start (s) | batch wall (s) | output latents | latents/s | driver overhead per job (ms, mean / max) |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for n, threads in ((1, 1), (1, 2), (2, 1)):
            r = throughput(args.model, n, threads, args.jobs, args.frames)
            print(f"| {n} x {threads} | {r['startup_s']:.1f} | {r['wall_s']:.1f} | {r['latents']} | {r['rate']:.2f} | {r['overhead_ms']:.0f} / {r['overhead_max_ms']:.0f} |", flush=True)
        print(f"\nreflection forced (delta 0, always), {args.reflect_frames} frames, 3 candidates per reflection\n")
        print("| candidates on | reflections | mean latency (ms) | requests sent to the peer / grown locally | job time (s) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for n in (1, 2):
            r = reflection(args.model, n, args.reflect_frames)
            print(f"| {n} worker{'s' if n > 1 else ''} | {r['reflections']} | {r['ms']:.0f} | {r['sent']} / {r['local']} | {r['run_s']:.1f} |", flush=True)
    finally:
        if started:
            ray.shutdown()


if __name__ == "__main__":
    main()
