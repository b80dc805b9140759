"""The Ray worker: one actor per device that loads the model once, renders one job at a time through
``JobRun`` (exactly as ``miga render`` does) and, on other threads, serves its peers' reflection
candidates and answers progress queries.

The actor is threaded with five concurrency groups: ``render`` (one job at a time), ``split`` (one model
call at a time of a render split over workers, ``cluster.split``), ``peer`` (candidate requests from other
workers), ``evaluate`` (quality numbers of a finished job, on the CPU while the next job renders) and
``info`` (ready / progress). Every model forward goes through one
FIFO lock, so a peer's candidate windows interleave with the worker's own steps; evaluation never
takes it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import ray
import torch
from torch import Tensor

from ..config import ConfigError, EvaluationSettings, RenderConfig
from ..engines import build_engine, load_for
from ..evaluation.job import evaluate_job
from ..job import JobSpec, render_job
from ..models.decode import latents_for_frames
from ..render import Progress
from ..sampling import CandidateRequest, WindowRunner, run_candidate
from ..sampling.deferred import Call, materialize
from ..storage import JobRecord, open_store
from ..storage.lease import TTL_S
from .fanout import FanoutCandidates
from .jobs import BatchJob, JobOutcome, WorkerInfo
from .split import splitter

CONCURRENCY_GROUPS = {"render": 1, "split": 1, "peer": 2, "evaluate": 1, "info": 2}
LEASE_WAIT_S = 2.5 * TTL_S  # a job retried after its worker died elsewhere outwaits that worker's lease


class FairLock:
    """A FIFO (ticket) lock: waiting threads get it in arrival order, so no thread starves another."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0
        self._serving = 0

    def __enter__(self) -> FairLock:
        with self._cond:
            ticket, self._next = self._next, self._next + 1
            self._cond.wait_for(lambda: self._serving == ticket)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()


class LockedDenoiser:
    """A denoiser whose every forward holds the worker's model lock."""

    def __init__(self, inner: Any, lock: FairLock) -> None:
        self.inner, self.lock = inner, lock

    def __call__(self, latents: Tensor, timesteps: Tensor, context: Any) -> Tensor:
        with self.lock:
            return self.inner(latents, timesteps, context)


class LockedModel:
    """A loaded model seen through the lock: denoiser and prompt encoder serialised, the rest as is."""

    def __init__(self, inner: Any, lock: FairLock) -> None:
        self._inner, self._lock = inner, lock
        self.denoiser = LockedDenoiser(inner.denoiser, lock)

    def encode_prompt(self, prompts: list[str], negative: str | None = None) -> tuple[Tensor, Tensor]:
        with self._lock:
            return self._inner.encode_prompt(prompts, negative)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _runner_key(cfg: RenderConfig, prompt: str) -> tuple[str, str]:
    return cfg.fingerprint(), prompt


class RenderWorker:
    """One device, one model, one job at a time; serves peers' candidate requests meanwhile."""

    def __init__(self, cfg: RenderConfig, index: int = 0, fanout: int = 2, threads: int | None = None, team: Sequence[Any] = ()) -> None:
        threads = threads or max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
        torch.set_num_threads(threads)  # fixed, so float results do not depend on the host's core count
        self.cfg, self.index, self.fanout = cfg, index, fanout
        self.team = list(team)  # workers this one splits each of its jobs with (``miga batch --workers-per-job``)
        self.lock = FairLock()
        self.model = LockedModel(load_for(cfg), self.lock)
        self.node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        self.info = WorkerInfo(index, self.node_id, os.getpid(), str(self.model.device), threads)
        self.peers: list[Any] = []
        self._runners: dict[tuple[str, str], WindowRunner] = {}
        self._runners_lock = threading.Lock()
        self._progress: dict[str, Any] | None = None
        self.stats = {"jobs": 0, "served_requests": 0, "sent_requests": 0, "local_requests": 0, "fallbacks": 0,
                      "served_while_rendering": 0, "reflections": 0, "reflect_ms": 0, "split_calls": 0}  # fmt: skip

    # -- info group --------------------------------------------------------------------------------
    @ray.method(concurrency_group="info")
    def ready(self) -> WorkerInfo:
        """Where this worker runs (returns once the model is loaded)."""
        return self.info

    @ray.method(concurrency_group="info")
    def set_peers(self, peers: Sequence[Any]) -> None:
        """The other workers this one may send reflection candidates to."""
        self.peers = list(peers)

    @ray.method(concurrency_group="info")
    def progress(self) -> dict[str, Any] | None:
        """The running job's progress (None when idle) and this worker's counters."""
        return None if self._progress is None else dict(self._progress, stats=dict(self.stats))

    @ray.method(concurrency_group="info")
    def get_stats(self) -> dict[str, int]:
        """Jobs rendered; candidate requests served, sent and run locally; reflections and their total time."""
        return dict(self.stats)

    # -- render group ------------------------------------------------------------------------------
    @ray.method(concurrency_group="render")
    def render(self, job: BatchJob, out: str) -> JobOutcome:
        """Render (or resume, or skip if done) one job into ``out`` through ``job.render_job`` (its evaluation runs
        in the evaluate group, while this worker renders its next job)."""
        t0 = time.perf_counter()
        self._check_model(job.cfg)
        store = open_store(out)
        hook = FanoutCandidates(self._local_candidates(job.cfg, job.prompt), self._peer_call(job.cfg, job.prompt), self._peer_order(), self.stats)
        split = None
        if self.team:  # this worker and its team run the job's model calls (candidates included)
            split = splitter([ray.get_runtime_context().current_actor, *self.team], ray.put((job.cfg, job.prompt)))
        self._progress = {"job_id": job.id, "frames_done": 0, "frames_total": job.cfg.frames, "fps": 0.0, "worker": self.index, "reflections": {}}
        try:
            result = render_job(store, JobSpec(job.prompt, job.cfg), self.model, job.id, evaluate=False,
                                on_progress=self._on_progress, candidates=hook, lease_wait_s=LEASE_WAIT_S, split=split)
        finally:
            self._progress = None
        self.stats["jobs"] += 1
        record = result.record
        return JobOutcome(
            job_id=result.job_id,
            status=record.status,
            skipped=result.skipped,
            resumed_from=result.resumed_from,
            latents=0 if result.skipped else latents_for_frames(job.cfg.frames, self.model.vae_scale[0]),
            run_s=time.perf_counter() - t0,
            worker=self.index,
            node_id=self.node_id,
            timings=dict(record.timings),
            metrics=dict(record.metrics),
        )

    @ray.method(concurrency_group="split")
    def window(self, job: tuple[RenderConfig, str], call: Call, *inputs: Tensor) -> tuple[Any, ...]:
        """One model call of a render split over workers (``cluster.split``): its written latents on the CPU, then True.

        ``call.inputs`` are values or ``Arg`` places in ``inputs`` (Ray resolves those references), re-noised
        where the call says; the step is the render's own runner's, so the latents equal a one-worker render's."""
        cfg, prompt = job
        self._check_model(cfg)
        runner = self._runner(cfg, prompt)
        device, dtype = runner.noise.device, runner.noise.dtype
        xs = [materialize(x, lambda a: inputs[a.index].to(device, dtype), runner) for x in call.inputs]
        out = runner(call.phase, [x.to(device, dtype) for x in xs], call.levels, call.ids, call.kept, call.guidance, call.variant)
        self.stats["split_calls"] += 1
        return (*[x.cpu() for x in out], True)

    # -- evaluate group ----------------------------------------------------------------------------
    @ray.method(concurrency_group="evaluate")
    def evaluate(self, job_id: str, out: str, settings: EvaluationSettings) -> JobRecord:
        """Evaluate a finished job from its stored video and record it in its job.json (no model lock, no device)."""
        return evaluate_job(open_store(out, check=False), job_id, settings)

    def _on_progress(self, p: Progress) -> None:
        self._progress = p.as_dict() | {"worker": self.index, "reflections": dict(p.counters.reflections)}

    # -- peer group --------------------------------------------------------------------------------
    @ray.method(concurrency_group="peer")
    def candidates(self, cfg: RenderConfig, prompt: str, requests: Sequence[CandidateRequest]) -> list[Tensor]:
        """Grow a peer's reflection candidates here; results on the CPU, in request order."""
        self._check_model(cfg)
        runner = self._runner(cfg, prompt)
        device = self.model.device
        out = []
        for r in requests:
            r = replace(r, refs=r.refs.to(device), anchor=None if r.anchor is None else r.anchor.to(device))
            out.append(run_candidate(runner, r).cpu())
        self.stats["served_requests"] += len(requests)
        self.stats["served_while_rendering"] += len(requests) if self._progress is not None else 0
        return out

    # -- helpers -----------------------------------------------------------------------------------
    def _check_model(self, cfg: RenderConfig) -> None:
        if cfg.model != self.cfg.model:
            raise ConfigError(f"worker {self.index} holds model {self.cfg.model.name!r}, the job asks for {cfg.model.name!r}")

    def _runner(self, cfg: RenderConfig, prompt: str) -> WindowRunner:
        """The job's window runner (same prompt encoding, solver and counter-based noise), cached."""
        key = _runner_key(cfg, prompt)
        with self._runners_lock:
            if key not in self._runners:
                if len(self._runners) >= 8:
                    self._runners.pop(next(iter(self._runners)))
                engine = build_engine(self.model, cfg, prompt, latents_for_frames(cfg.frames, self.model.vae_scale[0]))
                self._runners[key] = engine.runner
            return self._runners[key]

    def _local_candidates(self, cfg: RenderConfig, prompt: str):
        def run(requests: Sequence[CandidateRequest]) -> list[Tensor]:
            runner = self._runner(cfg, prompt)
            return [run_candidate(runner, r) for r in requests]

        return run

    def _peer_call(self, cfg: RenderConfig, prompt: str):
        def call(peer: Any, requests: list[CandidateRequest]) -> ray.ObjectRef:
            return peer.candidates.remote(cfg, prompt, requests)

        return call

    def _peer_order(self) -> list[Any]:
        """Up to ``fanout`` peers, starting after this worker's index so requests spread out."""
        if not self.peers or self.fanout <= 0:
            return []
        k = self.index % len(self.peers)
        return (self.peers[k:] + self.peers[:k])[: self.fanout]


def actor_options(num_gpus: float = 0, num_cpus: float = 0.5, resources: dict[str, float] | None = None, max_restarts: int = 2) -> dict[str, Any]:
    """Ray options of a worker actor: its device claim and restart policy (threads come from ``RemoteWorker``)."""
    return {
        "num_gpus": num_gpus,
        "num_cpus": num_cpus,
        "resources": dict(resources or {}),
        "max_restarts": max_restarts,
        "max_task_retries": 0,  # the batch driver re-queues a failed job on another worker
    }


RemoteWorker = ray.remote(concurrency_groups=CONCURRENCY_GROUPS)(RenderWorker)
