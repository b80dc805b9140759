"""What the render-path benchmarks (frames, memory, overhead) share: their options, the configuration
they build, the model loaded as ``miga render`` loads it, and one timed ``JobRun`` into a temporary
local directory."""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from miga_ray.config import RenderConfig, load_config
from miga_ray.engines import load_for
from miga_ray.job import JobSpec, render_job
from miga_ray.storage import open_store

from .measure import PROMPT, Cost, TimedModel, load_average, model_identity
from .options import positive_int

SAMPLERS = ("miga", "fifo")


def sampler_list(text: str) -> list[str]:
    """An argparse type: comma-separated sampler names out of ``SAMPLERS``."""
    names = text.split(",")
    unknown = [n for n in names if n not in SAMPLERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown sampler(s) {', '.join(unknown)}; allowed: {', '.join(SAMPLERS)}")
    return names


def parser(doc: str, prog: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options every render-path benchmark takes."""
    p = argparse.ArgumentParser(prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy", help="toy | a diffusers Wan directory | wan2.1-1.3b-random (default: toy)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1: steadier timings on a shared machine)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a render config override, e.g. sampler.num_levels=16")
    return p


def config(args: argparse.Namespace, sampler: str, frames: int) -> RenderConfig:
    """The render configuration of one measurement: the command's model, device and overrides."""
    sets = [f"model.name={args.model}", f"model.device={args.device}", f"sampler.kind={sampler}", *args.set]
    return load_config(None, sets, frames=frames)


def header(args: argparse.Namespace, cfg: RenderConfig) -> str:
    """What the numbers belong to: the weights, device, threads, sampler grid and the machine's load."""
    s = cfg.sampler
    return (f"model {model_identity(args.model)}, device {args.device}, {args.threads} torch thread(s), preset {s.preset} "
            f"(T={s.levels()}, CFG {s.guidance_scale():g}), load average {load_average()}")  # fmt: skip


def load(args: argparse.Namespace, cfg: RenderConfig) -> TimedModel:
    """Set the torch threads and load the model as ``miga render`` does, with its stopwatches."""
    torch.set_num_threads(args.threads)
    return TimedModel(load_for(cfg))


def render(model: TimedModel, cfg: RenderConfig) -> Cost:
    """One whole job as ``miga render`` runs it (setup, sampling, decoding, segments, latents, checkpoints, final
    video, and its evaluation when ``evaluation.enabled``) into a fresh temporary directory, timed."""
    model.reset()
    with tempfile.TemporaryDirectory(prefix="miga-bench-") as out:
        start = time.perf_counter()
        result = render_job(open_store(out), JobSpec(PROMPT, cfg), model)
        wall = time.perf_counter() - start
    calls = sum(result.record.metrics["model_calls"]["calls"].values())
    return Cost(cfg.sampler.kind, cfg.frames, calls, model.rows, wall, model.forward.seconds, model.decode.seconds)
