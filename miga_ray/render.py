"""One job on one device: model + sampler + streaming decoder + video writer + checkpoints.

Everything a job needs to continue lives in the object store, so running the same job again
resumes from its last good checkpoint and produces the same video as an uninterrupted run.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import torch
from torch import Tensor

from .config import ConfigError, RenderConfig
from .engines import build_engine
from .models.decode import frames_of_latents, latents_for_frames
from .models.registry import LoadedModel
from .sampling import CandidateRunner, Counters, StreamingEngine
from .sampling.plan import planned_calls, scheduled_calls
from .storage import (
    CheckpointStore,
    JobLayout,
    JobRecord,
    LatentWriter,
    ObjectStore,
    SegmentWriter,
    Uploader,
    read_job,
    write_job,
    write_png_frames,
)
from .storage.sheet import ContactSheet

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """What a progress bar shows: sampler work (scheduled model calls) and frames, in all and in this run."""

    job_id: str
    frames_done: int
    frames_total: int
    seconds: float  # this run's sampling time so far
    counters: Counters
    work_done: int = 0  # scheduled model calls made, by earlier runs of a resumed job too
    work_total: int = 0  # scheduled model calls of the whole render (sampling.plan), 0 when not planned
    frames_before: int = 0  # frames finished by earlier runs (a resumed job)
    work_before: int = 0  # scheduled model calls made by earlier runs

    @property
    def fps(self) -> float:
        """Frames per second of this run's own work (resumed frames do not count)."""
        return (self.frames_done - self.frames_before) / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at this run's rate of work, or None before its first model call."""
        done = self.work_done - self.work_before
        if done <= 0 or self.seconds <= 0 or not self.work_total:
            return None
        return (self.work_total - self.work_done) * self.seconds / done

    def as_dict(self) -> dict[str, Any]:
        """The numbers a progress bar shows, JSON-able (what a batch worker reports)."""
        keys = ("job_id", "frames_done", "frames_total", "work_done", "work_total", "fps", "eta")
        return {k: getattr(self, k) for k in keys}


@dataclass
class RenderResult:
    job_id: str
    record: JobRecord
    resumed_from: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    skipped: bool = False  # already done with this configuration: nothing rendered


def job_id_for(prompt: str, seed: int) -> str:
    """A stable, storage-safe job id: the same prompt and seed resume the same job."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48] or "job"
    return f"{slug}-s{seed}"


def usable_cpus() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_threads(side_by_side: int) -> tuple[int, str]:
    """CPU threads for each of ``side_by_side`` renders, and why: OMP_NUM_THREADS when set, else the
    CPUs this process may use that other work leaves idle, shared out (extra threads on a busy machine spin)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cpus = usable_cpus()
    load = os.getloadavg()[0]
    idle = max(1, round(cpus - load))
    return max(1, idle // side_by_side), f"{cpus} CPUs, load {load:.1f}; set OMP_NUM_THREADS to choose"


class _Reporter:
    """Reports a run's Progress: after every clean latent, and between them at most every ``tick_s`` seconds."""

    def __init__(self, job_id: str, frames_total: int, on_progress: Callable[[Progress], None], tick_s: float | None) -> None:
        self.job_id, self.frames_total, self.on_progress, self.tick_s = job_id, frames_total, on_progress, tick_s
        self.engine: StreamingEngine | None = None

    def start(self, engine: StreamingEngine, frames_before: int) -> None:
        """Sampling begins (after any resume): plan the work and start this run's clock."""
        self.engine, self.frames_done, self.frames_before = engine, frames_before, frames_before
        self.work_total, self.work_before = planned_calls(engine), scheduled_calls(engine.counters)
        self.start_time = self.last = time.perf_counter()
        self.report()

    def frames(self, done: int) -> None:
        self.frames_done = done
        self.report()

    def tick(self) -> None:
        if self.engine is not None and self.tick_s is not None and time.perf_counter() - self.last >= self.tick_s:
            self.report()

    def report(self) -> None:
        assert self.engine is not None
        self.last = now = time.perf_counter()
        counters = self.engine.counters
        self.on_progress(Progress(self.job_id, self.frames_done, self.frames_total, now - self.start_time, counters,
                                  scheduled_calls(counters), self.work_total, self.frames_before, self.work_before))


class JobRun:
    """One render of one prompt into ``<store>/<job_id>/``, resumable from its checkpoints."""

    def __init__(
        self,
        store: ObjectStore,
        prompt: str,
        cfg: RenderConfig,
        model: LoadedModel,
        job_id: str | None = None,
        restart: bool = False,
        trace: TextIO | None = None,
        candidates: CandidateRunner | None = None,
    ) -> None:
        self.store, self.prompt, self.cfg, self.model = store, prompt, cfg, model
        self.job = JobLayout(job_id or job_id_for(prompt, cfg.seed))
        self.temporal = model.vae_scale[0]
        self.num_latents = latents_for_frames(cfg.frames, self.temporal)
        self.restart, self.trace, self.candidates = restart, trace, candidates

    def run(self, on_progress: Callable[[Progress], None] | None = None, tick_s: float | None = None) -> RenderResult:
        """Render, resume, or (if this job is already done with this configuration) return its record.

        ``on_progress`` hears after every clean latent and, with ``tick_s``, between them at most
        every ``tick_s`` seconds (a MIGA queue fills for minutes before its first clean latent).
        """
        t0 = time.perf_counter()
        fix_mmap_threshold()
        finished = None if self.restart else self._finished()
        if finished is not None:
            return RenderResult(self.job.job_id, finished, skipped=True)
        reporter = _Reporter(self.job.job_id, self.cfg.frames, on_progress, tick_s) if on_progress else None
        tick = reporter.tick if reporter and tick_s is not None else None
        engine = build_engine(self.model, self.cfg, self.prompt, self.num_latents, self.trace, self.candidates, tick)
        if self.restart:
            self._wipe()
        uploader = Uploader(self.store)
        record = JobRecord(self.job.job_id, frames_total=self.cfg.frames, config=self._config_record())
        try:
            result = self._run(engine, uploader, record, t0, reporter)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or SIGTERM as the command line raises it
                record.status = "interrupted"
                record.error = f"stopped by {str(exc) or 'SIGINT'}; run the same command again to resume from the last checkpoint"
            else:
                record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
            try:
                write_job(uploader, record)
                uploader.close()
            except Exception:  # the original failure is the one to report
                log.exception("could not record the failure of job %s", self.job.job_id)
            raise
        uploader.close()
        return result

    def _finished(self) -> JobRecord | None:
        previous = read_job(self.store, self.job.job_id)
        if previous is None or previous.status != "done":
            return None
        if previous.config.get("fingerprint") != self.cfg.fingerprint():
            raise ConfigError(f"job {self.job.job_id} was rendered with another configuration; pass --restart to render it again")
        return previous

    def _config_record(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "render": self.cfg.model_dump(), "fingerprint": self.cfg.fingerprint()}

    def _wipe(self) -> None:
        for key in self.store.list(self.job.job_id + "/"):
            self.store.delete(key)

    def _run(self, engine: StreamingEngine, uploader: Uploader, record: JobRecord, t0: float, reporter: _Reporter | None) -> RenderResult:
        cfg, s = self.cfg, self.model.vae_scale[1]
        shape = engine.shape
        height, width = shape[2] * s, shape[3] * s
        ckpts = CheckpointStore(self.store, self.job.state, sink=uploader)
        latents = LatentWriter(self.store, self.job, sink=uploader)
        writer = SegmentWriter(self.store, self.job.job_id, cfg.video.fps, width, height, crf=cfg.video.crf, sink=uploader)
        decoder = self.model.decoder()
        self.sheet = ContactSheet(self.job.job_id, cfg.frames)
        resumed = self._resume(engine, ckpts, latents, decoder, writer)
        timings = {"setup": time.perf_counter() - t0}
        write_job(uploader, record)
        last_ckpt_time, last_ckpt_at = time.perf_counter(), engine.emitted
        start = time.perf_counter()
        if reporter:
            reporter.start(engine, min(cfg.frames, frames_of_latents(engine.emitted, self.temporal)))
        for index, latent in engine:
            latents.write(index, latent[0])
            self._write_frames(writer, decoder, index, latent)
            done = min(cfg.frames, frames_of_latents(index + 1, self.temporal))
            now = time.perf_counter()
            ck = cfg.checkpoint
            if not engine.done and (engine.emitted - last_ckpt_at >= ck.every_latents or now - last_ckpt_time >= ck.every_seconds):
                self._checkpoint(ckpts, engine, uploader, record, done)
                last_ckpt_time, last_ckpt_at = now, engine.emitted
            if reporter:
                reporter.frames(done)
        writer.finish()
        uploader.flush()
        record.metrics["contact_sheet"] = self.sheet.compose(self.store, uploader)
        timings["sampling"] = time.perf_counter() - start
        record.status, record.frames_done = "done", cfg.frames
        record.timings = timings
        record.metrics |= {"model_calls": engine.counters.to_json(), "resumed_from_latent": resumed}
        write_job(uploader, record)
        return RenderResult(self.job.job_id, record, resumed, timings)

    def _write_frames(self, writer: SegmentWriter, decoder, index: int, latent: Tensor) -> None:
        frames = decoder.push(latent.unsqueeze(2))[0]
        first = frames_of_latents(index, self.temporal)
        keep = max(0, min(frames.shape[0], self.cfg.frames - first))
        if keep:
            pixels = frames[:keep].cpu().numpy()
            writer.write(pixels, start=first)
            self.sheet.offer(writer.sink, pixels, first)
            if self.cfg.video.png_frames:
                write_png_frames(writer.sink, self.job.job_id, pixels, first)

    def _checkpoint(self, ckpts: CheckpointStore, engine: StreamingEngine, uploader: Uploader, record: JobRecord, done: int) -> None:
        tensors, meta = engine.state_dict()
        ckpts.save(engine.emitted, tensors, {"engine": meta, "fingerprint": self.cfg.fingerprint(), "frames_done": done})
        record.frames_done = done
        write_job(uploader, record)

    def _resume(self, engine, ckpts: CheckpointStore, latents: LatentWriter, decoder, writer: SegmentWriter) -> int | None:
        """Restore the newest good checkpoint, then re-decode the stored latents the video still lacks."""
        latest = ckpts.load_latest()
        if latest is None:
            return None
        step, tensors, meta = latest
        if meta.get("fingerprint") != self.cfg.fingerprint():
            raise ConfigError(
                f"job {self.job.job_id}: the configuration differs from the one its checkpoint was made with "
                f"(fingerprint {meta.get('fingerprint')} vs {self.cfg.fingerprint()}); pass --restart to start over"
            )
        engine.load_state_dict(tensors, meta["engine"])
        first = min(_latent_of_frame(writer.frames_written, self.temporal), engine.emitted)
        context = getattr(decoder, "context_latents", first)
        before = [latents.read(i) for i in range(max(0, first - context), first)]
        if before:
            decoder.resume(torch.stack(before, dim=1).unsqueeze(0).to(self.model.device, self.model.dtype), first)
        for i in range(first, engine.emitted):
            self._write_frames(writer, decoder, i, latents.read(i).unsqueeze(0).to(self.model.device, self.model.dtype))
        log.info("job %s resumed from checkpoint at latent %d", self.job.job_id, step)
        return step


def _latent_of_frame(frame: int, temporal: int) -> int:
    """Index of the latent whose decode produces pixel frame ``frame``."""
    return 0 if frame == 0 else (frame - 1) // temporal + 1


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def fix_mmap_threshold(size: int = 32 << 20) -> None:
    """Pin glibc's mmap threshold so peak RSS does not creep with render length (docs/PERF.md, peak memory).

    glibc raises the threshold to the size of every freed mapped buffer, after which large temporaries
    come from a fragmenting heap whose high-water mark grows with the number of windows. A user's own
    ``MALLOC_MMAP_THRESHOLD_`` wins; elsewhere than glibc this does nothing."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, size)
    except (OSError, AttributeError):
        pass
