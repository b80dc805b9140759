"""The quality numbers a job records: the one list of flat metric columns (manifest, gallery) and
where each is read from in the evaluation a job's ``job.json`` holds under ``metrics.evaluation``.

The evaluation is ``miga eval``'s report of the job's video: ``vbench`` (the VBench-form
dimensions with the configured feature extractor) and, for toy-world prompts, ``drift`` (the
analyzer's per-series ``mean`` and ``drift`` figure, last quarter minus first).
"""

from __future__ import annotations

import math
from typing import Any

EVALUATION = "evaluation"  # the key of the evaluation report in a job's metrics

# column -> (path in the evaluation report, what it means)
QUALITY_COLUMNS: dict[str, tuple[tuple[str, ...], str]] = {
    "overall": (("vbench", "overall"), "plain mean of the four VBench-form dimensions"),
    "subject_consistency": (
        ("vbench", "subject_consistency"),
        "VBench subject consistency (DINO, or the pixel fallback)",
    ),
    "background_consistency": (
        ("vbench", "background_consistency"),
        "VBench background consistency (CLIP, or the pixel fallback)",
    ),
    "motion_smoothness": (("vbench", "motion_smoothness"), "VBench motion smoothness"),
    "temporal_flickering": (("vbench", "temporal_flickering"), "VBench temporal flickering"),
    "toy_subject_consistency": (
        ("drift", "mean", "subject_consistency"),
        "toy world: consistency of the sprites alone",
    ),
    "toy_background_consistency": (
        ("drift", "mean", "background_consistency"),
        "toy world: consistency of the background alone",
    ),
    "toy_color_rate": (
        ("drift", "mean", "color_rate"),
        "toy world: share of frames x sprites with the prompted colour",
    ),
    "toy_shape_rate": (("drift", "mean", "shape_rate"), "toy world: ... with the prompted shape"),
    "toy_count_rate": (
        ("drift", "mean", "count_rate"),
        "toy world: share of frames with the prompted number of sprites",
    ),
    "toy_background_rate": (
        ("drift", "mean", "background_rate"),
        "toy world: share of frames with the prompted background",
    ),
    "drift_subject_consistency": (
        ("drift", "drift", "subject_consistency"),
        "toy world: sprite consistency, last quarter minus first",
    ),
    "drift_background_consistency": (
        ("drift", "drift", "background_consistency"),
        "toy world: background consistency drift",
    ),
    "drift_color_rate": (("drift", "drift", "color_rate"), "toy world: colour rate drift"),
    "drift_shape_rate": (("drift", "drift", "shape_rate"), "toy world: shape rate drift"),
    "drift_count_rate": (("drift", "drift", "count_rate"), "toy world: count rate drift"),
}


def quality_values(metrics: dict[str, Any]) -> dict[str, float | None]:
    """Every quality column's number from a job's metrics (None where it has no evaluation or no such number)."""
    report = metrics.get(EVALUATION)
    values: dict[str, float | None] = {}
    for column, (path, _) in QUALITY_COLUMNS.items():
        value: Any = report
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        values[column] = float(value) if ok else None
    return values
