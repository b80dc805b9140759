"""Measuring a render's parts: device-synchronised stopwatches around the model and the decoder, peak
memory, and which weights a number belongs to.

Imports only torch, ``sampling`` and ``models``, so the GPU script (no Ray, PyAV or boto3 there) can use it.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from miga_ray.models import toy_checkpoint
from miga_ray.models.decode import StreamingDecoder
from miga_ray.models.registry import LoadedModel
from miga_ray.sampling import StreamingEngine, WindowRunner, sample_base_clip

T = TypeVar("T")
PROMPT = "a red circle moving over sand"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so wall time counts GPU work where it ran."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Seconds spent inside the calls it runs, and how many; synchronised with the device on both sides."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds, self.calls = device, 0.0, 0

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, its time added."""
        synchronize(self.device)
        start = time.perf_counter()
        out = fn(*args)
        synchronize(self.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


class TimedDecoder:
    """A StreamingDecoder whose pushes run on a stopwatch."""

    def __init__(self, inner: StreamingDecoder, watch: Stopwatch) -> None:
        self.inner, self.watch = inner, watch

    def push(self, latents: Tensor) -> Tensor:
        return self.watch.run(self.inner.push, latents)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class TimedModel:
    """A LoadedModel whose denoiser calls (``forward``, with the batch rows they ran) and decoder pushes
    (``decode``) are timed; everything else is the model's own. Pass it wherever a LoadedModel goes."""

    def __init__(self, inner: LoadedModel) -> None:
        self.inner = inner
        self.reset()

    def denoiser(self, latents: Tensor, timesteps: Tensor, context: Any) -> Tensor:
        self.rows += latents.shape[0]
        return self.forward.run(self.inner.denoiser, latents, timesteps, context)

    def decoder(self) -> TimedDecoder:
        return TimedDecoder(self.inner.decoder(), self.decode)

    def reset(self) -> None:
        """Zero both stopwatches and the row count."""
        self.forward, self.decode = Stopwatch(self.inner.device), Stopwatch(self.inner.device)
        self.rows = 0  # model forwards: a window under classifier-free guidance is 2 rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Cost:
    """One measured run: output frames, window calls, model forwards, and where its wall time went (s)."""

    sampler: str
    frames: int
    calls: int
    forwards: int
    wall: float
    model: float
    decode: float

    @property
    def other(self) -> float:
        return self.wall - self.model - self.decode

    def row(self) -> str:
        """A markdown table row: per output frame, forwards and milliseconds of model, decode, other, wall."""
        f = self.frames
        return (f"| {self.sampler} | {f} | {self.calls} | {self.forwards} | {self.forwards / f:.3f} | {1000 * self.model / f:.1f} | "
                f"{1000 * self.decode / f:.1f} | {1000 * self.other / f:.1f} | {1000 * self.wall / f:.1f} |")  # fmt: skip


COST_HEADER = (
    "| sampler | output frames | window calls | model forwards | forwards / frame | model ms / frame | decode ms / frame "
    "| other ms / frame | wall ms / frame |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def measure_base(model: TimedModel, runner: WindowRunner, window: int) -> Cost:
    """The base model's own sampler: one window of ``window`` latents from noise, all at one level,
    T levels to clean, then the clip decoded."""
    model.reset()
    decoder = model.decoder()
    start = time.perf_counter()
    clip = sample_base_clip(runner, window)
    frames = decoder.push(torch.stack(clip, dim=2)).shape[1]
    synchronize(model.device)
    return Cost("base", frames, runner.counters.total_calls, model.rows, time.perf_counter() - start, model.forward.seconds, model.decode.seconds)


def measure_stream(model: TimedModel, engine: StreamingEngine, sampler: str, frames: int) -> Cost:
    """A streaming engine run to the end with every clean latent decoded as it arrives (as a render
    does); ``frames`` caps the output frames counted (the last latent may decode a few past the video)."""
    model.reset()
    decoder = model.decoder()
    start = time.perf_counter()
    decoded = 0
    for _, latent in engine:
        decoded += decoder.push(latent.unsqueeze(2)).shape[1]
    synchronize(model.device)
    return Cost(sampler, min(frames, decoded), engine.counters.total_calls, model.rows, time.perf_counter() - start, model.forward.seconds, model.decode.seconds)


def model_identity(name: str) -> str:
    """Which weights a number belongs to: for a model directory (the shipped toy's included) the first 12 hex
    digits of the sha256 of its transformer and VAE weight files, else the name itself."""
    root = toy_checkpoint(name)
    files = {part: root / part / "diffusion_pytorch_model.safetensors" for part in ("transformer", "vae")}
    hashes = [f"{part} sha256 {hashlib.sha256(f.read_bytes()).hexdigest()[:12]}" for part, f in files.items() if f.is_file()]
    return f"{name} ({', '.join(hashes)})" if hashes else name


def load_average() -> str:
    """The machine's 1/5/15-minute load averages, for a shared machine's record."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def reset_peaks(device: torch.device) -> None:
    """Start new high-water marks: this process's peak RSS (Linux ``clear_refs``) and the GPU's peak allocation."""
    Path("/proc/self/clear_refs").write_text("5")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_rss_bytes() -> int:
    """This process's resident-set high-water mark (``VmHWM``) since start or the last ``reset_peaks``."""
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    if match is None:
        raise RuntimeError("no VmHWM in /proc/self/status: peak memory is measured on Linux only")
    return int(match.group(1)) * 1024


def peak_device_bytes(device: torch.device) -> int | None:
    """Peak bytes allocated by torch on the GPU since the last reset, or None on the CPU."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
