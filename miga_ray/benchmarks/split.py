"""One render split over N Ray workers: its true schedule with a stand-in model that sleeps S seconds per call.

``miga bench split --preset P --frames F --workers 1,2,4,8 --call-seconds S [--sampler fifo|miga]`` builds the
preset's engine for F frames, runs its calls through the split render's executor (``cluster.split``) on N
stand-in worker actors, and prints one JSON line per N: ``calls``, ``critical_path`` (calls),
``predicted_speedup`` (the dry call graph list-scheduled on N workers with the executor's lookahead),
``predicted_steady_speedup`` (the same between F/2 and F frames: the fill and the tail cancel out),
``measured_speedup`` (wall time on 1 worker over wall time on N; on S x calls when N=1 is not run),
``wall_s``, ``overhead_ms_per_call`` (wall time beyond the predicted makespan, per call),
``driver_cpu_ms_per_call`` (the driver process's CPU time per call) and ``load`` (1-minute load average); with
``--predict-only``, the predictions alone, without Ray. Every call of
the schedule runs, reflection's judging included (a barrier); the stand-in's latents are zeros, so
reflection never grows candidates. It starts a local Ray on 127.0.0.1 (run it inside ``unshare -rn``
like the tests); the stand-ins claim no CPU, so 8 of them fit on a 2-core machine.

Example: unshare -rn sh -c 'ip link set lo up && miga bench split --preset wan2.1-1.3b --frames 1000 --workers 1,2,4,8 --call-seconds 0.05'
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import ray
import torch

from miga_ray.cluster.runtime import connect
from miga_ray.cluster.split import RayExecutor, lookahead_for
from miga_ray.models.decode import latents_for_frames
from miga_ray.sampling import PRESETS, StreamingEngine, get_preset
from miga_ray.sampling.deferred import Call, DeferredEngine
from miga_ray.sampling.graph import call_graph

from .options import at_least, int_list, positive_int
from .sampler import build

TEMPORAL = {"wan2.1-1.3b": 4, "vc2": 1}  # frames per latent of each preset's VAE (others: 1)
SHAPE = (1, 16, 8, 8)  # stand-in latents: small, so the driver's bookkeeping and Ray's dispatch are what is measured


class SleepWorker:
    """A stand-in model replica: each call sleeps, then writes zero latents."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def ready(self) -> bool:
        """Started."""
        return True

    def window(self, job: Any, call: Call, *inputs: torch.Tensor) -> tuple[Any, ...]:
        """One call: ``seconds`` of sleep, then one zero latent per written slot, then True."""
        time.sleep(self.seconds)
        return (*[torch.zeros(SHAPE) for k in call.kept if k], True)


def engine_for(preset: str, sampler: str, frames: int) -> StreamingEngine:
    """The preset's engine for ``frames`` frames on a zero-cost model (never called: the calls run on the stand-ins)."""
    return build(get_preset(preset), sampler, latents_for_frames(frames, TEMPORAL.get(preset, 1)), SHAPE)


def measure(preset: str, sampler: str, frames: int, actors: list[Any]) -> tuple[float, float, dict[str, int]]:
    """Wall seconds of the whole schedule on the stand-in ``actors``, the driver process's CPU seconds meanwhile
    (all its threads: the engine, the executor, Ray's client), and the executor's counts."""
    executor = RayExecutor(actors, None)
    engine = DeferredEngine(engine_for(preset, sampler, frames), executor, lookahead_for(len(actors)))
    start, cpu = time.perf_counter(), time.process_time()
    while not engine.done:
        engine.step()
    return time.perf_counter() - start, time.process_time() - cpu, dict(executor.stats)


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Print one JSON line per worker count."""
    parser = argparse.ArgumentParser(prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="wan2.1-1.3b")
    parser.add_argument("--frames", type=positive_int, default=1000)
    parser.add_argument("--workers", type=int_list, default=[1, 2, 4, 8], help="comma-separated worker counts")
    parser.add_argument("--call-seconds", type=at_least(float, 0.0, strict=True), default=0.05, help="seconds each stand-in call sleeps")
    parser.add_argument("--sampler", choices=("fifo", "miga"), default="miga")
    parser.add_argument("--predict-only", action="store_true", help="print the call graph's predictions without starting Ray")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    graph = call_graph(engine_for(args.preset, args.sampler, args.frames))
    half = call_graph(engine_for(args.preset, args.sampler, max(1, args.frames // 2)))
    calls, path = len(graph.nodes), graph.critical_path()
    rows = []
    for n in sorted(args.workers):
        ahead = lookahead_for(n)
        span, span_half = graph.makespan(n, ahead), half.makespan(n, ahead)
        rows.append({
            "preset": args.preset, "sampler": args.sampler, "frames": args.frames, "workers": n, "calls": calls, "critical_path": path,
            "lookahead": ahead, "call_seconds": args.call_seconds,
            "predicted_speedup": round(calls / span, 3),
            "predicted_steady_speedup": round((calls - len(half.nodes)) / max(1, span - span_half), 3),
            "predicted_s": round(span * args.call_seconds, 2),
        })  # fmt: skip
    if args.predict_only:
        for row in rows:
            print(json.dumps(row), flush=True)
        return
    started = connect(num_cpus=2, object_store_mb=128)
    actors = [ray.remote(SleepWorker).options(num_cpus=0, max_restarts=0).remote(args.call_seconds) for _ in range(max(args.workers))]
    try:
        ray.get([a.ready.remote() for a in actors])
        base = None
        for row in rows:
            n = row["workers"]
            wall, cpu, stats = measure(args.preset, args.sampler, args.frames, actors[:n])
            base = wall if n == 1 else base
            row |= {"measured_speedup": round((base or calls * args.call_seconds) / wall, 3), "wall_s": round(wall, 2),
                    "overhead_ms_per_call": round(1000 * (wall - row["predicted_s"]) / calls, 3),
                    "driver_cpu_ms_per_call": round(1000 * cpu / calls, 3), "retried": stats.get("retried", 0),
                    "load": round(os.getloadavg()[0], 1), "cpus": os.cpu_count()}  # fmt: skip
            print(json.dumps(row), flush=True)
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()

if __name__ == "__main__":
    main()
