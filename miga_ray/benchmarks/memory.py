"""Peak process memory of whole renders at two lengths (target: the larger within 5% of the smaller).

Each (sampler, length) renders in a fresh process, so the high-water marks are independent, through
``JobRun`` into a temporary local directory as ``miga render`` does. Per render: the resident-set
high-water mark (``VmHWM``) over the process's life and over the render alone (reset after imports
and the model load), and on a GPU torch's peak allocation. Linux only (``/proc``). The renders
inherit this process's environment, so allocator settings (``MALLOC_ARENA_MAX=1 miga bench memory``)
apply to them; the header names any ``MALLOC_*`` variable set (without one, ``JobRun`` pins glibc's mmap
threshold at 32 MiB, see ``render.fix_mmap_threshold``).

Example: miga bench memory --lengths 100,2000 --samplers miga,fifo
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from .measure import load_average, model_identity, peak_device_bytes, peak_rss_bytes, reset_peaks
from .options import int_list
from .rendering import config, header, load, parser, render, sampler_list

MIB = 2**20


def child(args: argparse.Namespace) -> None:
    """Measure one render in this process; print its numbers as one JSON line."""
    (sampler,), (frames,) = args.samplers, args.lengths
    cfg = config(args, sampler, frames)
    model = load(args, cfg)
    loaded = peak_rss_bytes()
    reset_peaks(model.device)
    cost = render(model, cfg)
    during = peak_rss_bytes()
    print(json.dumps({"rss_process": max(loaded, during), "rss_render": during, "gpu": peak_device_bytes(model.device),
                      "wall": cost.wall, "model": model_identity(args.model)}))  # fmt: skip


def measure(args: argparse.Namespace, sampler: str, frames: int) -> dict[str, Any]:
    """Run ``child`` for one sampler and length in a fresh interpreter and return what it printed."""
    argv = ["--model", args.model, "--device", args.device, "--threads", str(args.threads), *(f"--set={s}" for s in args.set)]
    cmd = [sys.executable, "-m", "miga_ray.benchmarks.memory", "--child", "--samplers", sampler, "--lengths", str(frames), *argv]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited with {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratio(a: float | None, b: float | None) -> str:
    """Larger over smaller, or "-" where there is nothing to compare."""
    return f"{max(a, b) / min(a, b):.3f}" if a and b else "-"


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Print one row per render and, per sampler, the ratio of the peaks at the two lengths."""
    p = parser(__doc__, prog)
    p.add_argument("--lengths", type=int_list, default="100,2000", help="two output frame counts, comma-separated (default 100,2000)")
    p.add_argument("--samplers", type=sampler_list, default="miga,fifo", help="comma-separated: miga, fifo (default both)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return
    if len(args.lengths) != 2:
        p.error(f"argument --lengths: must be two comma-separated frame counts, got {len(args.lengths)}")
    short, long = args.lengths
    allocator = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MALLOC_")) or "mmap threshold pinned at 32 MiB by JobRun"
    print(f"{header(args, config(args, 'miga', short))}; allocator: {allocator}", flush=True)
    weights = model_identity(args.model)
    print("| sampler | output frames | peak RSS, process (MiB) | peak RSS, render (MiB) | peak GPU allocated (MiB) | render wall s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    ratios = []
    for sampler in args.samplers:
        peaks = {}
        for frames in (short, long):
            peaks[frames] = m = measure(args, sampler, frames)
            gpu = f"{m['gpu'] / MIB:.0f}" if m["gpu"] is not None else "-"
            print(f"| {sampler} | {frames} | {m['rss_process'] / MIB:.1f} | {m['rss_render'] / MIB:.1f} | {gpu} | {m['wall']:.1f} |", flush=True)
        a, b = peaks[short], peaks[long]
        ratios.append(f"{sampler}: peak ratio {long} / {short} frames (larger / smaller): process RSS {ratio(a['rss_process'], b['rss_process'])}, "
                      f"render RSS {ratio(a['rss_render'], b['rss_render'])}, GPU {ratio(a['gpu'], b['gpu'])} (target <= 1.05)")  # fmt: skip
        ratios += [f"{sampler}, {frames} frames: rendered with {m['model']}" for frames, m in peaks.items() if m["model"] != weights]
    print("\n".join(ratios))
    print(f"load average at the end {load_average()}")


if __name__ == "__main__":
    main()
