"""``miga compare``: toy-world drift summaries of several variants side by side, as a table and as
curves in one PNG (drawn with Pillow).

A variant is one JSON file holding a drift summary (``drift_summary`` / ``ToyReport.summary``), a
``miga eval`` report (its ``drift`` section), or a list of either, one per video, or JSON lines of
them (``.jsonl``). A variant of several videos is shown as their mean per bin.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..config import ConfigError

DEFAULT_METRICS = ("subject_consistency", "background_consistency", "color_rate", "shape_rate", "size_rate", "count_rate")
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194), (23, 190, 207))
PANEL = (380, 240)  # width, height of one metric's panel in pixels
MARGIN = (60, 28, 14, 30)  # left, top, right, bottom of the plot area inside a panel
COLUMNS = 3
MIN_SPAN = 0.02  # a panel's y axis spans at least this much, so noise far below it stays flat
LEGEND_HEIGHT = 30
AXIS, GRID, TEXT = (90, 90, 90), (225, 225, 225), (20, 20, 20)


@dataclass
class Variant:
    """One variant: its name and the drift summaries of its videos."""

    name: str
    summaries: list[dict[str, Any]]

    def _values(self, section: str, metric: str) -> np.ndarray:
        """The metric's value in one section ('mean' or 'drift') of every video, NaN where undefined."""
        return np.array([_number(s[section].get(metric)) for s in self.summaries])

    def mean(self, metric: str) -> float:
        """Mean over videos of the metric's mean over frames."""
        return _nanmean(self._values("mean", metric))

    def drift(self, metric: str) -> float:
        """Mean over videos of the metric's drift figure (last quarter minus first)."""
        return _nanmean(self._values("drift", metric))

    def curve(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """Bin centres in frames and the metric's mean per bin over videos (NaN where undefined)."""
        centres = np.array([_bin_centres(s) for s in self.summaries])
        values = np.array([[_number(v) for v in s["curves"][metric]] for s in self.summaries])
        return centres.mean(axis=0), np.array([_nanmean(column) for column in values.T])


def _number(value: float | None) -> float:
    """A JSON number, or NaN for null."""
    return math.nan if value is None else float(value)


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite values; NaN when there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _bin_centres(summary: dict[str, Any]) -> list[float]:
    """Centre frame of every bin of a summary."""
    starts = summary["bin_starts"]
    ends = [*starts[1:], summary["num_frames"]]
    return [(a + b - 1) / 2 for a, b in zip(starts, ends)]


def _as_summary(item: Any, path: Path) -> dict[str, Any]:
    """A drift summary itself, or the drift section of a ``miga eval`` report."""
    if isinstance(item, dict) and isinstance(item.get("drift"), dict) and "curves" in item["drift"]:
        item = item["drift"]
    if not (isinstance(item, dict) and {"curves", "mean", "drift", "bin_starts", "num_frames"} <= item.keys()):
        raise ConfigError(f"{path}: not a drift summary or a `miga eval` report with a drift section (a toy-world prompt)")
    return item


def load_variant(path: Path, name: str) -> Variant:
    """Read one variant's file."""
    try:
        text = path.read_text()
        items = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    summaries = [_as_summary(item, path) for item in (items if isinstance(items, list) else [items])]
    if not summaries or len({len(s["bin_starts"]) for s in summaries}) != 1:
        raise ConfigError(f"{path}: needs at least one summary, all with the same number of bins")
    return Variant(name, summaries)


def table(variants: list[Variant], metrics: list[str]) -> str:
    """Plain-text table: one row per metric, per variant its mean and drift (last quarter minus first)."""
    width = max(len("0.000 (+0.000)"), *(len(v.name) for v in variants))
    lines = [
        "mean over frames (drift = last quarter - first), averaged over each variant's videos",
        f"{'metric':<24}" + "".join(f"{v.name:>{width + 2}}" for v in variants),
        f"{'videos':<24}" + "".join(f"{len(v.summaries):>{width + 2}}" for v in variants),
    ]
    for metric in metrics:
        cells = [f"{_fmt(v.mean(metric), '.3f')} ({_fmt(v.drift(metric), '+.3f')})" for v in variants]
        lines.append(f"{metric:<24}" + "".join(f"{c:>{width + 2}}" for c in cells))
    return "\n".join(lines)


def _fmt(value: float, spec: str) -> str:
    """A number in the given format, or n/a for NaN."""
    return "n/a" if math.isnan(value) else format(value, spec)


def _range(values: list[np.ndarray]) -> tuple[float, float]:
    """The y range of a panel: the finite values' span, at least MIN_SPAN, plus 5% each side."""
    finite = np.concatenate([v[np.isfinite(v)] for v in values])
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    middle, half = (lo + hi) / 2, max(hi - lo, MIN_SPAN) / 2 * 1.1
    return middle - half, middle + half


def _ticks(lo: float, hi: float) -> tuple[np.ndarray, int]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten, about four of them) and their decimals."""
    raw = (hi - lo) / 4
    step = 10.0 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    return np.arange(math.ceil(lo / step) * step, hi + 1e-9 * step, step), max(0, -math.floor(math.log10(step)))


def _panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], metric: str, variants: list[Variant], xmax: float, font: ImageFont.FreeTypeFont) -> None:
    """One metric's axes, grid, tick labels and a line per variant, with its top-left corner at origin."""
    left, top = origin[0] + MARGIN[0], origin[1] + MARGIN[1]
    right, bottom = origin[0] + PANEL[0] - MARGIN[2], origin[1] + PANEL[1] - MARGIN[3]
    curves = [v.curve(metric) for v in variants]
    lo, hi = _range([ys for _, ys in curves])
    xmax = max(xmax, 1.0)

    def point(x: float, y: float) -> tuple[float, float]:
        """Data to pixel coordinates."""
        return left + (right - left) * x / xmax, bottom - (bottom - top) * (y - lo) / (hi - lo)

    draw.text((left, origin[1] + 6), metric, fill=TEXT, font=font)
    ys, digits = _ticks(lo, hi)
    for y in ys:
        py = point(0, y)[1]
        draw.line([(left, py), (right, py)], fill=GRID)
        draw.text((left - 4, py), f"{y:.{digits}f}", fill=TEXT, font=font, anchor="rm")
    for x in _ticks(0, xmax)[0]:
        px = point(x, lo)[0]
        draw.line([(px, bottom), (px, bottom + 4)], fill=AXIS)
        draw.text((px, bottom + 6), f"{x:.0f}", fill=TEXT, font=font, anchor="ma")
    draw.rectangle([left, top, right, bottom], outline=AXIS)
    for (xs, ys), colour in zip(curves, _colours(len(variants))):
        finite = np.isfinite(ys)
        runs = np.split(np.arange(len(ys)), np.flatnonzero(np.diff(finite.astype(int))) + 1)
        for run in (r for r in runs if finite[r[0]]):
            points = [point(xs[i], ys[i]) for i in run]
            if len(points) == 1:
                (px, py), = points
                draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
            else:
                draw.line(points, fill=colour, width=2, joint="curve")


def _colours(count: int) -> list[tuple[int, int, int]]:
    """Line colour of each of count variants (the palette repeats beyond its length)."""
    return [PALETTE[i % len(PALETTE)] for i in range(count)]


def draw_curves(variants: list[Variant], metrics: list[str]) -> Image.Image:
    """One panel per metric (x: frame, y: mean per bin), a line per variant, and a legend on top."""
    columns = min(COLUMNS, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    image = Image.new("RGB", (columns * PANEL[0], LEGEND_HEIGHT + rows * PANEL[1]), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)
    x = MARGIN[0]
    for variant, colour in zip(variants, _colours(len(variants))):
        draw.line([(x, LEGEND_HEIGHT // 2), (x + 24, LEGEND_HEIGHT // 2)], fill=colour, width=3)
        draw.text((x + 30, LEGEND_HEIGHT // 2), variant.name, fill=TEXT, font=font, anchor="lm")
        x += 30 + int(draw.textlength(variant.name, font=font)) + 24
    xmax = max(s["num_frames"] - 1 for v in variants for s in v.summaries)
    for i, metric in enumerate(metrics):
        _panel(draw, ((i % columns) * PANEL[0], LEGEND_HEIGHT + (i // columns) * PANEL[1]), metric, variants, xmax, font)
    return image


def compare(paths: list[Path], png: Path | None, metrics: list[str] | None = None) -> str:
    """Load every variant (named by its file's stem, or its path where stems repeat), write the curves to png
    when given, and return the table."""
    stems = [p.stem for p in paths]
    names = stems if len(set(stems)) == len(stems) else [str(p) for p in paths]
    variants = [load_variant(p, n) for p, n in zip(paths, names)]
    metrics = list(metrics or DEFAULT_METRICS)
    unknown = sorted({m for m in metrics for v in variants for s in v.summaries if m not in s["curves"]})
    if unknown:
        known = ", ".join(variants[0].summaries[0]["curves"])
        raise ConfigError(f"unknown metric {', '.join(unknown)}; known: {known}")
    if png is not None:
        draw_curves(variants, metrics).save(png)
    return table(variants, metrics)


CONSISTENCY = ("subject_consistency", "background_consistency", "color_rate", "shape_rate", "count_rate")  # higher is better


def verdict(baseline: Variant, candidate: Variant, metrics: tuple[str, ...] = CONSISTENCY) -> str:
    """One line on whether ``candidate`` is ahead of ``baseline``: on how many metrics its mean over frames is
    higher and its drift (last quarter minus first) no worse, naming them; ahead means a majority."""
    better = [m for m in metrics if candidate.mean(m) > baseline.mean(m) and candidate.drift(m) >= baseline.drift(m)]
    worse = [m for m in metrics if candidate.mean(m) < baseline.mean(m) and candidate.drift(m) <= baseline.drift(m)]
    head = "ahead of" if len(better) * 2 > len(metrics) else "not ahead of"
    return (f"{candidate.name} is {head} {baseline.name} here: higher and drifting no more on {len(better)} of {len(metrics)}"
            f" ({', '.join(better) or 'none'}); lower and drifting no less on {len(worse)} ({', '.join(worse) or 'none'})")
