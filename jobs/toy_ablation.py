"""Long-horizon comparisons on the toy world: samplers x base models, same prompts and seeds.

    python jobs/toy_ablation.py [--out out/ablation] [--models toy] [--variants fifo,tta,dce,miga]
                                [--prompts 12] [--prompt-offset 0] [--prompt-seed 2026] [--seeds 2]
                                [--first-seed 0] [--latents 256] [--device cpu] [--workers 2]

Each variant is a render config in ``configs/ablation/`` (FIFO, TTA only, DCE only, full MIGA), built
as ``miga render`` builds it; ``miga+guidance=2+refine=false`` is MIGA with those sampler settings
changed (one-setting-at-a-time studies; ``fifo+window=8`` likewise); ``--models`` names the base models (``toy`` is the shipped one, trained
with one level per clip; a directory such as the mixed-level control). The videos of one (model,
variant, seed) are sampled as one batch of all prompts (every random tensor is drawn for the batch, so
a row is a function of the seed and the prompt list, the same for every variant), decoded in memory,
and scored in ``--workers`` processes: VBench's four dimensions (weight-free fallbacks, labelled) and
the toy world's analyzer, with its per-bin curves. One JSON line per video goes to
``<out>/videos.jsonl`` as soon as its batch is scored, so a stopped run continues where it left off.
The summary (means with 95% bootstrap intervals over prompts, seeds averaged first, and the paired
difference to FIFO on the same model) is printed and written to ``<out>/table.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from miga_ray.benchmarks.options import at_least, positive_int
from miga_ray.config import ConfigError, RenderConfig, load_config
from miga_ray.engines import build_engine, decoded_video, load_for
from miga_ray.evaluation.compare import Variant, draw_curves
from miga_ray.evaluation.features import PixelFeatures
from miga_ray.evaluation.toy_world import analyze
from miga_ray.evaluation.vbench import evaluate_frames
from miga_ray.models import toy_checkpoint
from miga_ray.models.toy_world import WORLDS, World
from miga_ray.sampling import PRESETS

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "ablation"
VARIANTS = {"fifo": "FIFO-Diffusion", "tta": "TTA only", "dce": "DCE only", "miga": "MIGA (TTA + DCE)"}
SECTIONS = {"fifo": "fifo", "tta": "miga", "dce": "miga", "miga": "miga"}  # the sampler section a variant's settings change
VBENCH = ("subject_consistency", "background_consistency", "motion_smoothness", "temporal_flickering", "overall")
TOY = ("color_rate", "shape_rate", "count_rate", "background_rate", "subject_consistency", "background_consistency", "smoothness")
DRIFT = ("color_rate", "shape_rate", "count_rate", "subject_consistency", "background_consistency")
COLUMNS = {
    "subject_consistency": "S.C.", "background_consistency": "B.C.", "motion_smoothness": "M.S.",
    "temporal_flickering": "T.F.", "overall": "O.S.", "color_rate": "colour", "background_rate": "bg",
    "shape_rate": "shape", "count_rate": "count", "smoothness": "toy smooth",
}
TOY_COLUMNS = {"subject_consistency": "sprite cons.", "background_consistency": "bg cons."}
DRIFT_BINS = 10  # points on each analyzer curve


def model_world(model: str) -> World:
    """The toy world a base model was trained on (a shipped toy's name or a checkpoint directory)."""
    return World.trained(toy_checkpoint(model))


def prompts(count: int, seed: int = 2026, world: World | None = None, offset: int = 0, draws: int = 10_000) -> list[str]:
    """``count`` distinct prompts of ``world`` (the whole grammar's by default) in the order a fixed seed
    draws them (the same for every variant), after the first ``offset`` (a set disjoint from theirs); a
    repeat is skipped, since it would count one prompt twice."""
    rng, world, found = np.random.default_rng(seed), world or WORLDS["full"], dict[str, None]()
    for _ in range(draws):
        found.setdefault(world.sample_scene(rng).prompt)
        if len(found) == offset + count:
            return list(found)[offset:]
    raise ValueError(f"--prompts: {offset} + {count} distinct prompts asked, this world gave {len(found)} in {draws} draws")


def variant_config(variant: str, model_name: str, preset: str, device: str, seed: int = 0) -> RenderConfig:
    """The render config of ``variant`` (``base`` or ``base+key=value+...``) on one model; ConfigError names a bad setting."""
    base, *settings = variant.split("+")
    overrides = [f"model.name={model_name}", f"sampler.preset={preset}", f"model.device={device}", "model.dtype=float32",  # toy models: fp32
                 *(f"sampler.{SECTIONS[base]}.{setting}" for setting in settings)]
    return load_config(CONFIGS / f"{base}.yaml", overrides, seed=seed)


def label(variant: str) -> str:
    """A variant's name in tables: the base's, then its changed settings."""
    base, *settings = variant.split("+")
    return VARIANTS[base] + (f" [{', '.join(settings)}]" if settings else "")


def score(video: np.ndarray, prompt: str) -> dict[str, Any]:
    """VBench-form dimensions (pixel features) and the toy analyzer's means, drift figures (last quarter
    minus first) and curves over ``DRIFT_BINS`` bins of one video."""
    torch.set_num_threads(1)
    vbench = evaluate_frames(video, PixelFeatures(), PixelFeatures())
    return {
        **{k: v for k, v in vbench.to_dict().items() if k in VBENCH},
        "analysis": analyze(video, prompt).summary(min(DRIFT_BINS, len(video))),
        "features": vbench.subject_features, "interpolator": vbench.interpolator,
    }


def metric(row: dict[str, Any], name: str) -> float:
    """A row's value of ``name`` (``analysis.mean.x``, ``analysis.drift.x`` reach into the analyzer's summary); NaN if undefined."""
    value: Any = row
    for key in name.split("."):
        value = value[key]
    return np.nan if value is None else float(value)


@torch.no_grad()
def render_batch(model_name: str, preset: str, variant: str, texts: list[str], seed: int, latents: int, device: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Sample one batch (a row per prompt) and decode it: uint8 ``[B, F, H, W, 3]`` and the run's costs."""
    cfg = variant_config(variant, model_name, preset, device, seed)
    model = load_for(cfg)
    start = time.monotonic()
    engine = build_engine(model, cfg, texts, latents)
    video = decoded_video(model, engine).numpy()
    seconds = time.monotonic() - start
    costs = {"model_calls": engine.counters.total_calls, "reflections": dict(engine.counters.reflections),
             "batch_seconds": seconds, "batch": len(texts), "device": str(model.device)}
    return video, costs


def _done(path: Path) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    """Rows already written by an earlier (possibly stopped) run."""
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["model"], r["variant"], r["prompt"], r["seed"]): r for r in rows}


def run(out: Path, models: list[str], preset: str, variants: list[str], texts: list[str], seeds: list[int], latents: int,
        device: str, workers: int) -> list[dict[str, Any]]:
    """Render, per (model, variant, seed), one batch of the prompts not yet in ``<out>/videos.jsonl``; returns
    all rows. A row records its batch size: noise is drawn per batch, so prompts added to a finished study
    form their own batch, the same one for every variant and model that renders them in one command."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "videos.jsonl"
    rows = _done(path)
    batches = [(m, v, s, missing) for s in seeds for m in models for v in variants  # a whole first seed before the next
               if (missing := [p for p in texts if rows.get((m, v, p, s), {}).get("latents") != latents])]
    print(f"{len(rows)} videos done, {sum(len(b[3]) for b in batches)} to render", flush=True)
    with ProcessPoolExecutor(workers) as pool, path.open("a") as sink:
        for i, (model, variant, seed, missing) in enumerate(batches, 1):
            video, costs = render_batch(model, preset, variant, missing, seed, latents, device)
            for prompt, scores in zip(missing, pool.map(score, video, missing)):
                row = {"model": model, "variant": variant, "prompt": prompt, "seed": seed, "latents": latents,
                       "frames": video.shape[1], **scores, **costs}
                sink.write(json.dumps(row, allow_nan=False) + "\n")
                rows[(model, variant, prompt, seed)] = row
            sink.flush()
            print(f"[{i}/{len(batches)}] {model} {variant} seed {seed}: {costs['batch_seconds']:.0f}s for {len(missing)} videos", flush=True)
    return [r for r in rows.values() if r["model"] in models and r["variant"] in variants and r["prompt"] in texts
            and r["seed"] in seeds and r["latents"] == latents]


def per_prompt(rows: list[dict[str, Any]], model: str, variant: str, name: str, texts: list[str]) -> np.ndarray:
    """One value per prompt: the metric averaged over that prompt's seeds (NaN where no seed defines it)."""
    values = [[metric(r, name) for r in rows if (r["model"], r["variant"], r["prompt"]) == (model, variant, p)] for p in texts]
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


def rendered(rows: list[dict[str, Any]], models: list[str], variants: list[str]) -> list[tuple[str, str]]:
    """The (model, variant) pairs that have videos, in command-line order (a control may lack some variants)."""
    have = {(r["model"], r["variant"]) for r in rows}
    return [(m, v) for m in models for v in variants if (m, v) in have]


def table(rows: list[dict[str, Any]], models: list[str], variants: list[str], texts: list[str],
          metrics: tuple[str, ...], paired: bool) -> str:
    """A markdown table, one row per (model, variant): mean [95% CI] over prompts, in %, or of the paired
    difference to FIFO on the same model."""
    def column(name: str) -> str:
        part, _, key = name.rpartition(".")
        return TOY_COLUMNS.get(key, COLUMNS[key]) if part else COLUMNS[key]

    lines = ["| model | variant | " + " | ".join(column(m) for m in metrics) + " |", "| --- | --- |" + " ---: |" * len(metrics)]
    for model, variant in rendered(rows, models, variants):
        if paired and variant == "fifo":
            continue
        cells = []
        for m in metrics:
            values = per_prompt(rows, model, variant, m, texts)
            if paired:
                values = values - per_prompt(rows, model, "fifo", m, texts)
            cells.append(interval(values, 100))
        lines.append(f"| {model} | {label(variant)}{' − FIFO' if paired else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(rows: list[dict[str, Any]], models: list[str], variants: list[str], texts: list[str], seeds: list[int], latents: int) -> str:
    """The whole summary: VBench-form and toy ground-truth tables, absolute and paired, plus costs."""
    toy, drift = tuple(f"analysis.mean.{m}" for m in TOY), tuple(f"analysis.drift.{m}" for m in DRIFT)
    first = rows[0]
    costs = []
    for model, v in rendered(rows, models, variants):
        mine = [r for r in rows if (r["model"], r["variant"]) == (model, v)]
        calls = np.mean([r["model_calls"] / r["latents"] for r in mine])
        per_frame = np.mean([r["batch_seconds"] / (r["batch"] * r["frames"]) for r in mine])
        judged = round(sum(r["reflections"].get("triggered", 0) / r["batch"] for r in mine))  # batch counters, on every row
        accepted = round(sum(r["reflections"].get("accepted", 0) / r["batch"] for r in mine))
        costs.append(f"| {model} | {label(v)} | {calls:.2f} | {1000 * per_frame:.2f} | {judged} / {accepted} |")
    has_fifo = "fifo" in variants
    parts = [
        f"{len(texts)} prompts x {len(seeds)} seeds, {latents} latents ({first['frames']} frames) per video, batches of "
        f"{'/'.join(map(str, sorted({r['batch'] for r in rows}, reverse=True)))} on {first['device']}; mean [95% bootstrap interval] over prompts (seeds averaged first), in %. "
        f"Features: {first['features']}; motion smoothness: {first['interpolator']}.",
        "", "VBench-form dimensions:", "", table(rows, models, variants, texts, VBENCH, paired=False),
        *(["", "Paired difference to FIFO (same model, prompt and seed):", "", table(rows, models, variants, texts, VBENCH, paired=True)] if has_fifo else []),
        "", "Toy-world ground truth (analyzer; sprite and background consistency on their own pixels):", "",
        table(rows, models, variants, texts, toy, paired=False),
        *(["", "Paired difference to FIFO:", "", table(rows, models, variants, texts, toy, paired=True)] if has_fifo else []),
        "", "Drift: mean over the last quarter of the video minus the first quarter:", "",
        table(rows, models, variants, texts, drift, paired=False),
        *(["", "Paired difference to FIFO:", "", table(rows, models, variants, texts, drift, paired=True)] if has_fifo else []),
        "", "| model | variant | model calls / latent (per batch) | ms / frame (batch wall / videos x frames) | reflections triggered / accepted (all videos) |",
        "| --- | --- | ---: | ---: | ---: |",
        *costs,
    ]
    return "\n".join(parts)


def curves(rows: list[dict[str, Any]], models: list[str], variants: list[str]):
    """The analyzer's curves of every (model, variant), averaged over its videos, in one picture."""
    labels = {m: Path(m).name for m in models}
    groups = [Variant(f"{labels[m]} {v}", [r["analysis"] for r in rows if (r["model"], r["variant"]) == (m, v)])
              for m in models for v in variants]
    return draw_curves([g for g in groups if g.summaries], list(DRIFT))


def _names(text: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    """A comma-separated list for argparse; names outside ``allowed`` (before any ``+settings``) are a usage error."""
    names = [n for n in text.split(",") if n]
    bad = [n for n in names if allowed is not None and n.split("+")[0] not in allowed]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of {', '.join(allowed or ('names',))}")
    return names


def main() -> None:
    """Parse the command line, render what is missing, print and write the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/ablation"))
    parser.add_argument("--models", type=_names, default=["toy"], help="base models: names or directories (default toy)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="toy", help="sampler preset of those models (default toy)")
    parser.add_argument("--variants", type=lambda t: _names(t, tuple(VARIANTS)), default=list(VARIANTS),
                        help="comma-separated: fifo, tta, dce, miga, each optionally +key=value+... (default all four)")
    parser.add_argument("--prompts", type=positive_int, default=12)
    parser.add_argument("--prompt-offset", type=at_least(int, 0), default=0, help="skip the first N prompts the seed draws (a disjoint set)")
    parser.add_argument("--prompt-seed", type=int, default=2026, help="draws the prompts (another seed: a held-out set)")
    parser.add_argument("--seeds", type=positive_int, default=2)
    parser.add_argument("--first-seed", type=at_least(int, 0), default=0, help="noise seeds are first-seed .. first-seed + seeds - 1")
    parser.add_argument(
        "--latents", type=positive_int, default=256, help="output latents per video (one frame each: per-frame toy VAE)"
    )
    parser.add_argument("--device", default="cpu", help="where the models run: cpu | cuda (default cpu)")
    parser.add_argument("--workers", type=positive_int, default=2, help="scoring processes (default 2)")
    parser.add_argument("--report", action="store_true", help="summarise the videos already in --out; render nothing")
    args = parser.parse_args()
    worlds = {model_world(m) for m in args.models}
    if len(worlds) > 1:
        parser.error(f"--models: the models were trained on different toy worlds ({', '.join(map(str, worlds))}); compare them apart")
    try:
        texts, seeds = prompts(args.prompts, args.prompt_seed, worlds.pop(), args.prompt_offset), list(range(args.first_seed, args.first_seed + args.seeds))
        for variant in args.variants:  # every setting validated before anything renders
            variant_config(variant, args.models[0], args.preset, args.device)
    except (ValueError, ConfigError) as error:
        parser.error(str(error).replace("sampler.", "--variants: ", 1) if isinstance(error, ConfigError) else str(error))
    if args.report:
        done = _done(args.out / "videos.jsonl").values()
        seeds = sorted({r["seed"] for r in done if r["seed"] in seeds})
        rows = [r for r in done if r["model"] in args.models and r["variant"] in args.variants and r["prompt"] in texts
                and r["seed"] in seeds and r["latents"] == args.latents]
    else:
        rows = run(args.out, args.models, args.preset, args.variants, texts, seeds, args.latents, args.device, args.workers)
    text = report(rows, args.models, args.variants, texts, seeds, args.latents)
    (args.out / "table.md").write_text(text + "\n")
    curves(rows, args.models, args.variants).save(args.out / "curves.png")
    print(text)


if __name__ == "__main__":
    main()
