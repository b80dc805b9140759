"""Continuing real toy-world clips: does the continuation hold the user's sprite colour and background?

    python jobs/continuation_study.py [--out out/continuation] [--prompts 8] [--clip-frames 17]
                                      [--frames 200] [--samplers fifo,miga] [--bins 8]

For each prompt (``toy_ablation.prompts``: the same fixed set) the toy world renders a ground-truth
clip (``--clip-frames``, its own sprite path); the shipped toy model encodes it with its VAE and
continues it for ``--frames`` more frames under each sampler, exactly as ``miga render --init-video``
does (``build_engine`` with the clip's latents as the seed; the whole prompt set is one batch). As a
control, the same sampler renders the same prompts without a clip. The toy world's analyzer scores
the continued frames only (after the clip) against the prompt: the sprite's colour present, the
background, the shape and the sprite count, per bin of frames and overall, with 95% bootstrap
intervals over prompts, plus the user's clip itself through the VAE; and whether the sprites go on
from where the clip left them: the centroid jump from the clip's last frame to the first continued
one (for the control, from the clip's last frame to its own first frame after the clip's length),
next to the mean motion per frame. Results go to
``<out>/rows.jsonl`` and ``<out>/table.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from toy_ablation import CONFIGS, interval, prompts

from miga_ray.benchmarks.options import positive_int
from miga_ray.config import load_config
from miga_ray.engines import build_engine, decoded_video, load_for, seed_of
from miga_ray.evaluation.toy_world import analyze
from miga_ray.models.decode import latents_for_frames
from miga_ray.models.toy_world.render import render_clip
from miga_ray.models.toy_world.world import parse_prompt
from miga_ray.storage.clips import fit_frames

RATES = ("color_rate", "background_rate", "shape_rate", "count_rate")
MOTION = ("seam_jump", "motion")  # sprite centroid displacement as a fraction of the frame width


def clips(texts: list[str], frames: int, size: int) -> np.ndarray:
    """Ground-truth toy-world clips, one per prompt (trajectory seed = its row): uint8 ``[B, F, H, W, 3]``."""
    return np.stack([render_clip(parse_prompt(t), frames, size, size, seed=row) for row, t in enumerate(texts)])


def render(sampler: str, texts: list[str], user: np.ndarray | None, frames: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """One batch: the clips (if any) continued to ``frames`` frames in all, decoded: uint8 ``[B, frames, H, W, 3]``."""
    cfg = load_config(CONFIGS / f"{sampler}.yaml", ["model.dtype=float32"], seed=seed, frames=frames)
    model = load_for(cfg)
    start = time.monotonic()
    seed_latents, known = None, []
    if user is not None:
        fitted = [fit_frames(clip, *model.default_resolution, model.encode_step) for clip in user]
        encoded = torch.cat([model.encode_video(torch.from_numpy(f)) for f in fitted])  # [B, C, K, h, w]
        known = list(encoded.unbind(dim=2))
        seed_latents = seed_of(model, cfg, known)
    engine = build_engine(model, cfg, texts, latents_for_frames(frames, model.vae_scale[0]), seed=seed_latents)
    video = decoded_video(model, engine, known)
    costs = {"model_calls": engine.counters.total_calls, "seconds": time.monotonic() - start, "seed_latents": len(known)}
    return video.numpy()[:, :frames], costs


def score(video: np.ndarray, prompt: str, bins: int | None) -> dict[str, Any]:
    """The analyzer's rates over ``video``: overall means and (with ``bins``) per-bin curves."""
    summary = analyze(video, prompt).summary(bins or 1)
    return {"mean": {k: summary["mean"][k] for k in RATES + ("motion",)}, "curves": {k: summary["curves"][k] for k in RATES} if bins else None}


def seam_jump(last: np.ndarray, first: np.ndarray, prompt: str) -> float:
    """How far each prompted sprite's centroid moves from the clip's last frame to the first continued frame
    (fraction of the frame width, mean over sprites; NaN where a sprite is missing in either)."""
    report = analyze(np.stack([last, first]), prompt)
    step = np.linalg.norm(report.centroids[1] - report.centroids[0], axis=-1) / last.shape[1]
    return float(np.nanmean(step)) if np.isfinite(step).any() else float("nan")


def table(rows: list[dict[str, Any]], texts: list[str], bins: int) -> str:
    """Markdown: per variant, each rate overall and per bin (means over prompts; overall with a 95% interval)."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    lines = ["| variant (%) | " + " | ".join(RATES + MOTION) + " |", "| --- |" + " ---: |" * len(RATES + MOTION)]
    for v in variants:
        got = {r["prompt"]: r for r in rows if r["variant"] == v}
        cells = [interval(np.array([got[t]["score"]["mean"][k] if got[t]["score"]["mean"][k] is not None else np.nan for t in texts]), 100) for k in RATES + MOTION]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    for k in RATES:
        lines += ["", f"{k} (%) per bin of continued frames, mean over prompts:", "", "| variant | " + " | ".join(f"bin {b + 1}" for b in range(bins)) + " |",
                  "| --- |" + " ---: |" * bins]
        for v in variants:
            if any(r["score"]["curves"] is None for r in rows if r["variant"] == v):
                continue
            curves = np.array([[np.nan if c is None else c for c in r["score"]["curves"][k]] for r in rows if r["variant"] == v])
            lines.append(f"| {v} | " + " | ".join(f"{100 * m:.0f}" for m in np.nanmean(curves, axis=0)) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/continuation"))
    parser.add_argument("--prompts", type=positive_int, default=8)
    parser.add_argument("--clip-frames", type=positive_int, default=17, help="frames of each user clip (1 + 4k for the toy VAE)")
    parser.add_argument("--frames", type=positive_int, default=200, help="frames continued after the clip")
    parser.add_argument("--samplers", default="fifo,miga")
    parser.add_argument("--bins", type=positive_int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    texts = prompts(args.prompts)
    user = clips(texts, args.clip_frames, 64)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [{"variant": "user clip (through the VAE)", "prompt": t, "score": None} for t in texts]
    for sampler in args.samplers.split(","):
        for with_clip in (True, False):
            video, costs = render(sampler, texts, user if with_clip else None, args.clip_frames + args.frames, args.seed)
            variant = f"{sampler}, {'continuing the clip' if with_clip else 'no clip (control)'}"
            print(f"{variant}: {costs}", flush=True)
            for row, text in enumerate(texts):
                if with_clip and rows[row]["score"] is None:
                    rows[row]["score"] = score(video[row, : args.clip_frames], text, None)
                    rows[row]["score"]["mean"]["seam_jump"] = float("nan")
                result = score(video[row, args.clip_frames :], text, args.bins)
                last = video[row, args.clip_frames - 1] if with_clip else user[row, -1]  # the clip's last frame as the output shows it
                result["mean"]["seam_jump"] = seam_jump(last, video[row, args.clip_frames], text)
                rows.append({"variant": variant, "prompt": text, "costs": costs, "score": result})
    with open(args.out / "rows.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    text = table(rows, texts, args.bins)
    (args.out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
