"""The MIGA paper's ablation on the toy world: FIFO, TTA only, DCE only and full MIGA, same model and seeds.

    python jobs/toy_ablation.py [--out out/ablation] [--prompts 12] [--seeds 2] [--latents 256] [--workers 2]

Each variant is a render config in ``configs/ablation/``. Every (variant, prompt, seed) video is
sampled with the shipped toy model, decoded in memory and scored with VBench's four dimensions
(weight-free fallbacks, labelled) and the toy world's analyzer; one JSON line per video goes to
``<out>/videos.jsonl`` as soon as it is done, so a stopped run continues where it left off. The
summary (means with 95% bootstrap intervals over prompts, seeds averaged first, and the paired difference
to FIFO) is printed and written to ``<out>/table.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from miga_ray.benchmarks.rendering import positive_int
from miga_ray.config import load_config
from miga_ray.evaluation.features import PixelFeatures
from miga_ray.evaluation.vbench import evaluate_frames
from miga_ray.models.registry import LoadedModel
from miga_ray.models.toy_world import analyze, sample_scene
from miga_ray.render import build_engine, load_for

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "ablation"
VARIANTS = {"fifo": "FIFO-Diffusion", "tta": "TTA only", "dce": "DCE only", "miga": "MIGA (TTA + DCE)"}
VBENCH = ("subject_consistency", "background_consistency", "motion_smoothness", "temporal_flickering", "overall")
TOY = ("color_rate", "background_rate", "shape_rate", "flicker", "smoothness")
COLUMNS = {
    "subject_consistency": "S.C.", "background_consistency": "B.C.", "motion_smoothness": "M.S.",
    "temporal_flickering": "T.F.", "overall": "O.S.", "color_rate": "colour", "background_rate": "bg",
    "shape_rate": "shape", "flicker": "toy flicker", "smoothness": "toy smooth", "late_color_rate": "colour, last quarter",
}

_MODEL: LoadedModel | None = None


def prompts(count: int, seed: int = 2026) -> list[str]:
    """``count`` toy-world prompts drawn once from a fixed seed (the same for every variant)."""
    rng = np.random.default_rng(seed)
    return [sample_scene(rng).prompt for _ in range(count)]


def _init_worker(threads: int) -> None:
    """Per process: one BLAS thread budget and the toy model loaded once."""
    global _MODEL
    torch.set_num_threads(threads)
    _MODEL = load_for(load_config(CONFIGS / "miga.yaml"))


@torch.no_grad()
def render_and_score(variant: str, prompt: str, seed: int, latents: int) -> dict[str, Any]:
    """Sample one video in memory, decode it, and return its scores and sampler counters."""
    cfg = load_config(CONFIGS / f"{variant}.yaml", seed=seed)
    start = time.monotonic()
    engine = build_engine(_MODEL, cfg, prompt, latents)
    decoder = _MODEL.decoder()
    frames = [decoder.push(latent.unsqueeze(2))[0] for _, latent in engine]
    video = torch.cat(frames).numpy()
    seconds = time.monotonic() - start
    vbench = evaluate_frames(video, PixelFeatures(), PixelFeatures())
    toy = analyze(video, prompt)
    quarter = toy.present[-len(video) // 4 :, 0]
    return {
        "variant": variant, "prompt": prompt, "seed": seed, "latents": latents, "frames": len(video),
        **{k: v for k, v in vbench.to_dict().items() if k in VBENCH},
        **{k: None if math.isnan(getattr(toy, k)) else getattr(toy, k) for k in TOY},  # JSON has no NaN
        "late_color_rate": float(quarter.mean()),
        "features": vbench.subject_features, "interpolator": vbench.interpolator,
        "model_calls": engine.counters.total_calls, "reflections": dict(engine.counters.reflections),
        "seconds": seconds,
    }


def _done(path: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Rows already written by an earlier (possibly stopped) run."""
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["variant"], r["prompt"], r["seed"]): r for r in rows}


def run(out: Path, texts: list[str], seeds: list[int], latents: int, workers: int) -> list[dict[str, Any]]:
    """Every (variant, prompt, seed) video not yet in ``<out>/videos.jsonl``; returns all rows."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "videos.jsonl"
    rows = _done(path)
    todo = [(v, p, s) for v in VARIANTS for p in texts for s in seeds if (v, p, s) not in rows or rows[(v, p, s)]["latents"] != latents]
    print(f"{len(rows)} videos done, {len(todo)} to render", flush=True)
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(1,)) as pool, path.open("a") as sink:
        futures = [pool.submit(render_and_score, v, p, s, latents) for v, p, s in todo]
        for i, future in enumerate(futures, 1):
            row = future.result()
            sink.write(json.dumps(row, allow_nan=False) + "\n")
            sink.flush()
            rows[(row["variant"], row["prompt"], row["seed"])] = row
            print(f"[{i}/{len(todo)}] {row['variant']:4s} seed {row['seed']} {row['seconds']:.0f}s  {row['prompt']}", flush=True)
    return [r for r in rows.values() if r["prompt"] in texts and r["seed"] in seeds and r["latents"] == latents]


def per_prompt(rows: list[dict[str, Any]], variant: str, metric: str, texts: list[str]) -> np.ndarray:
    """One value per prompt: the metric averaged over that prompt's seeds (NaN where no seed defines it)."""
    values = [[np.nan if r[metric] is None else r[metric] for r in rows if r["variant"] == variant and r["prompt"] == p] for p in texts]
    return np.array([np.nan if np.isnan(v).all() else np.nanmean(v) for v in values])


def interval(values: np.ndarray, scale: float, resamples: int = 10_000) -> str:
    """Mean and its 95% percentile-bootstrap interval over prompts (fixed resampling seed), times ``scale``;
    prompts where the metric is undefined (NaN) are left out, and the count is shown when any are."""
    kept = values[np.isfinite(values)]
    if len(kept) == 0:
        return "n/a"
    note = "" if len(kept) == len(values) else f" (n={len(kept)})"
    values = kept
    rng = np.random.default_rng(0)
    means = values[rng.integers(len(values), size=(resamples, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return f"{scale * values.mean():.2f} [{scale * low:.2f}, {scale * high:.2f}]{note}"


def table(rows: list[dict[str, Any]], texts: list[str], metrics: tuple[str, ...], paired: bool) -> str:
    """A markdown table, one row per variant: mean [95% CI] over prompts (or of the paired difference to FIFO), in %."""
    head = "| variant | " + " | ".join(COLUMNS[m] for m in metrics) + " |"
    lines = [head, "| --- |" + " ---: |" * len(metrics)]
    for variant, label in VARIANTS.items():
        if paired and variant == "fifo":
            continue
        cells = []
        for m in metrics:
            values = per_prompt(rows, variant, m, texts)
            if paired:
                values = values - per_prompt(rows, "fifo", m, texts)
            cells.append(interval(values, 100))
        lines.append(f"| {label}{' − FIFO' if paired else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(rows: list[dict[str, Any]], texts: list[str], seeds: list[int], latents: int) -> str:
    """The whole summary: VBench-form and toy ground-truth tables, absolute and paired, plus costs."""
    toy = (*TOY, "late_color_rate")
    calls = {v: np.mean([r["model_calls"] / r["latents"] for r in rows if r["variant"] == v]) for v in VARIANTS}
    secs = {v: np.mean([r["seconds"] for r in rows if r["variant"] == v]) for v in VARIANTS}
    refl = {v: sum(r["reflections"].get("triggered", 0) for r in rows if r["variant"] == v) for v in VARIANTS}
    accepted = {v: sum(r["reflections"].get("accepted", 0) for r in rows if r["variant"] == v) for v in VARIANTS}
    first = rows[0]
    parts = [
        f"{len(texts)} prompts x {len(seeds)} seeds, {latents} latents ({first['frames']} frames) per video; "
        f"mean [95% bootstrap interval] over prompts (seeds averaged first), in %. Features: {first['features']}; "
        f"motion smoothness: {first['interpolator']}.",
        "", "VBench-form dimensions:", "", table(rows, texts, VBENCH, paired=False),
        "", "Paired difference to FIFO (same prompt and seed):", "", table(rows, texts, VBENCH, paired=True),
        "", "Toy-world ground truth (analyzer):", "", table(rows, texts, toy, paired=False),
        "", "Paired difference to FIFO:", "", table(rows, texts, toy, paired=True),
        "", "| variant | model calls / latent | seconds / video | reflections triggered / accepted |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {VARIANTS[v]} | {calls[v]:.2f} | {secs[v]:.1f} | {refl[v]} / {accepted[v]} |" for v in VARIANTS),
    ]
    return "\n".join(parts)


def main() -> None:
    """Parse the command line, render what is missing, print and write the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/ablation"))
    parser.add_argument("--prompts", type=positive_int, default=12)
    parser.add_argument("--seeds", type=positive_int, default=2)
    parser.add_argument(
        "--latents", type=positive_int, default=256, help="output latents per video (one frame each: per-frame toy VAE)"
    )
    parser.add_argument("--workers", type=positive_int, default=2, help="processes, one torch thread each")
    args = parser.parse_args()
    texts, seeds = prompts(args.prompts), list(range(args.seeds))
    rows = run(args.out, texts, seeds, args.latents, args.workers)
    text = report(rows, texts, seeds, args.latents)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
