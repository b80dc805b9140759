"""``miga batch`` as one function: validate the prompt set, skip finished jobs, start workers on
Ray, drive the batch, write the manifest."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import ray

from ..config import ConfigError, RenderConfig
from ..storage import StoreError, open_store
from .batch import BatchDriver, BatchResult, Event, already_done, plan_jobs
from .prompts import read_prompts
from .report import write_manifest

log = logging.getLogger(__name__)


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
) -> BatchResult:
    """Render every row of ``prompts`` into ``out`` on Ray workers; write ``<out>/manifest.parquet``.

    Bad rows raise ``PromptFileError`` and an unusable ``out`` raises ``ConfigError``, both before
    any worker starts. Jobs already done with the same configuration are not sent to a worker.
    """
    jobs = plan_jobs(read_prompts(prompts), cfg)
    try:
        store = open_store(out)
    except (StoreError, ValueError, OSError) as exc:
        raise ConfigError(f"--out {out}: {exc}") from None
    finished = {j.id: o for j in jobs if (o := already_done(store, j)) is not None}
    handles: list = []
    started = False
    try:
        if len(finished) < len(jobs):
            from .runtime import WorkerSpec, connect, start_workers  # loads torch and the model code

            started = connect(address)
            if not out.startswith("s3://") and len(ray.nodes()) > 1:
                log.warning("--out %s is a local path on a %d-node cluster: every node must see it (use s3://)", out, len(ray.nodes()))
            spec = WorkerSpec.for_cluster(resource, cpus, fanout=fanout)
            n = workers or max(1, int(ray.cluster_resources().get("GPU", 0)))
            handles = start_workers(n, cfg, spec)
        result = BatchDriver(handles, out, max_attempts, on_event).run(jobs, finished)
    finally:
        for h in handles:
            ray.kill(h)
        if started:
            ray.shutdown()
    write_manifest(store, result)
    return result
