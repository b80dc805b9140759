"""``<out>/manifest.parquet``: one row per job of a batch, merge-updated by job id, written atomically.

Timings and metrics are JSON strings, so jobs with different metric sets share one fixed schema;
the quality numbers (``quality.QUALITY_COLUMNS``) are also flat float columns, derived from the
metrics' evaluation on every write (null where a job has none), for sorting and filtering. Object
keys are relative to ``<out>``. One batch driver owns the manifest: updates are read-modify-write,
not safe against concurrent writers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .layout import MANIFEST, JobLayout, JobStatus
from .objects import ObjectNotFound, ObjectStore
from .quality import QUALITY_COLUMNS, quality_values

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("story", pa.string()),
        ("seed", pa.int64()),
        ("frames", pa.int64()),
        ("status", pa.string()),
        ("job_json", pa.string()),
        ("playlist", pa.string()),
        ("video", pa.string()),
        ("timings", pa.string()),
        ("metrics", pa.string()),
        ("error", pa.string()),
        *((column, pa.float64()) for column in QUALITY_COLUMNS),
    ]
)
_JSON_COLUMNS = ("timings", "metrics")


@dataclass
class ManifestRow:
    """One job as the manifest records it; the object keys default to the job's layout."""

    id: str
    prompt: str
    seed: int
    frames: int
    status: JobStatus
    timings: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    story: str | None = None  # a story job's entries, a JSON list of {at, prompt}; None for one prompt
    job_json: str = ""
    playlist: str = ""
    video: str = ""

    def __post_init__(self) -> None:
        job = JobLayout(self.id)
        self.job_json = self.job_json or job.job_json
        self.playlist = self.playlist or job.playlist
        self.video = self.video or job.mp4


def read_manifest(store: ObjectStore, key: str = MANIFEST) -> list[ManifestRow]:
    """All rows of the manifest (empty if none has been written)."""
    try:
        data = store.get_bytes(key)
    except ObjectNotFound:
        return []
    names = {f.name for f in fields(ManifestRow)}
    rows = []
    for record in pq.read_table(pa.BufferReader(data)).to_pylist():
        record = {k: v for k, v in record.items() if k in names}
        for column in _JSON_COLUMNS:
            record[column] = json.loads(record[column] or "{}")
        rows.append(ManifestRow(**record))
    return rows


def update_manifest(store: ObjectStore, rows: Iterable[ManifestRow], key: str = MANIFEST) -> list[ManifestRow]:
    """Insert or replace rows by job id (existing order kept, new jobs appended); return the new manifest."""
    merged = {row.id: row for row in read_manifest(store, key)}
    merged.update((row.id, row) for row in rows)
    records = [asdict(row) for row in merged.values()]
    for record in records:
        record.update(quality_values(record["metrics"]))
        for column in _JSON_COLUMNS:
            record[column] = json.dumps(record[column], sort_keys=True)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(records, schema=SCHEMA), sink)
    store.put_bytes(key, sink.getvalue().to_pybytes())
    return list(merged.values())


def run_job_ids(store: ObjectStore, key: str = MANIFEST) -> list[str]:
    """Every job of a run directory: the manifest's rows in order, then every other top-level directory."""
    rows = [row.id for row in read_manifest(store, key)]
    listed = sorted({k.split("/", 1)[0] for k in store.list("") if "/" in k} - set(rows))
    return rows + listed
