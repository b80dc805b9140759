"""``miga batch`` as one function: validate the prompt set, skip finished jobs, start workers on
Ray, drive the batch, write the manifest and the gallery page (refreshed as jobs finish)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import ray

from ..config import ConfigError, RenderConfig
from ..gallery import write_gallery
from ..storage import ObjectStore, StoreError, open_store
from .batch import BatchDriver, BatchResult, Event, already_done, plan_jobs
from .prompts import read_prompts
from .report import write_manifest

log = logging.getLogger(__name__)
GALLERY_EVERY_S = 10.0  # the gallery lists the whole output: refresh it at most this often while jobs finish
GALLERY_EVENTS = {"start", "done", "evaluated", "evaluation_failed", "failed"}


def refreshing_gallery(store: ObjectStore, on_event: Callable[[Event], None] | None) -> Callable[[Event], None]:
    """``on_event`` that also rewrites ``<out>/index.html`` when a job starts or finishes (at most every GALLERY_EVERY_S)."""
    last = [-GALLERY_EVERY_S]

    def handle(event: Event) -> None:
        if on_event:
            on_event(event)
        if event["event"] in GALLERY_EVENTS and time.monotonic() - last[0] >= GALLERY_EVERY_S:
            last[0] = time.monotonic()
            try:
                write_gallery(store)
            except Exception:  # noqa: BLE001 - the page is a view; the batch goes on without it
                log.warning("could not refresh the gallery page", exc_info=True)

    return handle


def run_batch(
    prompts: str | Path,
    cfg: RenderConfig,
    out: str,
    workers: int | None = None,
    address: str | None = None,
    resource: str | None = None,
    cpus: float = 0.5,
    fanout: int = 2,
    max_attempts: int = 3,
    on_event: Callable[[Event], None] | None = None,
    per_job: int = 1,
) -> BatchResult:
    """Render every row of ``prompts`` into ``out`` on Ray workers; write ``<out>/manifest.parquet``.
    With ``per_job`` > 1 the workers form teams of that many and each job is split over a team.

    Bad rows raise ``PromptFileError`` and an unusable ``out`` raises ``ConfigError``, both before
    any worker starts. Jobs already done with the same configuration are not sent to a worker.
    """
    if per_job < 1 or (workers is not None and per_job > workers):
        raise ConfigError(f"--workers-per-job {per_job}: must be from 1 to --workers ({workers})")
    jobs = plan_jobs(read_prompts(prompts), cfg)
    try:
        store = open_store(out)
    except (StoreError, ValueError, OSError) as exc:
        raise ConfigError(f"--out {out}: {exc}") from None
    finished = {j.id: o for j in jobs if (o := already_done(store, j)) is not None}
    handles: list = []
    leaders: list = []
    started = False
    try:
        if len(finished) < len(jobs):
            from .runtime import WorkerSpec, connect, start_teams  # loads torch and the model code

            started = connect(address)
            if not out.startswith("s3://") and len(ray.nodes()) > 1:
                log.warning("--out %s is a local path on a %d-node cluster: every node must see it (use s3://)", out, len(ray.nodes()))
            spec = WorkerSpec.for_cluster(resource, cpus, fanout=fanout)
            n = workers or max(1, int(ray.cluster_resources().get("GPU", 0)))
            if per_job > n:
                raise ConfigError(f"--workers-per-job {per_job}: must be at most the workers ({n}, one per GPU of the cluster)")
            leaders, handles = start_teams(n, per_job, cfg, spec)
        result = BatchDriver(leaders, out, max_attempts, refreshing_gallery(store, on_event)).run(jobs, finished)
    finally:
        for h in handles:
            ray.kill(h)
        if started:
            ray.shutdown()
    write_manifest(store, result)
    problems = {s.job.id: s.outcome.metrics["evaluation_error"] for s in result.states if s.outcome and "evaluation_error" in s.outcome.metrics}
    write_gallery(store, problems)
    return result
