"""The batch driver: hands jobs to worker actors longest first, retries a failed job on another
worker (it resumes there from its last checkpoint), has each finished job evaluated by the worker
that rendered it (while that worker renders its next job), and records every outcome in the manifest.

The driver is a loop over ``ray.wait``: Ray places the actors, restarts dead ones (``max_restarts``)
and reports a dead actor as ``RayActorError``; nothing a job needs lives in a worker's memory, so
a job re-queued after a failure continues from the object store wherever it runs next.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayError, RayTaskError

from ..config import ConfigError, RenderConfig
from ..job import JobSpec, StoredJob, needs_evaluation
from ..storage import JobProblem, ObjectStore, read_job
from ..storage.quality import EVALUATION
from .jobs import BatchJob, JobOutcome
from .prompts import PromptFileError, PromptRow

log = logging.getLogger(__name__)
Event = dict[str, Any]


@dataclass
class JobState:
    """A job's place in the batch: attempts so far, workers it failed on, how it ended."""

    job: BatchJob
    attempts: int = 0
    failed_on: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    outcome: JobOutcome | None = None
    dispatched_at: float = 0.0
    overhead_s: float | None = None

    @property
    def failed(self) -> bool:
        return self.outcome is None


@dataclass
class BatchResult:
    """Every job's final state and the batch's wall time."""

    states: list[JobState]
    wall_s: float
    workers: int

    @property
    def done(self) -> list[JobState]:
        return [s for s in self.states if s.outcome is not None and s.outcome.status == "done"]

    @property
    def failed(self) -> list[JobState]:
        return [s for s in self.states if s.failed]


def introduce(workers: Sequence[Any], only: int | None = None) -> None:
    """Tell each worker (or just worker ``only``, e.g. after a restart) who its peers are."""
    for i, w in enumerate(workers):
        if only is None or i == only:
            w.set_peers.remote([p for j, p in enumerate(workers) if j != i])


def plan_jobs(rows: Sequence[PromptRow], base: RenderConfig) -> list[BatchJob]:
    """One job per row with the row's overrides applied (and its default id); every bad row is reported."""
    jobs, problems, first_seen = [], [], {}
    for row in rows:
        try:
            cfg = row.config(base)
            prompt = cfg.job_prompt(row.prompt)
            cfg.check_prompt(prompt)
        except ConfigError as exc:
            problems.append(f"row {row.row}: " + str(exc).replace("\n", " "))
            continue
        job_id = row.id or JobSpec(prompt, cfg).default_id()
        if job_id in first_seen:
            problems.append(f"row {row.row}: duplicate id {job_id!r} (first on row {first_seen[job_id]})")
            continue
        first_seen[job_id] = row.row
        jobs.append(BatchJob(job_id, prompt, cfg, row.row))
    if problems:
        raise PromptFileError(f"{len(problems)} problem(s) in the rows, nothing rendered:\n  " + "\n  ".join(problems))
    return jobs


def already_done(store: ObjectStore, job: BatchJob) -> JobOutcome | None:
    """The job's outcome if storage says it is done with this very configuration (no worker needed)."""
    try:
        record = read_job(store, job.id)
    except JobProblem:  # the worker's JobRun reports it, as this job's failure
        return None
    if record is None or record.status != "done" or StoredJob.of(record).identity != JobSpec(job.prompt, job.cfg).identity_hash:
        return None  # another identity is for the worker's JobRun to refuse, with its message
    return JobOutcome(job.id, "done", True, None, 0, 0.0, -1, "", dict(record.timings), dict(record.metrics))


def _retryable(exc: BaseException) -> bool:
    """Worker deaths and runtime errors are retried; configuration errors are not."""
    if isinstance(exc, RayTaskError):
        return not isinstance(exc.cause, ConfigError)
    return True


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RayTaskError) and exc.cause is not None:
        return f"{type(exc.cause).__name__}: {exc.cause}"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


class BatchDriver:
    """Runs jobs on worker actors until each is done or has failed ``max_attempts`` times."""

    def __init__(
        self,
        workers: Sequence[Any],
        out: str,
        max_attempts: int = 3,
        on_event: Callable[[Event], None] | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.workers, self.out, self.max_attempts = list(workers), out, max_attempts
        self.on_event, self.poll_s = on_event or (lambda e: None), poll_s

    def run(self, jobs: Sequence[BatchJob], finished: dict[str, JobOutcome] | None = None) -> BatchResult:
        """Render ``jobs`` (those in ``finished`` are recorded as skipped); return every job's state."""
        t0 = time.perf_counter()
        finished = finished or {}
        states = [JobState(j, outcome=finished.get(j.id)) for j in jobs]
        queue = sorted((s for s in states if s.outcome is None), key=lambda s: -s.job.frames)  # stable: file order among equals
        self.idle: list[int] = []
        self.dead: set[int] = set()
        self.running: dict[ray.ObjectRef, tuple[int, JobState]] = {}
        self.probing: dict[ray.ObjectRef, int] = {w.ready.remote(): i for i, w in enumerate(self.workers)} if queue else {}
        self.restarting: dict[int, float] = {}  # worker -> when to ask again whether it is back
        self.asking: dict[ray.ObjectRef, int] = {}  # progress queries in flight
        self.evaluating: dict[ray.ObjectRef, tuple[int, JobState]] = {}
        last_poll = time.monotonic()
        while queue or self.running or self.evaluating:
            self._reprobe()
            self._dispatch(queue)
            if queue and not self.running and not self.probing and not self.restarting:
                for s in queue:
                    s.errors.append("no live worker left")
                break
            if time.monotonic() - last_poll >= self.poll_s:
                self._ask_progress()
                last_poll = time.monotonic()
            pending = [*self.running, *self.probing, *self.asking, *self.evaluating]
            if not pending:  # only restarting workers: wait for the next time to ask them
                time.sleep(self.poll_s)
                continue
            ready, _ = ray.wait(pending, num_returns=1, timeout=self.poll_s)
            for ref in ready:
                if ref in self.probing:
                    self._probed(ref)
                elif ref in self.asking:
                    self._answered(ref)
                elif ref in self.evaluating:
                    self._evaluated(ref)
                else:
                    self._finished(ref, queue)
        return BatchResult(states, time.perf_counter() - t0, len(self.workers))

    def _live(self) -> set[int]:
        return set(self.idle) | {w for w, _ in self.running.values()}

    def _dispatch(self, queue: list[JobState]) -> None:
        """Give each idle worker the longest queued job that has not failed on it (unless it is the last one alive)."""
        for w in list(self.idle):
            live = self._live()
            pick = next((s for s in queue if w not in s.failed_on or not (live - s.failed_on)), None)
            if pick is None:
                continue
            queue.remove(pick)
            self.idle.remove(w)
            pick.attempts += 1
            pick.dispatched_at = time.perf_counter()
            self.running[self.workers[w].render.remote(pick.job, self.out)] = (w, pick)
            self.on_event({"event": "start", "job_id": pick.job.id, "worker": w, "attempt": pick.attempts})

    def _probed(self, ref: ray.ObjectRef) -> None:
        w = self.probing.pop(ref)
        try:
            info = ray.get(ref)
        except ActorUnavailableError:  # Ray is restarting it: ask again shortly
            self.restarting[w] = time.monotonic() + self.poll_s
            return
        except RayError as exc:  # dead for good (restarts used up, or killed without restart)
            self.dead.add(w)
            self.on_event({"event": "worker_lost", "worker": w, "error": _describe(exc)})
            return
        introduce(self.workers, only=w)  # a restarted actor starts with no peers
        self.idle.append(w)
        self.on_event({"event": "worker_ready", "worker": w, "node_id": info.node_id, "device": info.device})

    def _reprobe(self) -> None:
        now = time.monotonic()
        for w, at in list(self.restarting.items()):
            if at <= now:
                del self.restarting[w]
                self.probing[self.workers[w].ready.remote()] = w

    def _finished(self, ref: ray.ObjectRef, queue: list[JobState]) -> None:
        w, state = self.running.pop(ref)
        try:
            outcome: JobOutcome = ray.get(ref)
        except RayError as exc:
            self._failed(w, state, exc, queue)
            return
        state.outcome, state.overhead_s = outcome, time.perf_counter() - state.dispatched_at - outcome.run_s
        self.idle.append(w)
        self.on_event({"event": "done", "job_id": state.job.id, "worker": w, "skipped": outcome.skipped, "resumed_from": outcome.resumed_from})
        if needs_evaluation(outcome.status, outcome.metrics, state.job.cfg):
            self.evaluating[self.workers[w].evaluate.remote(state.job.id, self.out, state.job.cfg.evaluation)] = (w, state)

    def _evaluated(self, ref: ray.ObjectRef) -> None:
        """A job's evaluation came back: its numbers join the outcome; a failure is recorded, not retried."""
        w, state = self.evaluating.pop(ref)
        outcome = state.outcome
        assert outcome is not None
        try:
            record = ray.get(ref)
        except RayError as exc:
            outcome.metrics["evaluation_error"] = _describe(exc)
            self.on_event({"event": "evaluation_failed", "job_id": state.job.id, "worker": w, "error": outcome.metrics["evaluation_error"]})
            return
        outcome.metrics[EVALUATION] = record.metrics[EVALUATION]
        outcome.timings["evaluate"] = record.timings["evaluate"]
        self.on_event({"event": "evaluated", "job_id": state.job.id, "worker": w, "seconds": record.timings["evaluate"]})

    def _failed(self, w: int, state: JobState, exc: BaseException, queue: list[JobState]) -> None:
        state.errors.append(_describe(exc))
        state.failed_on.add(w)
        if isinstance(exc, RayTaskError):  # the job raised; the worker itself is fine
            self.idle.append(w)
        else:  # the worker died (Ray restarts it if it can) or is unreachable: use it again once it answers
            self.probing[self.workers[w].ready.remote()] = w
        retry = _retryable(exc) and state.attempts < self.max_attempts
        self.on_event({"event": "retry" if retry else "failed", "job_id": state.job.id, "worker": w, "error": state.errors[-1]})
        if retry:
            queue.append(state)
            queue.sort(key=lambda s: -s.job.frames)

    def _ask_progress(self) -> None:
        """Ask each busy worker that has no query outstanding for its progress (answers arrive via ray.wait)."""
        waiting = set(self.asking.values())
        for w, _ in self.running.values():
            if w not in waiting:
                self.asking[self.workers[w].progress.remote()] = w

    def _answered(self, ref: ray.ObjectRef) -> None:
        self.asking.pop(ref)
        try:
            progress = ray.get(ref)
        except RayError:
            return  # the job's own call reports the failure
        if progress is not None and any(s.job.id == progress["job_id"] for _, s in self.running.values()):
            self.on_event({"event": "progress", **progress})
