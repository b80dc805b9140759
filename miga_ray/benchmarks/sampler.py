"""Sampler cost: model calls per output latent, and bookkeeping time with a model that costs nothing.

``python -m miga_ray.benchmarks.sampler`` prints a table. Calls are counted in steady state
(the difference between two lengths, so the base clip, the warm-up and the tail cancel out), per
phase and in all, and over a whole video of the longer length. ``--schedule reference`` instead runs
MIGA's reference mode (the official VideoCrafter2 schedule, fixed length) once and prints its calls
per output latent, base clip included; ``--trace`` writes that run's call trace. The vc2 preset
steps on MIGA's VideoCrafter2 grid (``vc2_grid``), as a loaded VC2 does.
Times are measured, never subtracted across runs: in one run of a whole video, the wall time spent
inside the zero model and the rest (the sampler's bookkeeping), per output latent; repeated, with median
and range.

Example: miga bench sampler --preset vc2 --schedule reference --groups 30 --trace vc2-reference.jsonl
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch

from miga_ray.sampling import (
    PRESETS,
    CallTrace,
    Conditioning,
    FifoEngine,
    LevelGrid,
    MigaEngine,
    NoiseSource,
    Preset,
    StreamingEngine,
    WindowRunner,
    get_preset,
)

MIGA_PHASES = ("stage1", "stage2", "refine", "reflect")  # steady-state columns; "stage1" counts the fill too


def zero_model(x: torch.Tensor, t: torch.Tensor, context: object) -> torch.Tensor:
    """A denoiser that costs (almost) nothing, so timing measures the sampler alone."""
    return torch.zeros_like(x)


@dataclass
class Row:
    preset: str
    sampler: str
    calls_steady: float
    calls_whole: float
    base_cost: float
    phases: dict[str, float]  # steady-state calls per output latent by phase (MIGA)


def grid_for(preset: Preset) -> LevelGrid:
    """The grid the preset's base model steps on: MIGA's VC2 spacing for vc2 (imported only then), else the preset's."""
    if preset.name == "vc2":
        from miga_ray.models.vc2.model import vc2_grid

        return vc2_grid(preset.num_levels)
    return preset.grid()


def build(
    preset: Preset, sampler: str, num_latents: int, shape: tuple[int, ...], schedule: str = "stream",
    sink: TextIO | None = None, model: Callable[..., torch.Tensor] = zero_model,
) -> StreamingEngine:
    """An engine over a zero-cost model (or ``model``), on the preset's grid, optionally writing its call trace to ``sink``."""
    noise = NoiseSource(0, shape, torch.float32, "cpu")
    runner = WindowRunner(model, preset.solver(grid_for(preset)), Conditioning(None), noise, CallTrace(sink) if sink else None)
    if sampler == "miga":
        return MigaEngine(runner, preset.miga.with_(schedule=schedule), num_latents)
    lookahead = sampler == "fifo"
    return FifoEngine(runner, preset.fifo.__class__(window=preset.fifo.window, lookahead=lookahead), num_latents)


def calls_for(preset: Preset, sampler: str, num_latents: int) -> Counter:
    """Model calls by phase over a whole video of ``num_latents``."""
    engine = build(preset, sampler, num_latents, (1, 1, 1, 1))
    for _ in engine:
        pass
    return engine.counters.calls


def call_costs(presets: list[str], short: int, long: int) -> list[Row]:
    rows = []
    for name in presets:
        p = get_preset(name)
        for sampler in ("fifo", "fifo-no-lookahead", "miga"):
            a, b = calls_for(p, sampler, short), calls_for(p, sampler, long)
            span = long - short
            steady = (b.total() - a.total()) / span
            merged = {ph: (b[ph] + b["fill"] * (ph == "stage1") - a[ph] - a["fill"] * (ph == "stage1")) / span for ph in MIGA_PHASES}
            rows.append(Row(name, sampler, steady, b.total() / long, p.num_levels / p.miga.window, merged if sampler == "miga" else {}))
    return rows


def reference_costs(preset: Preset, groups: int, trace: Path | None) -> tuple[Counter, int]:
    """Calls by phase and output latents of MIGA's reference schedule for ``groups`` groups."""
    with open(trace, "w", encoding="utf-8") if trace else nullcontext() as sink:
        engine = build(preset, "miga", groups * preset.miga.group, (1, 1, 1, 1), "reference", sink)
        out = sum(1 for _ in engine)
    return engine.counters.calls, out


@dataclass
class Spread:
    """Repeated measurements: median, smallest and largest."""

    values: list[float]

    def __str__(self) -> str:
        return f"{statistics.median(self.values):8.3f} [{min(self.values):.3f}-{max(self.values):.3f}]"


def run_ms(preset: Preset, sampler: str, num_latents: int, shape: tuple[int, ...]) -> tuple[float, float]:
    """One whole video: milliseconds per output latent outside and inside the zero model.

    The model's time is measured around each call and lies inside the run's wall time, so the
    bookkeeping share is never negative. The base clip, the fill and the tail are included.
    """
    inside = 0.0

    def timed_model(x: torch.Tensor, t: torch.Tensor, context: object) -> torch.Tensor:
        nonlocal inside
        start = time.perf_counter()
        out = zero_model(x, t, context)
        inside += time.perf_counter() - start
        return out

    engine = build(preset, sampler, num_latents, shape, model=timed_model)
    start = time.perf_counter()
    for _ in engine:
        pass
    wall = time.perf_counter() - start
    return 1000 * (wall - inside) / num_latents, 1000 * inside / num_latents


def bookkeeping_ms(preset: Preset, sampler: str, num_latents: int, shape: tuple[int, ...], repeats: int) -> tuple[Spread, Spread]:
    """Ms per output latent outside (the sampler) and inside the zero model, over ``repeats`` whole videos."""
    runs = [run_ms(preset, sampler, num_latents, shape) for _ in range(repeats)]
    return Spread([r[0] for r in runs]), Spread([r[1] for r in runs])


def peak_held(preset: Preset, num_latents: int) -> int:
    """Most latent frames the MIGA engine holds at once over a whole video."""
    engine = build(preset, "miga", num_latents, (1, 1, 1, 1))
    peak = 0
    for _ in engine:
        peak = max(peak, engine.held_latents())
    return peak


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Print call costs, peak latents held and bookkeeping time."""
    parser = argparse.ArgumentParser(prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", type=int, default=500)
    parser.add_argument("--long", type=int, default=1500)
    parser.add_argument("--latents", type=int, default=600, help="output latents for the timing runs")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="one preset (default: vc2 and wan2.1-1.3b)")
    parser.add_argument("--schedule", choices=("stream", "reference"), default="stream", help="reference: MIGA's official VC2 schedule, fixed length")
    parser.add_argument("--groups", type=int, default=30, help="reference schedule: groups of L_zig latents (the official default 30)")
    parser.add_argument("--trace", type=Path, help="reference schedule: write its call trace (JSON lines) here")
    parser.add_argument("--repeats", type=int, default=3, help="timing runs per row (median [min-max] shown)")
    args = parser.parse_args(argv)
    if args.schedule != "reference" and args.trace:
        parser.error("argument --trace: needs --schedule reference")
    presets = [args.preset] if args.preset else ["vc2", "wan2.1-1.3b"]
    if args.latents < 1 or args.repeats < 1:
        parser.error(f"--latents and --repeats must be >= 1 (got {args.latents}, {args.repeats})")
    torch.set_num_threads(1)
    if args.schedule == "reference":
        for name in presets:
            try:
                calls, out = reference_costs(get_preset(name), args.groups, args.trace)
            except ValueError as exc:
                parser.error(f"argument --groups: {exc}")
            by_phase = ", ".join(f"{ph} {n}" for ph, n in calls.items())
            print(f"{name} reference schedule, {args.groups} groups: {out} output latents, {calls.total()} calls ({by_phase}), "
                  f"{calls.total() / out:.2f} calls per output latent incl. the base clip")
        return
    print(f"model calls per output latent (steady state: {args.short} -> {args.long} latents; whole: {args.long} latents incl. base clip and tail)")
    print(f"{'preset':<12} {'sampler':<18} {'steady':>8} {'whole':>8} {'base model (T/f)':>17}   steady by phase")
    for r in call_costs(presets, args.short, args.long):
        phases = "  ".join(f"{ph} {v:.3f}" for ph, v in r.phases.items())
        print(f"{r.preset:<12} {r.sampler:<18} {r.calls_steady:8.2f} {r.calls_whole:8.2f} {r.base_cost:17.2f}   {phases}")
    print(f"\npeak latents held by MIGA over a {args.long}-latent video")
    for name in presets:
        print(f"{name:<12} {peak_held(get_preset(name), args.long):6d}")
    p = get_preset(args.preset or "wan2.1-1.3b")  # the preset asked for; by default the one users run at scale
    print(f"\nms per output latent over a whole video, zero-cost denoiser, {p.name} (f={p.miga.window}, T={p.num_levels}), "
          f"{args.latents} latents, 1 thread; median [min-max] of {args.repeats} runs")
    print(f"{'latents':<30} {'sampler':<7} {'bookkeeping':>24} {'zero model':>24}")
    for label, shape in (("tiny 16x8x8", (1, 16, 8, 8)), ("Wan 832x480: 16x60x104", (1, 16, 60, 104))):
        for sampler in ("miga", "fifo"):
            bk, model = bookkeeping_ms(p, sampler, args.latents, shape, args.repeats)
            print(f"{label:<30} {sampler:<7} {bk!s:>24} {model!s:>24}")


if __name__ == "__main__":
    main()
