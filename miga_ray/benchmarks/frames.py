"""Model forwards and wall time per output frame: the base model's own sampler, FIFO-Diffusion and MIGA.

The real model is loaded and the engines are built as ``miga render`` builds them (``load_for``,
``build_engine``); every clean latent is decoded as it arrives, as a render decodes it, and the model
and the decoder are timed apart. Storage is left out (``miga bench overhead`` has the whole render).
The base sampler is one window of f latents from noise, all at one level, T levels to clean, then
the clip decoded: T window calls (2 forwards each under classifier-free guidance) for the
1 + 4 (f - 1) frames of one clip. A base clip run first pays the first-call costs.

Example: miga bench frames --frames 121 --model toy --device cpu
"""

from __future__ import annotations

from miga_ray.engines import build_engine
from miga_ray.models.decode import latents_for_frames

from .measure import COST_HEADER, PROMPT, load_average, measure_base, measure_stream
from .options import positive_int
from .rendering import config, header, load, parser


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Print one row per sampler: output frames, calls, forwards and milliseconds per frame."""
    p = parser(__doc__, prog)
    p.add_argument("--frames", type=positive_int, default=121, help="output frames of the FIFO and MIGA videos (default 121)")
    args = p.parse_args(argv)
    cfg = config(args, "miga", args.frames)
    print(header(args, cfg), flush=True)
    model = load(args, cfg)
    window = cfg.sampler.miga_config(model.default_window).window
    # the base sampler runs on the runner a render's engine gets (solver, prompt with CFG, noise)
    measure_base(model, build_engine(model, cfg, PROMPT, window).runner, window)  # warm-up
    base = measure_base(model, build_engine(model, cfg, PROMPT, window).runner, window)
    rows = [base]
    for sampler in ("fifo", "miga"):
        c = config(args, sampler, args.frames)
        rows.append(measure_stream(model, build_engine(model, c, PROMPT, latents_for_frames(args.frames, model.vae_scale[0])), sampler, args.frames))
    print(COST_HEADER)
    for row in rows:
        print(row.row(), flush=True)
    T, per_call = cfg.sampler.levels(), base.forwards // base.calls
    print(f"base: T x forwards per call / frames of one window = {T} x {per_call} / {base.frames} = {T * per_call / base.frames:.3f} forwards per frame")
    print(f"load average at the end {load_average()}")


if __name__ == "__main__":
    main()
