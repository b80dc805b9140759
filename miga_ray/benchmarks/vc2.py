"""VideoCrafter2's size and CPU cost: the full-size parameter counts, and the time of one window forward of
the full UNet (random weights, float32, one timestep per frame, batch 1) and of one frame through the
VAE decoder, at a reduced resolution.

    python -m miga_ray.benchmarks.vc2                                   # 128x128 pixels, 16 latents, 1 and 2 threads
    python -m miga_ray.benchmarks.vc2 --height 320 --width 512 --threads 2 --repeats 1

A sampler call under classifier-free guidance (CFG 12 in the vc2 preset) is two window forwards.

Example: miga bench vc2 --height 128 --width 128 --threads 1 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from miga_ray.models.vc2.model import VC2Config, VC2Model, build_parts, random_vc2, vc2_grid

PROMPT = "a corgi running on a lawn"


def parameter_counts() -> dict[str, int]:
    """Parameters of the full-size UNet, VAE decoder and text encoder as miga-ray builds them (on the meta device)."""
    with torch.device("meta"):
        parts = build_parts(VC2Config())
    return {name: sum(p.numel() for p in part.parameters()) for name, part in parts.named().items()}


def load_average() -> str:
    """1/5/15-minute load averages: on a shared machine, other work slows every number here."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def seconds(fn: Callable[[], object], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of ``repeats`` calls after one warm-up call (CPU time is
    what other work on a shared machine disturbs least)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return wall, cpu


def window_inputs(model: VC2Model, height: int, width: int, frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents, distinct per-frame timesteps spread over the 64-level grid (a MIGA-like window) and a text embedding."""
    x = torch.randn(1, model.latent_channels, frames, height // 8, width // 8, generator=torch.Generator().manual_seed(0))
    levels = torch.linspace(64, 1, frames).round().long()
    return x, vc2_grid(64).timesteps[levels].float(), model.text([PROMPT], model.device)


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Print parameter counts and CPU times."""
    parser = argparse.ArgumentParser(prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=128, help="pixels (multiple of 64)")
    parser.add_argument("--width", type=int, default=128, help="pixels (multiple of 64)")
    parser.add_argument("--frames", type=int, default=16, help="latents per window")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    print(f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, load average {load_average()}")
    counts = parameter_counts()
    listed = ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in counts.items())
    print(f"parameters (full size): {listed}, total {sum(counts.values()) / 1e6:.2f} M")
    print("  (text: OpenCLIP ViT-H-14's first 23 blocks, the penultimate-layer output; vae: encoder and decoder)")
    start = time.perf_counter()
    model = random_vc2(torch.device("cpu"), torch.float32)
    print(f"built the full UNet and VAE decoder with random weights in {time.perf_counter() - start:.1f} s")
    x, t, context = window_inputs(model, args.height, args.width, args.frames)
    decoder = model.decoder()
    print(f"one window forward: latents {tuple(x.shape)} ({args.height}x{args.width} pixels), float32, batch 1")
    for threads in args.threads:
        torch.set_num_threads(threads)
        unet, unet_cpu = seconds(lambda: model.denoiser(x, t, context), args.repeats)
        vae, vae_cpu = seconds(lambda: decoder.push(x[:, :, :1]), args.repeats)
        print(f"  {threads} thread(s): UNet window forward wall min {min(unet):.2f} s, median {statistics.median(unet):.2f} s, "
              f"CPU min {min(unet_cpu):.2f} s ({args.repeats} runs); VAE decode of one frame wall min {min(vae):.3f} s, "
              f"CPU min {min(vae_cpu):.3f} s; load average {load_average()}")  # fmt: skip

if __name__ == "__main__":
    main()
