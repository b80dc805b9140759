"""Stories on the toy world: how fast FIFO and MIGA follow a prompt switch, and how consistent each part stays.

    python jobs/story_study.py [--out out/story] [--frames 240] [--seeds 0,1] [--workers 2] [--sheet docs/story_sheet.png]

Renders two- and three-part stories (the sprite's colour, the background change; the shipped model draws
one shape, so no story changes it) with the shipped toy model (``toy`` preset) as ``miga render --story``
builds them, under FIFO and MIGA with story transitions of 0, 4 and 8 latents, and MIGA with switches ignored (``at_switch: ignore``: guidance
reaches across a switch and reflection judges across it) to measure what the rule does. MIGA runs with
reflection throughout (``reflect_during: always``) so that it meets every switch.

Per switch it reports the frames from the switch until the analyzer sees the new prompt in the attribute
the switch changes (colour, shape or background: the first frame that shows it, from which it shows in at
least half of the next 8 frames and more often than the old one; the part's length if never), the share
of the part's frames that show the whole prompt (every sprite's shape and colour, the background) from
then on, and the sprite and background consistency inside
each part (VBench form, the part scored on its own). Reflection counts: judged, replaced, paused at a
switch, and replacements of a group judged against references across a switch (false reverts).
One JSON line per video goes to ``<out>/videos.jsonl`` (a stopped run continues); the table to stdout
and ``<out>/table.md``; ``--sheet`` draws one story under FIFO and MIGA as a contact sheet.
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

from miga_ray.config import load_config
from miga_ray.engines import build_engine, decoded_video, load_for
from miga_ray.evaluation.toy_world import analyze
from miga_ray.models.toy_world import parse_prompt

STORIES: dict[str, list[tuple[float, str]]] = {  # (fraction of the video where the part starts, prompt)
    "colour": [(0, "a red circle moving over sand"), (0.5, "a blue circle moving over sand")],
    "background": [(0, "a yellow circle moving over water"), (0.5, "a yellow circle moving over snow")],
    "three": [(0, "a red circle moving over sand"), (1 / 3, "a blue circle moving over sand"), (2 / 3, "a blue circle moving over snow")],
}
VARIANTS: dict[str, list[str]] = {  # name -> --set overrides
    "fifo t0": ["sampler.kind=fifo", "story.transition=0"],
    "fifo t8": ["sampler.kind=fifo", "story.transition=8"],
    "miga t0": ["story.transition=0"],
    "miga t4": ["story.transition=4"],
    "miga t8": ["story.transition=8"],
    "miga t0 ignore": ["story.transition=0", "story.at_switch=ignore"],
}
SEEN_RUN = 8  # frames over which the analyzer must see the new prompt more often than not


def story_entries(name: str, frames: int) -> list[dict[str, Any]]:
    """The story's entries for a video of ``frames`` frames."""
    return [{"at": int(round(f * frames)), "prompt": p} for f, p in STORIES[name]]


@torch.no_grad()
def render(story: str, variant: str, seed: int, frames: int) -> tuple[np.ndarray, dict[str, Any]]:
    """One story video as ``miga render --story`` builds it, decoded in memory: uint8 ``[F, H, W, 3]`` and its counters."""
    torch.set_num_threads(1)
    overrides = [*VARIANTS[variant], "sampler.miga.reflect_during=always", "model.device=cpu"]
    cfg = load_config(None, overrides, story={"parts": story_entries(story, frames)}, frames=frames, seed=seed)
    model = load_for(cfg)
    start = time.monotonic()
    engine = build_engine(model, cfg, cfg.job_prompt(None), frames)  # the toy VAE: one latent per frame
    video = decoded_video(model, engine)[0].numpy()
    return video, {"seconds": time.monotonic() - start, "model_calls": engine.counters.total_calls,
                   "reflections": dict(engine.counters.reflections)}


def matches(video: np.ndarray, prompt: str, only: str | None = None) -> np.ndarray:
    """Per frame: the analyzer finds every sprite of ``prompt`` with its colour and shape over its background,
    or, with ``only``, just that attribute (``colour``, ``shape`` or ``background``)."""
    report = analyze(video, prompt)
    found = {"colour": report.present.all(axis=1), "shape": report.shape_ok.all(axis=1), "background": report.background_ok}
    return found[only] if only else found["shape"] & found["background"]


def changed(old: str, new: str) -> str:
    """The attribute a switch changes (the study's stories change one at a time)."""
    a, b = parse_prompt(old), parse_prompt(new)
    if a.background != b.background:
        return "background"
    return "colour" if [s.color for s in a.sprites] != [s.color for s in b.sprites] else "shape"


def seen_from(new: np.ndarray, old: np.ndarray | None) -> int:
    """The first frame that shows the new prompt and from which, over ``SEEN_RUN`` frames, the new prompt shows
    in at least half the frames and more often than the old one; ``len(new)`` if none."""
    for d in range(len(new)):
        rate = new[d : d + SEEN_RUN].mean()
        if new[d] and rate >= 0.5 and (old is None or rate > old[d : d + SEEN_RUN].mean()):
            return d
    return len(new)


def score(video: np.ndarray, entries: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per part: frames until its prompt is seen, its recognition from then on, and its consistency from
    then on (the part scored on its own: VBench form compares with the part's first seen frame)."""
    bounds = [e["at"] for e in entries] + [len(video)]
    parts = []
    for k, entry in enumerate(entries):
        clip = video[bounds[k] : bounds[k + 1]]
        full = matches(clip, entry["prompt"])
        if k:
            what = changed(entries[k - 1]["prompt"], entry["prompt"])
            latency = seen_from(matches(clip, entry["prompt"], what), matches(clip, entries[k - 1]["prompt"], what))
        else:
            what, latency = "all", seen_from(full, None)
        settled = analyze(clip[latency:], entry["prompt"]) if latency + 2 <= len(clip) else None
        parts.append({
            "changed": what,
            "latency": float(latency),
            "recognition": float(full[latency:].mean()) if latency < len(full) else 0.0,
            "subject_consistency": settled.subject_consistency if settled else float("nan"),
            "background_consistency": settled.background_consistency if settled else float("nan"),
        })  # fmt: skip
    return parts


def one(job: tuple[str, str, int, int, Path]) -> dict[str, Any]:
    """Render and score one (story, variant, seed); its frames are kept in ``<out>/videos/`` for re-scoring."""
    story, variant, seed, frames, out = job
    video, costs = render(story, variant, seed, frames)
    np.savez_compressed(video_path(out, story, variant, seed, frames), video=video)
    entries = story_entries(story, frames)
    return {"story": story, "variant": variant, "seed": seed, "frames": frames, "entries": entries, "parts": score(video, entries), **costs}


def run(out: Path, frames: int, seeds: list[int], variants: list[str], workers: int, rescore: bool = False) -> list[dict[str, Any]]:
    """Every (story, variant, seed) not yet in ``<out>/videos.jsonl``; returns all rows of this setting
    (``rescore``: the rows already there scored again from their kept frames)."""
    (out / "videos").mkdir(parents=True, exist_ok=True)
    path = out / "videos.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    if rescore:
        for r in rows:
            r["parts"] = score(np.load(video_path(out, r["story"], r["variant"], r["seed"], r["frames"]))["video"], r["entries"])
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    have = {(r["story"], r["variant"], r["seed"], r["frames"]) for r in rows}
    jobs = [(s, v, seed, frames, out) for seed in seeds for s in STORIES for v in variants if (s, v, seed, frames) not in have]
    print(f"{len(have)} videos done, {len(jobs)} to render", flush=True)
    with ProcessPoolExecutor(workers) as pool, path.open("a") as sink:
        for row in pool.map(one, jobs):
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            rows.append(row)
            print(f"{row['story']} / {row['variant']} / seed {row['seed']}: {row['seconds']:.0f} s", flush=True)
    return [r for r in rows if r["frames"] == frames and r["seed"] in seeds and r["variant"] in variants]


def switches(row: dict[str, Any]) -> list[tuple[dict[str, float], int]]:
    """A video's parts after the first, each with its length in frames."""
    starts = [e["at"] for e in row["entries"]] + [row["frames"]]
    return [(p, starts[k + 1] - starts[k]) for k, p in enumerate(row["parts"]) if k]


def table(rows: list[dict[str, Any]], variants: list[str]) -> str:
    """Markdown: per variant, the means over stories and seeds of the switch figures (parts after the
    first; latency over the switches seen, and how many never were), of the first part's, and of in-part
    consistency; reflection counts summed."""
    lines = [
        "| variant | frames to see a switch (mean, max; switches never seen) | recognition after a switch | first part seen after | "
        "sprite cons. in parts | bg cons. in parts | reflection judged / replaced / paused at switch / false reverts |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in variants:
        rs = [r for r in rows if r["variant"] == v]
        if not rs:
            continue
        later = [(p, n) for r in rs for p, n in switches(r)]
        never = sum(p["latency"] >= n for p, n in later)
        allp = [p for r in rs for p in r["parts"]]
        refl = {k: sum(r["reflections"].get(k, 0) for r in rs) for k in ("judged", "accepted", "paused_at_switch", "accepted_at_switch")}
        lat = [p["latency"] for p, n in later if p["latency"] < n]
        lines.append(
            f"| {v} | {np.mean(lat):.1f}, {max(lat):.0f}; {never} | {np.mean([p['recognition'] for p, _ in later]):.3f} | "
            f"{np.mean([r['parts'][0]['latency'] for r in rs]):.1f} | {np.nanmean([p['subject_consistency'] for p in allp]):.4f} | "
            f"{np.nanmean([p['background_consistency'] for p in allp]):.4f} | "
            f"{refl['judged']} / {refl['accepted']} / {refl['paused_at_switch']} / {refl['accepted_at_switch']} |"
        )
    return "\n".join(lines)


def per_switch(rows: list[dict[str, Any]], variants: list[str]) -> str:
    """Markdown: frames to see each switch, per story and variant (mean over seeds)."""
    head = "| story, switch | " + " | ".join(variants) + " |"
    lines = [head, "| --- |" + " --- |" * len(variants)]
    for story, entries in STORIES.items():
        for k in range(1, len(entries)):
            cells = []
            for v in variants:
                lat = [r["parts"][k]["latency"] for r in rows if r["story"] == story and r["variant"] == v]
                cells.append(f"{np.mean(lat):.1f}" if lat else "-")
            lines.append(f"| {story}, {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def video_path(out: Path, story: str, variant: str, seed: int, frames: int) -> Path:
    """Where ``one`` keeps a video's frames."""
    return out / "videos" / f"{story}-{variant.replace(' ', '_')}-s{seed}-{frames}.npz"


def contact_sheet(path: Path, out: Path, story: str, variants: list[str], seed: int, frames: int) -> None:
    """One story under the given variants (rendered by ``run``): a row of frames each, labelled, around every switch."""
    from PIL import Image, ImageDraw

    entries = story_entries(story, frames)
    picks = sorted({min(frames - 1, max(0, e["at"] + d)) for e in entries[1:] for d in (-8, 0, 4, 16)} | {0, frames - 1})
    rows = []
    for variant in variants:
        video = np.load(video_path(out, story, variant, seed, frames))["video"]
        rows.append((variant.upper(), [video[i] for i in picks]))
    h, w = rows[0][1][0].shape[:2]
    scale, label = 2, 90
    sheet = Image.new("RGB", (label + len(picks) * w * scale, len(rows) * (h * scale + 14) + 14), "black")
    draw = ImageDraw.Draw(sheet)
    for c, i in enumerate(picks):
        draw.text((label + c * w * scale + 2, 1), f"frame {i}", fill="white")
    for r, (name, tiles) in enumerate(rows):
        y = 14 + r * (h * scale + 14)
        draw.text((4, y + h * scale // 2), name, fill="white")
        for c, tile in enumerate(tiles):
            sheet.paste(Image.fromarray(tile).resize((w * scale, h * scale), Image.NEAREST), (label + c * w * scale, y))
    text = "; ".join(f"from {e['at']}: {e['prompt']}" for e in entries)
    draw.text((4, sheet.height - 13), text, fill="white")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("out/story"))
    p.add_argument("--frames", type=int, default=240)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rescore", action="store_true", help="score the videos already rendered again from their kept frames")
    p.add_argument("--sheet", type=Path, help="also draw the three-part story (first seed) as a contact sheet PNG here")
    p.add_argument("--sheet-variants", default="fifo t0,miga t0", help="the rows of the contact sheet")
    a = p.parse_args()
    variants = a.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    rows = run(a.out, a.frames, [int(s) for s in a.seeds.split(",")], variants, a.workers, a.rescore)
    text = f"{table(rows, variants)}\n\nFrames to see each switch (mean over seeds):\n\n{per_switch(rows, variants)}\n"
    (a.out / "table.md").write_text(text)
    print(text)
    if a.sheet:
        contact_sheet(a.sheet, a.out, "three", a.sheet_variants.split(","), int(a.seeds.split(",")[0]), a.frames)
        print(f"contact sheet: {a.sheet}")


if __name__ == "__main__":
    main()
