"""The Wan2.1-1.3B architecture with random weights on a GPU: one forward of a window, seconds per output
frame for the base sampler, FIFO-Diffusion and MIGA (the wan2.1-1.3b preset: T=54, window 21, CFG 5),
and peak GPU memory.

Needs torch, diffusers and transformers only (no Ray, PyAV, boto3 or pydantic): the engines are built
from the preset here rather than through the render path, and frames are decoded but not written.
It always times one window call first (f latents at f different levels; two rows under CFG, as one
batch), after a warm-up call, and the decode of one window. Then the parts (``--parts``):

- ``steady`` (default): a whole 81-frame FIFO or MIGA video costs hundreds of full-size window calls,
  more than a lent GPU's command limit, so each sampler's queue is first brought to steady state with a
  zero-cost denoiser (``--warm`` output latents), which also counts its exact calls per output latent
  over ``--span`` latents; then the real model runs ``--calls`` window calls from that state, timed, with
  the GPU's peak allocation; MIGA does so at two queue positions (``--memory-latents``) to show that
  memory does not grow with length. Seconds per frame = calls per latent x measured seconds per call +
  measured decode, over frames per latent: composed of measured parts, and printed as such.
- ``frames``: base, FIFO and MIGA (``--samplers``) run whole for ``--frames`` frames (small sizes).
- ``memory``: MIGA run whole for each of ``--memory-frames`` with the peaks reset in between.

    python -m miga_ray.benchmarks.gpu                                  # 832x480, bf16, cuda: forward + steady
    python -m miga_ray.benchmarks.gpu --parts frames --samplers base
    python -m miga_ray.benchmarks.gpu --model toy --preset toy --device cpu --height 64 --width 64 --parts steady,frames,memory --frames 13 --memory-frames 13,25

Example: miga bench gpu --parts frames --samplers base,fifo --frames 81
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from miga_ray.models.decode import frames_of_latents, latents_for_frames
from miga_ray.models.registry import load_model
from miga_ray.sampling import (
    Conditioning,
    FifoEngine,
    MigaEngine,
    NoiseSource,
    Preset,
    StreamingEngine,
    WindowRunner,
    get_preset,
    guided_forward,
)

from .measure import (
    COST_HEADER,
    PROMPT,
    TimedModel,
    load_average,
    measure_base,
    measure_stream,
    model_identity,
    peak_device_bytes,
    peak_rss_bytes,
    reset_peaks,
)

MIB = 2**20


class CallBudgetSpent(Exception):
    """Raised by ``BudgetedDenoiser`` once its calls are used up: the run stops mid-sweep, on purpose."""


class BudgetedDenoiser:
    """The real model for ``calls`` window calls, then ``CallBudgetSpent``; a zero output (no work) before
    ``arm()`` so a queue can be brought to steady state for free."""

    def __init__(self, model: TimedModel) -> None:
        self.model, self.left, self.armed = model, 0, False

    def arm(self, calls: int) -> None:
        """Run the real model for the next ``calls`` calls."""
        self.left, self.armed = calls, True
        self.model.reset()

    def __call__(self, latents: torch.Tensor, timesteps: torch.Tensor, context: object) -> torch.Tensor:
        if not self.armed:
            return torch.zeros_like(latents)
        if self.left == 0:
            raise CallBudgetSpent
        self.left -= 1
        return self.model.denoiser(latents, timesteps, context)


def steady_state(
    model: TimedModel, preset: Preset, sampler: str, height: int, width: int, warm: int, span: int, calls: int
) -> tuple[float, float, int | None]:
    """Calls per output latent counted over ``span`` latents after ``warm`` (zero-cost model), then mean
    seconds of ``calls`` real window calls from there and the GPU's peak bytes allocated during them."""
    # The video runs on well past the measured latents: near its end the stage-1 queue drains and a latent
    # costs fewer calls (a 512-latent margin gave Wan's MIGA 4.9 calls per latent instead of 6.53).
    margin = 2 * preset.num_levels * (preset.miga.group + preset.miga.window)  # > stage-1 queue + stage-2/refine lag
    engine = make_engine(model, preset, sampler, frames_of_latents(warm + span + margin, model.vae_scale[0]), height, width)
    budget = BudgetedDenoiser(model)
    engine.runner.model = budget
    while engine.emitted < warm:
        engine.pull()
    before = engine.counters.total_calls
    while engine.emitted < warm + span:
        engine.pull()
    per_latent = (engine.counters.total_calls - before) / span
    reset_peaks(model.device)
    budget.arm(calls)
    try:
        while engine.pull() is not None:
            pass
    except CallBudgetSpent:
        pass
    return per_latent, model.forward.seconds / model.forward.calls, peak_device_bytes(model.device)


def time_decode(model: TimedModel, preset: Preset, height: int, width: int) -> tuple[float, int]:
    """Seconds to decode one window of latents (after a warm-up decode) and the frames it gives."""
    runner = make_runner(model, preset, height, width)
    f = preset.miga.window
    x = runner.noise.frames("bench", list(range(f)), [0] * f)
    model.decoder().push(x)
    model.reset()
    frames = model.decoder().push(x).shape[1]
    return model.decode.seconds, frames


def make_runner(model: TimedModel, preset: Preset, height: int, width: int, seed: int = 0) -> WindowRunner:
    """The preset's solver on the model's grid, the prompt with CFG and the noise at ``height`` x ``width``."""
    s = model.vae_scale[1]
    pos, neg = model.encode_prompt([PROMPT])
    noise = NoiseSource(seed, (1, model.latent_channels, height // s, width // s), model.dtype, model.device)
    solver = preset.solver(model.grid(preset.num_levels, preset.shift))
    return WindowRunner(model.denoiser, solver, Conditioning(pos, neg, preset.cfg_scale), noise)


def make_engine(model: TimedModel, preset: Preset, sampler: str, frames: int, height: int, width: int) -> StreamingEngine:
    """A FIFO or MIGA engine with the preset's settings for a video of ``frames`` frames."""
    runner = make_runner(model, preset, height, width)
    latents = latents_for_frames(frames, model.vae_scale[0])
    if sampler == "miga":
        return MigaEngine(runner, preset.miga, latents, model.dtype, model.device)
    return FifoEngine(runner, preset.fifo, latents, model.dtype, model.device)


def time_forward(model: TimedModel, preset: Preset, height: int, width: int, repeats: int) -> tuple[float, int]:
    """Mean seconds of one window call (after a warm-up) and the model rows it runs."""
    runner = make_runner(model, preset, height, width)
    f = preset.miga.window
    x = runner.noise.frames("bench", list(range(f)), [preset.num_levels] * f)
    t = runner.solver.grid.timesteps[torch.linspace(1, preset.num_levels, f).long()].float()
    cond = runner.schedule.parts[0]
    guided_forward(model.denoiser, x, t, cond)
    model.reset()
    for _ in range(repeats):
        guided_forward(model.denoiser, x, t, cond)
    return model.forward.seconds / model.forward.calls, model.rows // repeats


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Print the selected parts."""
    p = argparse.ArgumentParser(prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="wan2.1-1.3b-random", help="a model name or directory (default: wan2.1-1.3b-random)")
    p.add_argument("--preset", default="wan2.1-1.3b", help="sampler preset: wan2.1-1.3b | toy | vc2 (default: wan2.1-1.3b)")
    p.add_argument("--levels", type=int, help="T, denoising levels (default: the preset's; fewer for a quick test)")
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (default: cuda)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"], help="transformer dtype (default: bfloat16 on a GPU, float32 on the CPU)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--frames", type=int, default=81, help="output frames of the FIFO and MIGA videos (default 81)")
    p.add_argument("--samplers", default="base,fifo,miga", help="rows of the frames part, comma-separated (default base,fifo,miga)")
    p.add_argument("--memory-frames", default="100,1000", help="memory part: MIGA video lengths (default 100,1000)")
    p.add_argument("--parts", default="steady", help="comma-separated: steady, frames, memory, or none (default steady)")
    p.add_argument("--warm", type=int, default=120, help="steady part: output latents before measuring (default 120)")
    p.add_argument("--span", type=int, default=140, help="steady part: latents over which calls are counted (default 140)")
    p.add_argument("--calls", type=int, default=24, help="steady part: timed real window calls per sampler (default 24)")
    p.add_argument("--memory-latents", default="120,600", help="steady part: MIGA queue positions for peak memory (default 120,600)")
    p.add_argument("--repeats", type=int, default=3, help="timed window calls after the warm-up (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    torch.set_num_threads(args.threads)
    device, preset = torch.device(args.device), get_preset(args.preset)
    if args.levels:
        preset = dataclasses.replace(preset, num_levels=args.levels)
    model = TimedModel(load_model(args.model, device, None if args.dtype == "auto" else getattr(torch, args.dtype)))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"model {model_identity(args.model)} in {model.dtype} on {gpu}, {args.height}x{args.width}, preset {preset.name} "
          f"(T={preset.num_levels}, window {preset.miga.window}, CFG {preset.cfg_scale:g}), {args.threads} torch thread(s), "
          f"load average {load_average()}", flush=True)  # fmt: skip
    reset_peaks(device)
    seconds, rows = time_forward(model, preset, args.height, args.width, args.repeats)
    base_peak = peak_device_bytes(device)
    print(f"one window call ({preset.miga.window} latents, {rows} rows): {seconds:.3f} s (mean of {args.repeats})", flush=True)
    decode_s, window_frames = time_decode(model, preset, args.height, args.width)
    print(f"decode of one window ({preset.miga.window} latents, {window_frames} frames): {decode_s:.3f} s", flush=True)
    if "steady" in parts:
        per_frame_decode = decode_s / window_frames
        frames_per_latent = model.vae_scale[0]  # in a stream; a clip's first latent gives one frame
        print("| steady state | calls / output latent (counted) | s / window call (measured, mean) | decode s / frame (measured) "
              "| s / frame (composed) | peak GPU allocated MiB (at queue position) |\n| --- | ---: | ---: | ---: | ---: | --- |")
        gib = (lambda b: "-" if b is None else f"{b / MIB:.0f}")
        base_calls = preset.num_levels / preset.miga.window
        print(f"| base | {base_calls:.3f} | {seconds:.3f} | {per_frame_decode:.4f} | "
              f"{preset.num_levels * seconds / window_frames + per_frame_decode:.3f} | {gib(base_peak)} (one window) |", flush=True)
        positions = [int(n) for n in args.memory_latents.split(",")]
        for sampler in ("fifo", "miga"):
            for warm in positions if sampler == "miga" else positions[:1]:
                per_latent, call_s, peak = steady_state(model, preset, sampler, args.height, args.width, warm, args.span, args.calls)
                print(f"| {sampler} | {per_latent:.3f} | {call_s:.3f} | {per_frame_decode:.4f} | "
                      f"{per_latent * call_s / frames_per_latent + per_frame_decode:.3f} | {gib(peak)} (after latent {warm}) |", flush=True)
    if "frames" in parts:
        print(COST_HEADER)
        for sampler in args.samplers.split(","):
            if sampler == "base":
                cost = measure_base(model, make_runner(model, preset, args.height, args.width), preset.miga.window)
            else:
                cost = measure_stream(model, make_engine(model, preset, sampler, args.frames, args.height, args.width), sampler, args.frames)
            print(cost.row(), flush=True)
    if "memory" in parts:
        print("| MIGA output frames | peak GPU allocated (MiB) | peak RSS (MiB) | wall s |\n| ---: | ---: | ---: | ---: |")
        peaks = []
        for frames in (int(n) for n in args.memory_frames.split(",")):
            reset_peaks(device)
            cost = measure_stream(model, make_engine(model, preset, "miga", frames, args.height, args.width), "miga", frames)
            gpu_peak, rss_peak = peak_device_bytes(device), peak_rss_bytes()
            peaks.append(gpu_peak or rss_peak)
            print(f"| {frames} | {f'{gpu_peak / MIB:.0f}' if gpu_peak is not None else '-'} | {rss_peak / MIB:.1f} | {cost.wall:.1f} |", flush=True)
        measured = "GPU allocated" if device.type == "cuda" else "RSS, in one process"
        print(f"peak ratio, larger / smaller ({measured}): {max(peaks) / min(peaks):.3f} (target <= 1.05)")
    print(f"load average at the end {load_average()}")


if __name__ == "__main__":
    main()
