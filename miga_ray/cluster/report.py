"""What a batch leaves for people: ``<out>/manifest.parquet`` (one row per job), a summary, and the
status of a whole run read from storage alone."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..job import JobSpec, StoredJob
from ..job import manifest_row as job_manifest_row
from ..storage import (
    JobProblem,
    JobRecord,
    ManifestRow,
    ObjectStore,
    check_video,
    read_job,
    read_manifest,
    update_manifest,
)
from .batch import BatchResult, JobState


def manifest_row(state: JobState) -> ManifestRow:
    """A job's manifest row: its outcome, or its last error if every attempt failed."""
    job, o = state.job, state.outcome
    cluster = {"attempts": state.attempts, "errors": state.errors}
    if o is not None:
        cluster |= {"worker": o.worker, "node_id": o.node_id, "skipped": o.skipped, "resumed_from": o.resumed_from,
                    "run_s": o.run_s, "driver_overhead_s": state.overhead_s}  # fmt: skip
    metrics = (dict(o.metrics) if o is not None else {}) | {"cluster": cluster}
    return job_manifest_row(
        job.id,
        StoredJob.read(JobSpec(job.prompt, job.cfg).config_section()),
        o.status if o is not None else "failed",  # type: ignore[arg-type]
        dict(o.timings) if o is not None else {},
        metrics,
        error=None if o is not None else (state.errors[-1] if state.errors else "not run"),
    )


def write_manifest(store: ObjectStore, result: BatchResult) -> list[ManifestRow]:
    """Merge this batch's rows into ``<out>/manifest.parquet`` (by job id); return the whole manifest."""
    return update_manifest(store, [manifest_row(s) for s in result.states])


def summary(result: BatchResult) -> str:
    """A few lines: counts, output latents per second, driver overhead, and each failure with its cause."""
    done = result.done
    rendered = [s for s in done if not s.outcome.skipped]
    skipped = len(done) - len(rendered)
    resumed = sum(1 for s in rendered if s.outcome.resumed_from is not None)
    retried = sum(1 for s in result.states if s.attempts > 1)
    latents = sum(s.outcome.latents for s in rendered)
    rate = latents / result.wall_s if result.wall_s > 0 else 0.0
    overheads = [s.overhead_s for s in rendered if s.overhead_s is not None]
    lines = [
        f"{len(result.states)} jobs on {result.workers} workers: {len(rendered)} rendered ({resumed} resumed, {retried} retried), "
        f"{skipped} already done, {len(result.failed)} failed",
        f"{latents} output latents in {result.wall_s:.1f} s ({rate:.2f} latents/s)"
        + (f"; driver overhead {1000 * sum(overheads) / len(overheads):.0f} ms per job" if overheads else ""),
    ]
    lines += [f"failed {s.job.id} (row {s.job.row}) after {s.attempts} attempt(s): {s.errors[-1] if s.errors else 'not run'}" for s in result.failed]
    return "\n".join(lines)


@dataclass
class RunStatus:
    """One job of a run directory: its job.json if there is one, else its manifest row."""

    job_id: str
    status: str
    frames_done: int
    frames_total: int | None
    error: str | None
    story: list[dict] | None = None  # a story job's entries ({at, prompt}); None for one prompt


def story_of(record: JobRecord) -> list[dict] | None:
    """A job's story entries as its job.json records them, or None (one prompt, or a record without a config)."""
    return StoredJob.of(record).story


def run_status(store: ObjectStore) -> list[RunStatus]:
    """Status of every job under ``store``: the manifest's jobs plus any job directory with a job.json; ``problem``
    (its error says what) for a job whose job.json is corrupt or whose finished video is damaged."""
    rows = {row.id: row for row in read_manifest(store)}
    listed = sorted({k.split("/")[0] for k in store.list("") if k.count("/") == 1 and k.endswith("/job.json")})
    ids = [*rows, *(i for i in listed if i not in rows)]
    out = []
    for job_id in ids:
        record: JobRecord | None = None
        try:
            record = read_job(store, job_id)
            if record is not None and record.status == "done":
                check_video(store, job_id)
        except JobProblem as exc:  # this job's problem, not the run's: the other jobs are still listed
            out.append(RunStatus(job_id, "problem", record.frames_done if record else 0, record.frames_total if record else None, str(exc)))
            continue
        if record is not None:
            out.append(RunStatus(job_id, record.status, record.frames_done, record.frames_total, record.error, story_of(record)))
        else:
            row = rows[job_id]
            out.append(RunStatus(job_id, row.status, 0, row.frames, row.error, json.loads(row.story) if row.story else None))
    return out
