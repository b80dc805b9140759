"""What travels between the batch driver and the workers: jobs, outcomes, worker descriptions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import RenderConfig


@dataclass(frozen=True)
class BatchJob:
    """One job of a batch: its id (a storage key), prompt and full render config."""

    id: str
    prompt: str
    cfg: RenderConfig
    row: int = 0

    @property
    def frames(self) -> int:
        return self.cfg.frames


@dataclass
class JobOutcome:
    """What a worker reports for one finished (or skipped) job."""

    job_id: str
    status: str
    skipped: bool
    resumed_from: int | None
    latents: int
    run_s: float
    worker: int
    node_id: str
    timings: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerInfo:
    """Where a worker runs and what it holds."""

    index: int
    node_id: str
    pid: int
    device: str
    threads: int
