"""Prompt sets for ``miga batch``: Parquet, JSON lines or CSV rows, every bad row reported at once.

Columns: ``id`` (optional: default from the prompt and the row's whole configuration, as for
``miga render``), ``prompt`` or ``story`` (a JSON list of ``{at, prompt}`` entries, as ``miga render
--story`` reads; one of the two per row), and optionally ``frames``, ``seed``, ``negative_prompt``
(empty cells take the config's value). Rows are numbered from 1 (the first record, not counting a CSV header).
Ids become storage keys: they follow ``storage.check_job_id``'s rule and must be unique.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, RenderConfig, build_config, read_text, shorten, story_data
from ..storage import check_job_id

COLUMNS = ("id", "prompt", "story", "frames", "seed", "negative_prompt")
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


class PromptFileError(ConfigError):
    """A prompt file that cannot be rendered as it is (exit code 2); the message lists every problem."""


@dataclass(frozen=True)
class PromptRow:
    """One validated row: a job id, its prompt or story, and the per-row overrides of the base config."""

    row: int
    id: str | None  # None: the default id, known once the row's config is (``plan_jobs``)
    prompt: str | None  # None: a story row
    frames: int | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    story: dict[str, Any] | None = None  # the story as ``story_data`` reads it; validated by ``config``

    def config(self, base: RenderConfig) -> RenderConfig:
        """The base config with this row's frames, seed, negative prompt and story (ConfigError naming a bad story entry)."""
        data = base.model_dump()
        data.update({k: v for k, v in (("frames", self.frames), ("seed", self.seed), ("negative_prompt", self.negative_prompt)) if v is not None})
        if self.story is not None:
            data["story"] = {**(data.get("story") or {}), **self.story}
        return build_config(data)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The raw rows of a Parquet, JSON-lines or CSV file, as dicts (CSV cells as strings)."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise PromptFileError(f"{path}: unknown prompt file type {path.suffix!r}; use .parquet, .jsonl or .csv")
    if not path.is_file():
        raise PromptFileError(f"{path}: no such file")
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise PromptFileError(f"{path}: not a readable Parquet file: {exc}") from None
    text = read_text(path, str(path), encoding="utf-8-sig")
    if kind == "csv":
        try:
            return list(csv.DictReader(io.StringIO(text, newline="")))  # quoted newlines stay inside their cell
        except csv.Error as exc:
            raise PromptFileError(f"{path}: not valid CSV: {exc}") from None
    records, problems = [], []
    lines = (ln.removesuffix("\r") for ln in text.split("\n"))  # JSON lines end at \n only: U+2028 is legal in a string
    for n, line in enumerate((ln for ln in lines if ln.strip()), start=1):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"row {n}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(value, dict):
            problems.append(f"row {n}: expected a JSON object, got {type(value).__name__}")
            continue
        records.append(value)
    if problems:
        raise PromptFileError(f"{path}: {len(problems)} bad row(s):\n  " + "\n  ".join(problems))
    return records


def _blank(value: Any, nan: bool = True) -> bool:
    """An empty cell: None, blank text, or (unless ``nan`` is False: a number column, where NaN is a bad value) NaN."""
    return value is None or (nan and isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def _integer(value: Any) -> int | None:
    """An integer from an int, an integral float or a decimal string; None if it is none of these."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        return int(value)
    return None


def _check_row(n: int, record: dict[str, Any], problems: list[str]) -> PromptRow | None:
    """Validate one record, appending ``row n: ...`` for each problem; return the row if it is good."""
    bad = len(problems)
    prompt, story = record.get("prompt"), None
    if not _blank(record.get("story")):
        try:
            story = story_data(record["story"], "story")
        except ConfigError as exc:
            problems.append(f"row {n}: {exc}")
        if not _blank(prompt):
            problems.append(f"row {n}: both prompt and story; give one")
    elif _blank(prompt) or not isinstance(prompt, str):
        problems.append(f"row {n}: missing prompt (or story)")
    values: dict[str, int | None] = {}
    for name, low, high in (("frames", 1, 1_000_000), ("seed", 0, 2**63 - 1)):
        raw = record.get(name)
        if _blank(raw, nan=False):
            values[name] = None
            continue
        value = _integer(raw)
        if value is None:
            problems.append(f"row {n}: {name} must be an integer, got {raw!r}")
        elif not low <= value <= high:
            problems.append(f"row {n}: {name} must be between {low} and {high}, got {value}")
        values[name] = value
    negative = record.get("negative_prompt")
    if not _blank(negative) and not isinstance(negative, str):
        problems.append(f"row {n}: negative_prompt must be text, got {negative!r}")
    raw_id = record.get("id")
    job_id = None
    if not _blank(raw_id):
        job_id = str(raw_id) if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) else repr(raw_id)
        try:
            check_job_id(job_id)
        except ValueError as exc:
            problems.append(f"row {n}: unsafe id {shorten(job_id, 60)}: {exc}")
    if len(problems) > bad:
        return None
    text = None if story is not None else prompt.strip()
    return PromptRow(n, job_id, text, values["frames"], values["seed"], None if _blank(negative) else negative, story)


def parse_prompts(records: list[dict[str, Any]], source: str = "prompts") -> list[PromptRow]:
    """Validate raw records; raise PromptFileError listing every bad row (with its number) at once."""
    problems: list[str] = []
    if not records:
        raise PromptFileError(f"{source}: no rows")
    unknown = sorted({k for r in records for k in r} - set(COLUMNS))
    if unknown:
        problems.append(f"unknown column(s) {', '.join(map(repr, unknown))}; expected {', '.join(COLUMNS)}")
    rows, first_seen = [], {}
    for n, record in enumerate(records, start=1):
        row = _check_row(n, record, problems)
        if row is None:
            continue
        if row.id is not None and row.id in first_seen:
            problems.append(f"row {n}: duplicate id {row.id!r} (first on row {first_seen[row.id]})")
            continue
        first_seen[row.id] = n
        rows.append(row)
    if problems:
        raise PromptFileError(f"{source}: {len(problems)} problem(s), nothing rendered:\n  " + "\n  ".join(problems))
    return rows


def read_prompts(path: str | Path) -> list[PromptRow]:
    """Read and validate a prompt file (see the module doc)."""
    path = Path(path)
    return parse_prompts(read_records(path), str(path))
