"""One job on one device: model + sampler + streaming decoder + video writer + checkpoints.

Everything a job needs to continue lives in the object store, so running the same job again
resumes from its last good checkpoint and produces the same video as an uninterrupted run.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import torch
from torch import Tensor

from .config import ConfigError, RenderConfig
from .continuation import Extension, InitVideo, Start, check_length
from .engines import build_engine, seed_depth, seed_of
from .job import JobSpec, StoredJob
from .models.decode import frames_of_latents, latent_of_frame, latents_for_frames
from .models.registry import LoadedModel
from .sampling import CandidateRunner, Counters, Seed, StreamingEngine
from .sampling.deferred import DeferredEngine, sequential
from .sampling.plan import planned_calls, scheduled_calls
from .storage import (
    CheckpointStore,
    DamagedError,
    JobLayout,
    JobRecord,
    LatentWriter,
    ObjectStore,
    SegmentWriter,
    Uploader,
    check_job_id,
    read_job,
    remove_stale_mp4_dirs,
    video_problem,
    write_job,
    write_png_frames,
)
from .storage.layout import latent_name, sums_text
from .storage.lease import TTL_S, Lease, LeaseHeld, LeaseLost
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
    not_evaluated: str | None = None  # why a due evaluation was not recorded (another process took the job over)


def checked_job_id(job_id: str) -> str:
    """``job_id`` if it follows the job-id rule, else a ConfigError naming the rule (exit 2)."""
    try:
        return check_job_id(job_id)
    except ValueError as exc:
        raise ConfigError(f"--job-id: {exc}") from None


def check_identity(store: ObjectStore, job_id: str, spec: JobSpec) -> JobRecord | None:
    """The job's stored record (None if new); ConfigError naming the differences if it holds another render
    (an extension accepts the finished job it extends)."""
    previous = read_job(store, job_id)
    if previous is None or spec.accepts(stored := StoredJob.of(previous)):
        return previous
    differences = spec.differences(stored)
    raise ConfigError(
        f"job {job_id} holds another render ({'; '.join(differences[:6])}); "
        "pass --restart to replace it, or another --job-id"
    )


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
        self.engine: StreamingEngine | DeferredEngine | None = None

    def start(self, engine: StreamingEngine | DeferredEngine, frames_before: int) -> None:
        """Sampling begins (after any resume): plan the work and start this run's clock."""
        self.engine, self.frames_done, self.frames_before = engine, frames_before, frames_before
        self.work_total, self.work_before = planned_calls(sequential(engine)), scheduled_calls(engine.counters)
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
        ahead = self.engine.executor.unfinished if isinstance(self.engine, DeferredEngine) else 0  # made, not yet run
        done = max(self.work_before, scheduled_calls(counters) - ahead)
        self.on_progress(Progress(self.job_id, self.frames_done, self.frames_total, now - self.start_time, counters,
                                  done, self.work_total, self.frames_before, self.work_before))


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
        lease_ttl_s: float = TTL_S,
        lease_wait_s: float = 0.0,
        start: Start | None = None,
        split: Callable[[StreamingEngine], DeferredEngine] | None = None,
    ) -> None:
        self.store, self.prompt, self.cfg, self.model, self.start = store, prompt, cfg, model, start
        self.spec = JobSpec(prompt, cfg, start)
        self.job = JobLayout(checked_job_id(job_id) if job_id else self.spec.default_id())
        self.identity = self.spec.identity_hash
        check_length(start, cfg.frames)
        self.temporal = model.vae_scale[0]
        self.num_latents = latents_for_frames(cfg.frames, self.temporal)
        self.restart, self.trace, self.candidates = restart, trace, candidates
        self.lease_ttl_s, self.lease_wait_s = lease_ttl_s, lease_wait_s  # wait: how long to wait for a live holder
        self.split = split  # runs the engine's model calls elsewhere (``cluster.split``); the video is the same

    def run(self, on_progress: Callable[[Progress], None] | None = None, tick_s: float | None = None) -> RenderResult:
        """Render, resume, or (if this job is already done with this configuration) return its record.

        ``on_progress`` hears after every clean latent and, with ``tick_s``, between them at most
        every ``tick_s`` seconds (a MIGA queue fills for minutes before its first clean latent).
        Everything happens under the job's lease, every write fenced by it (``Lease.fenced``): a holder still
        live after ``lease_wait_s`` makes this a ConfigError (exit 2), a lease lost on the way LeaseLost."""
        t0 = time.perf_counter()
        fix_mmap_threshold()
        self._seed_latents = self._seed()  # bad input fails before anything is written
        self._lease = Lease(self.store, self.job.job_id, self.lease_ttl_s)
        give_up = time.monotonic() + self.lease_wait_s
        while True:
            try:
                self._lease.acquire()
                break
            except LeaseHeld as exc:
                if time.monotonic() >= give_up:
                    raise ConfigError(str(exc)) from None
                time.sleep(min(5.0, self.lease_ttl_s / 4))
        store, self.store = self.store, self._lease.fenced()  # every write of the job checks the lease first
        try:
            return self._run_leased(t0, on_progress, tick_s)
        finally:
            self.store = store
            self._lease.release()

    def _run_leased(self, t0: float, on_progress: Callable[[Progress], None] | None, tick_s: float | None) -> RenderResult:
        """``run`` once the lease is held."""
        self._clean_temp()  # also when the job turns out to be done: a write killed after it (the evaluation's) leaves temp files
        previous = None if self.restart else check_identity(self.store, self.job.job_id, self.spec)
        extending = isinstance(self.start, Extension) and previous is not None and StoredJob.of(previous).identity == self.start.extends
        if extending:  # a finished job's first run of this extension: its checkpoints belong to the job as it was
            assert isinstance(self.start, Extension)
            if (damage := self._damage_of_done_job(self.start.count(self.temporal))) is not None:  # before any write
                raise DamagedError(f"job {self.job.job_id}: {damage}; not extended, the job is left as it was")
            self._drop_checkpoints()
        elif previous is not None and previous.status == "done":
            damage = self._damage_of_done_job(self.num_latents)
            if damage is None:
                return RenderResult(self.job.job_id, previous, skipped=True)
            log.warning("job %s is recorded done but %s; rendering it again from its last checkpoint", self.job.job_id, damage)
        reporter = _Reporter(self.job.job_id, self.cfg.frames, on_progress, tick_s) if on_progress else None
        tick = reporter.tick if reporter and tick_s is not None else None
        engine = build_engine(self.model, self.cfg, self.prompt, self.num_latents, self.trace, self.candidates, tick, self._seed_latents)
        if self.split is not None:
            engine = self.split(engine)
        if self.restart:
            self._wipe()
        uploader = Uploader(self.store)
        record = JobRecord(self.job.job_id, frames_total=self.cfg.frames, config=self.spec.config_section())
        record.frames_done = previous.frames_done if previous is not None else 0
        self._writer: SegmentWriter | None = None
        try:
            result = self._run(engine, uploader, record, t0, reporter)
        except (ConfigError, LeaseLost):  # refused, or another process owns the job now: not this run's to mark
            uploader.close()
            raise
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or SIGTERM as the command line raises it
                record.status = "interrupted"
                record.error = f"stopped by {str(exc) or 'SIGINT'}; run the same command again to resume from the last checkpoint"
            else:
                record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
            if self._writer is not None:  # the truth on disk: frames in the stored segments
                record.frames_done = self._writer.frames_written
            try:
                write_job(uploader, record)
                uploader.close()
            except Exception:  # the original failure is the one to report
                log.exception("could not record the failure of job %s", self.job.job_id)
            raise
        uploader.close()
        return result

    def _seed(self) -> Seed | None:
        """The clean latents the video begins with (ConfigError when an init video is not shorter than the render)."""
        if self.start is None:
            return None
        if isinstance(self.start, InitVideo):
            height = self.cfg.video.height or self.model.default_resolution[0]
            width = self.cfg.video.width or self.model.default_resolution[1]
            self._head = self.start.frames(self.model, height, width)  # written as they are, not through the VAE
            self._start_latents = self.start.latents(self.model, self._head, self.cfg.frames)
            return seed_of(self.model, self.cfg, self._start_latents)
        latents = LatentWriter(self.store, self.job)
        latents.digests = self._start_digests = self.start.digests(latents, self.temporal)
        like = torch.empty((), device=self.model.device, dtype=self.model.dtype)
        try:
            held = self.start.latents(latents, seed_depth(self.model, self.cfg), self.temporal, like)
        except DamagedError as exc:
            raise DamagedError(f"job {self.job.job_id}: {exc}; not extended, the job is left as it was") from None
        return Seed(held, self.start.count(self.temporal))

    def _store_start(self, latents: LatentWriter, writer: SegmentWriter, decoder) -> None:
        """A continuation starting afresh: an init video's latents become the job's first latents and frames;
        an extension's are stored, and the frames its last latent decodes past the job's end are added."""
        if isinstance(self.start, InitVideo):
            for i, latent in enumerate(self._start_latents):
                latents.write(i, latent[0])
                self._write_frames(writer, decoder, i, latent)
        else:
            latents.digests = dict(self._start_digests)
            self._redecode(writer, latents, decoder, writer.frames_written, len(latents.digests))

    def _drop_checkpoints(self) -> None:
        for key in self.store.list(self.job.state + "/"):
            self.store.delete(key)

    def _wipe(self) -> None:
        for key in self.store.list(self.job.job_id + "/"):
            if not key.startswith(self.job.lease + "/"):
                self.store.delete(key)

    def _clean_temp(self) -> None:
        """Remove what killed runs left behind: temp objects in the job and MP4 temp directories."""
        removed = self.store.remove_temp(self.job.job_id)
        dirs = remove_stale_mp4_dirs()
        if removed or dirs:
            log.info("job %s: removed %d temp objects and %d MP4 temp directories of killed runs", self.job.job_id, removed, len(dirs))

    def _run(self, engine: StreamingEngine | DeferredEngine, uploader: Uploader, record: JobRecord, t0: float, reporter: _Reporter | None) -> RenderResult:
        cfg, s = self.cfg, self.model.vae_scale[1]
        shape = engine.shape
        height, width = shape[2] * s, shape[3] * s
        ckpts = CheckpointStore(self.store, self.job.state, sink=uploader)
        latents = self._latents = LatentWriter(self.store, self.job, sink=uploader)
        writer = SegmentWriter(self.store, self.job.job_id, cfg.video.fps, width, height, crf=cfg.video.crf, sink=uploader)
        if writer.finished and writer.frames_written < cfg.frames:  # a finished job being extended
            writer.extend()
        elif writer.finished:  # killed after the video was finished, before the job was recorded done
            writer.reopen()
        self._writer = writer
        decoder = self.model.decoder()
        self.sheet = ContactSheet(self.job.job_id, cfg.frames)
        resumed = self._resume(engine, ckpts, latents, decoder, writer)
        timings = {"setup": time.perf_counter() - t0}
        write_job(uploader, record)
        last_ckpt_time, last_ckpt_at, last_ckpt_calls = time.perf_counter(), engine.emitted, engine.counters.total_calls
        start = time.perf_counter()
        if reporter:
            reporter.start(engine, min(cfg.frames, frames_of_latents(engine.emitted, self.temporal)))
        ck = cfg.checkpoint
        while not engine.done:
            item = engine.step()  # a clean latent, or None after a unit of work (the fill emits none for long)
            self._lease.check()
            if item is not None:
                index, latent = item
                latents.write(index, latent[0])
                self._write_frames(writer, decoder, index, latent)
            now = time.perf_counter()
            due = engine.emitted - last_ckpt_at >= ck.every_latents or now - last_ckpt_time >= ck.every_seconds
            if due and not engine.done and engine.counters.total_calls != last_ckpt_calls:
                saved = self._checkpoint(ckpts, engine, uploader, record)
                if saved is not None:
                    last_ckpt_time, (last_ckpt_at, last_ckpt_calls) = now, saved
            if reporter:
                if item is not None:
                    reporter.frames(min(cfg.frames, frames_of_latents(engine.emitted, self.temporal)))
                else:
                    reporter.tick()
        writer.finish()
        uploader.flush()
        timings["sampling"] = time.perf_counter() - start
        verify_start = time.perf_counter()
        record.metrics["repaired_from_segment"] = self._verify(writer, latents, uploader)
        timings["verify"] = time.perf_counter() - verify_start
        record.metrics["contact_sheet"] = self.sheet.compose(self.store, uploader)
        uploader.submit(self.job.latent_sums, sums_text({latent_name(i): latents.digests[i] for i in range(self.num_latents)}))
        uploader.submit(self.job.video_sums, sums_text(writer.sums()))
        self._lease.check()
        record.status, record.frames_done = "done", cfg.frames
        record.timings = timings
        record.metrics |= {"model_calls": engine.counters.to_json(), "resumed_from_latent": resumed}
        _record_split(engine, record)
        write_job(uploader, record)
        return RenderResult(self.job.job_id, record, resumed, timings)

    def _write_frames(self, writer: SegmentWriter, decoder, index: int, latent: Tensor) -> None:
        """Decode latent ``index`` into the video; an init video's own frames stand for its latents' decode."""
        frames = decoder.push(latent.unsqueeze(2))[0]  # always: the decoder's context for the frames that follow
        first = frames_of_latents(index, self.temporal)
        keep = max(0, min(frames.shape[0], self.cfg.frames - first))
        if keep:
            head = self._head[first : first + keep] if isinstance(self.start, InitVideo) else ()
            pixels = head if len(head) == keep else frames[:keep].cpu().numpy()
            writer.write(pixels, start=first)
            self.sheet.offer(writer.sink, pixels, first)
            if self.cfg.video.png_frames:
                write_png_frames(writer.sink, self.job.job_id, pixels, first)

    def _damage_of_done_job(self, count: int) -> str | None:
        """What is wrong with a job recorded done with ``count`` latents (a latent, a segment, the playlist or the
        MP4 not the bytes written, by their recorded sha256), or None if it is intact."""
        latents = LatentWriter(self.store, self.job)
        if (problem := latents.load_sums(count)) is not None:
            return problem
        if (problem := next((p for i in range(count) if (p := latents.problem(i))), None)) is not None:
            return problem
        return video_problem(self.store, self.job)

    def _verify(self, writer: SegmentWriter, latents: LatentWriter, uploader: Uploader) -> int | None:
        """Check every stored piece the video depends on before the job may be called done.

        Latents: present and equal (sha256) to what was written, else DamagedError naming them (no
        stored checkpoint covers an earlier latent). Segments: each equal (sha256) to what was written, or, from
        an earlier run of a resumed job, decoding to its listed frame count; from the first damaged one the video
        is decoded again from the stored latents. The MP4: the bytes written and as many frames as the job's,
        else remuxed once. Returns the segment repaired from, if any.
        """
        problems = [p for i in range(self.num_latents) if (p := latents.problem(i))]
        if problems:
            raise DamagedError(f"job {self.job.job_id}: {len(problems)} damaged latent(s): {'; '.join(problems[:5])}; run again with --restart")
        damaged = writer.first_damaged_segment()
        if damaged is not None:
            log.warning("job %s: segment %d is damaged; decoding the video again from there", self.job.job_id, damaged)
            writer.rewind(damaged)
            self._redecode(writer, latents, self.model.decoder(), writer.frames_written, self.num_latents)
            writer.finish()
            uploader.flush()
            if (again := writer.first_damaged_segment()) is not None:
                raise DamagedError(f"job {self.job.job_id}: segment {again} is still damaged after decoding it again")
        if (problem := writer.mp4_problem(self.cfg.frames)) is not None:
            log.warning("job %s: %s; writing it again", self.job.job_id, problem)
            writer.reopen()
            writer.finish()
            uploader.flush()
            if (problem := writer.mp4_problem(self.cfg.frames)) is not None:
                raise DamagedError(f"job {self.job.job_id}: {problem}")
        return damaged

    def _redecode(self, writer: SegmentWriter, latents: LatentWriter, decoder, frame: int, end: int) -> None:
        """Decode stored latents ``[latent of frame, end)`` into the video, after rebuilding the decoder's context."""
        first = min(latent_of_frame(frame, self.temporal), end)
        context = getattr(decoder, "context_latents", first)
        before = [latents.read(i) for i in range(max(0, first - context), first)]
        if before:
            decoder.resume(torch.stack(before, dim=1).unsqueeze(0).to(self.model.device, self.model.dtype), first)
        for i in range(first, end):
            self._write_frames(writer, decoder, i, latents.read(i).unsqueeze(0).to(self.model.device, self.model.dtype))

    def _checkpoint(self, ckpts: CheckpointStore, engine: StreamingEngine | DeferredEngine, uploader: Uploader,
                    record: JobRecord) -> tuple[int, int] | None:  # fmt: skip
        """Save the engine state under its model-call count (it grows during the fill too, when no latent comes out);
        return the saved state's (latents emitted, model calls). A deferred engine's state is the one of the step where
        it was first asked, saved once its latents exist while its calls go on: None until then."""
        if isinstance(engine, DeferredEngine):
            if (state := engine.checkpoint()) is None:
                return None
            _record_split(engine, record)
        else:
            state = (*engine.state_dict(), engine.emitted, engine.counters.total_calls)
        tensors, meta, emitted, calls = state
        digests = [self._latents.digests[i] for i in range(emitted)]
        done = min(self.cfg.frames, frames_of_latents(emitted, self.temporal))
        ckpts.save(calls, tensors, {"engine": meta, "identity": self.identity, "frames_done": done, "latents_sha256": digests})
        record.frames_done = done
        write_job(uploader, record)
        return emitted, calls

    def _resume(self, engine, ckpts: CheckpointStore, latents: LatentWriter, decoder, writer: SegmentWriter) -> int | None:
        """Restore the newest good checkpoint, then re-decode the stored latents the video still lacks; return the latent it resumes at."""
        latest = ckpts.load_latest()
        if latest is None:
            if self.start is not None:  # the video begins with the start's latents
                self._store_start(latents, writer, decoder)
            return None
        step, tensors, meta = latest
        if meta.get("identity") != self.identity:
            raise ConfigError(
                f"job {self.job.job_id}: its checkpoint was made for another prompt or configuration "
                f"(identity {str(meta.get('identity'))[:16]} vs {self.identity[:16]}); pass --restart to start over"
            )
        engine.load_state_dict(tensors, meta["engine"])
        latents.digests = dict(enumerate(meta.get("latents_sha256", [])))
        self._redecode(writer, latents, decoder, writer.frames_written, engine.emitted)
        log.info("job %s resumed from checkpoint %d (model calls) at latent %d", self.job.job_id, step, engine.emitted)
        return engine.emitted


def _record_split(engine: StreamingEngine | DeferredEngine, record: JobRecord) -> None:
    """A split render's workers and calls in job.json (``metrics.split``: what ``miga status`` shows)."""
    if isinstance(engine, DeferredEngine):
        record.metrics["split"] = engine.executor.describe()


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
