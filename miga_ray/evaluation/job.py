"""Quality numbers of finished jobs, kept with them: a job's evaluation goes into its ``job.json``
(``metrics.evaluation``, its cost in ``timings.evaluate``), and ``evaluate_run`` fills in every job
of an output directory that lacks one and rewrites the manifest, without re-rendering anything.

Evaluation reads only the stored video (or PNG frames), streamed once in chunks, so it runs on the
CPU after the video is done, outside any model lock, in memory that does not grow with the video.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import av

from ..config import EvaluationSettings
from ..job import StoredJob, manifest_row
from ..storage import (
    JobProblem,
    JobRecord,
    ManifestRow,
    ObjectNotFound,
    ObjectStore,
    check_video,
    load_job,
    read_manifest,
    run_job_ids,
    update_manifest,
    write_job,
)
from ..storage.lease import LeaseHeld, held
from ..storage.quality import EVALUATION
from .frames import job_source
from .report import source_report

Outcome = Literal["evaluated", "had", "not done", "busy", "problem"]


class JobBusy(JobProblem):
    """Another process writes the job (holds its lease, or wrote its job.json while it was evaluated): not evaluated."""


def evaluate_job(store: ObjectStore, job_id: str, settings: EvaluationSettings) -> JobRecord:
    """Evaluate a done job's video and record the report in its job.json; JobProblem if it has no usable
    job.json or video, or is not done; JobBusy if another process writes it meanwhile.

    The record is written under the job's lease and only if it is still the one evaluated (a compare and swap:
    the lease is taken by a conditional create), so a concurrent render or extension is never overwritten."""
    record = load_job(store, job_id)
    if record.status != "done":
        raise JobProblem(f"job is {record.status}, not done: nothing to evaluate")
    check_video(store, job_id)
    t0 = time.perf_counter()
    try:
        with job_source(store, job_id) as source:
            report = source_report(source, StoredJob.of(record).prompt, settings.dino, settings.clip, settings.bins)
    except ObjectNotFound:
        raise JobProblem("video.mp4 is missing") from None
    except (av.error.FFmpegError, ValueError, OSError, IndexError) as exc:  # not a video FFmpeg (or PIL, for PNG frames) can read
        raise JobProblem(f"video is corrupt ({type(exc).__name__}: {str(exc)[:200]})") from None
    if isinstance(report.get("toy_world"), dict):  # its means and drift figures are in report["drift"] already
        del report["toy_world"]
    seconds = time.perf_counter() - t0
    try:
        with held(store, job_id) as fenced:
            fenced.remove_temp(job_id)  # the one writer now: what killed writes left goes
            if load_job(fenced, job_id) != record:
                raise JobBusy("its job.json changed while it was evaluated (a render or extension wrote it); evaluate it again")
            record.metrics[EVALUATION] = report
            record.timings["evaluate"] = seconds
            write_job(fenced, record)
    except LeaseHeld as exc:
        raise JobBusy(f"{exc}; not evaluated") from None
    return record


@dataclass
class JobEvaluation:
    """What ``evaluate_run`` did with one job directory."""

    job_id: str
    outcome: Outcome
    detail: str = ""


def evaluate_run(
    store: ObjectStore, settings: EvaluationSettings, on_job: Callable[[JobEvaluation], None] | None = None
) -> list[JobEvaluation]:
    """Evaluate every done job of a run directory that has no evaluation yet, then rewrite its manifest
    with one row per job that has a readable job.json (rows from a batch keep their cluster metrics; a
    job whose video could not be evaluated has the problem as its error)."""
    results, rows = [], {row.id: row for row in read_manifest(store)}
    new_rows = []
    for job_id in run_job_ids(store):
        record = None
        try:
            record = load_job(store, job_id)
            if record.status != "done":
                result = JobEvaluation(job_id, "not done", record.status)
            elif EVALUATION in record.metrics:
                check_video(store, job_id)  # numbers of a video that is no longer the one written are not "had"
                result = JobEvaluation(job_id, "had")
            else:
                record = evaluate_job(store, job_id, settings)
                result = JobEvaluation(job_id, "evaluated", f"{record.timings['evaluate']:.2f} s")
        except JobBusy as exc:
            result = JobEvaluation(job_id, "busy", str(exc))
        except JobProblem as exc:
            result = JobEvaluation(job_id, "problem", str(exc))
        if record is not None:
            new_rows.append(manifest_row_of(record, rows.get(job_id), result.detail if result.outcome == "problem" else None))
        results.append(result)
        if on_job:
            on_job(result)
    update_manifest(store, new_rows)
    return results


def manifest_row_of(record: JobRecord, row: ManifestRow | None, problem: str | None = None) -> ManifestRow:
    """A job's manifest row from its job.json (``job.manifest_row``): the batch's row (if any) fills in what the
    record lacks and keeps its cluster metrics; ``problem`` is its error when the job has none of its own."""
    cluster = {"cluster": row.metrics["cluster"]} if row is not None and "cluster" in row.metrics else {}
    return manifest_row(
        record.job_id, StoredJob.of(record), record.status, record.timings, record.metrics | cluster,
        error=record.error or problem, frames=record.frames_total, fallback=row,
    )
