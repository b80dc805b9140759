"""What a job is, in one place: its spec (prompt or story, settings, start), the identity and default id
computed from it, the ``config`` section of its ``job.json`` written and read back, its manifest row,
and the one render-then-evaluate entry that the command line, batch workers, benchmarks and jobs/
scripts call.

The ``config`` section of a job.json: ``prompt`` (a story's label for a story), ``render`` (every
setting), ``identity`` (the sha256 of what decides the output), ``start`` (what a continuation starts
from) and ``init_video`` (the path the user gave). Old job.json files, with some of it missing, still load.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from .config import (
    ConfigError,
    RenderConfig,
    build_config,
    identity_differences,
    identity_hash,
    job_id_for,
    job_identity,
)
from .storage import JobRecord, ManifestRow, ObjectStore
from .storage.layout import JobStatus
from .storage.quality import EVALUATION

if TYPE_CHECKING:  # continuation and render load torch: only what needs them imports them
    from .continuation import Extension, Start
    from .models.registry import LoadedModel
    from .render import Progress, RenderResult


@dataclass(frozen=True)
class JobSpec:
    """One job as the user asked for it: the prompt (or, with a story in ``cfg``, its label), every setting, and
    where the video starts (None: fresh; an init video; an extension of a finished job)."""

    prompt: str
    cfg: RenderConfig
    start: Start | None = None

    @cached_property
    def identity(self) -> dict[str, Any]:
        """What decides the output (prompt, output settings, start); the job's identity is its hash."""
        return job_identity(self.prompt, self.cfg, self.start.identity() if self.start else None)

    @cached_property
    def identity_hash(self) -> str:
        """sha256 of the identity: what job.json records, and what tells one job from another."""
        return identity_hash(self.identity)

    def default_id(self) -> str:
        """A readable slug of the prompt plus a short hash of the identity."""
        return job_id_for(self.prompt, self.cfg, self.start.identity() if self.start else None)

    def config_section(self) -> dict[str, Any]:
        """The ``config`` section of the job's job.json."""
        from .continuation import InitVideo

        section = {"prompt": self.prompt, "render": self.cfg.model_dump(), "identity": self.identity_hash}
        if self.start is not None:
            section["start"] = self.start.identity()
        if isinstance(self.start, InitVideo):
            section["init_video"] = self.start.clip.path
        return section

    def accepts(self, stored: StoredJob) -> bool:
        """Whether a stored job is this one (an extension also accepts the finished job it extends)."""
        extends = self.start.identity().get("extends") if self.start else None
        return stored.identity is not None and stored.identity in (self.identity_hash, extends)

    def differences(self, stored: StoredJob) -> list[str]:
        """How a stored job's identity differs from this one's, field by field."""
        try:
            return identity_differences(job_identity(stored.prompt, stored.cfg, stored.start), self.identity)
        except (TypeError, ConfigError):
            return ["its job.json records no identity this version can read"]


@dataclass(frozen=True)
class StoredJob:
    """The ``config`` section of a job.json, read back: every field None (``settings`` empty) where an old or
    foreign job.json lacks it."""

    prompt: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    identity: str | None = None
    start: dict[str, Any] | None = None
    init_video: str | None = None

    @classmethod
    def of(cls, record: JobRecord) -> StoredJob:
        """The record's config section."""
        return cls.read(record.config)

    @classmethod
    def read(cls, section: Any) -> StoredJob:
        """A config section as written (a value of the wrong type counts as missing)."""
        section = section if isinstance(section, dict) else {}

        def typed(key: str, kind: type) -> Any:
            value = section.get(key)
            return value if isinstance(value, kind) else None

        return cls(typed("prompt", str), typed("render", dict) or {}, typed("identity", str), typed("start", dict), typed("init_video", str))

    @cached_property
    def cfg(self) -> RenderConfig:
        """Its settings as a RenderConfig; ConfigError when this version cannot read them."""
        if self.prompt is None or not self.settings:
            raise ConfigError("its job.json records no prompt and settings this version can read")
        return build_config(self.settings)

    @property
    def seed(self) -> int | None:
        seed = self.settings.get("seed")
        return seed if isinstance(seed, int) else None

    @property
    def frames(self) -> int | None:
        frames = self.settings.get("frames")
        return frames if isinstance(frames, int) else None

    @property
    def story(self) -> list[dict[str, Any]] | None:
        """A story job's entries (``{at, prompt}``), or None for one prompt."""
        story = self.settings.get("story")
        parts = story.get("parts") if isinstance(story, dict) else None
        return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list | tuple) and parts else None

    def extension(self) -> Extension | None:
        """The extension this job is, if its start says so."""
        from .continuation import Extension

        start = self.start or {}
        if isinstance(start.get("extends"), str) and isinstance(start.get("from_frames"), int):
            return Extension(start["extends"], start["from_frames"])
        return None


def manifest_row(
    job_id: str, stored: StoredJob, status: JobStatus, timings: dict[str, float], metrics: dict[str, Any],
    error: str | None = None, frames: int | None = None, fallback: ManifestRow | None = None,
) -> ManifestRow:
    """A job's one manifest row: what it is from its config section (``fallback``, an earlier row of it, where
    the section lacks a field) and how it went; ``frames`` defaults to the configured length."""
    story = stored.story
    return ManifestRow(
        id=job_id,
        prompt=stored.prompt if stored.prompt is not None else (fallback.prompt if fallback else ""),
        seed=stored.seed if stored.seed is not None else (fallback.seed if fallback else 0),
        frames=frames or stored.frames or (fallback.frames if fallback else 0),
        status=status,
        timings=dict(timings),
        metrics=dict(metrics),
        error=error,
        story=json.dumps(story) if story else (fallback.story if fallback else None),
    )


def needs_evaluation(status: str, metrics: dict[str, Any], cfg: RenderConfig) -> bool:
    """Whether a job's quality numbers are still to be measured: evaluation on, the job done, no numbers yet."""
    return cfg.evaluation.enabled and status == "done" and EVALUATION not in metrics


def render_job(
    store: ObjectStore, spec: JobSpec, model: LoadedModel, job_id: str | None = None, evaluate: bool = True,
    on_progress: Callable[[Progress], None] | None = None, tick_s: float | None = None, **run_options: Any,
) -> RenderResult:
    """Render (or resume, or find done) one job, then, with ``evaluate``, record its quality numbers when they
    are due (a batch worker evaluates on another thread instead, by ``needs_evaluation``). When another process
    takes the job over before the evaluation is recorded (JobBusy), the video is done all the same: the result
    says why in ``not_evaluated``."""
    from .evaluation.job import JobBusy, evaluate_job
    from .render import JobRun

    result = JobRun(store, spec.prompt, spec.cfg, model, job_id=job_id, start=spec.start, **run_options).run(on_progress, tick_s)
    if evaluate and needs_evaluation(result.record.status, result.record.metrics, spec.cfg):
        try:
            result.record = evaluate_job(store, result.job_id, spec.cfg.evaluation)  # on the CPU, after the video is complete
        except JobBusy as exc:
            result.not_evaluated = str(exc)
    return result
