"""Time outside the model's forward passes and the VAE decode, as a share of a whole render's wall time
(target: under 5%).

``JobRun`` renders into a temporary local directory, as ``miga render`` does, with every denoiser call
and every decoder push timed (synchronised on a GPU); the total is the wall time of ``run()``: setup,
sampling, decoding, H.264 segments, latents, checkpoints and the final video. "Other" is the total
minus model and decode: sampler bookkeeping, storage, video encoding, setup. A short render of each
sampler first pays the first-call costs. On a GPU the synchronisation around every timed call stops
host work from overlapping queued device work, so there "other" is an upper bound.

Example: miga bench overhead --frames 600 --samplers miga,fifo
"""

from __future__ import annotations

from .measure import load_average
from .options import positive_int
from .rendering import config, header, load, parser, render, sampler_list

WARM_UP_FRAMES = 9


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Print, per sampler, the render's wall time split into model, decode and other, and other's share."""
    p = parser(__doc__, prog)
    p.add_argument("--frames", type=positive_int, default=600, help="output frames per render (default 600)")
    p.add_argument("--samplers", type=sampler_list, default="miga,fifo", help="comma-separated: miga, fifo (default both)")
    args = p.parse_args(argv)
    samplers = args.samplers
    cfg = config(args, samplers[0], args.frames)
    print(header(args, cfg), flush=True)
    model = load(args, cfg)
    print("| sampler | output frames | window calls | render wall s | model s | decode s | other s | other / wall |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for sampler in samplers:
        render(model, config(args, sampler, WARM_UP_FRAMES))
        c = render(model, config(args, sampler, args.frames))
        print(f"| {sampler} | {c.frames} | {c.calls} | {c.wall:.2f} | {c.model:.2f} | {c.decode:.2f} | {c.other:.2f} | "
              f"{100 * c.other / c.wall:.1f}% |", flush=True)  # fmt: skip
    print(f"load average at the end {load_average()}")


if __name__ == "__main__":
    main()
