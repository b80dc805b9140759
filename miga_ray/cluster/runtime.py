"""Joining a Ray cluster, or starting a small local one bound to loopback, and starting workers."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from ..config import RenderConfig
from .batch import introduce
from .jobs import WorkerInfo
from .worker import RemoteWorker, actor_options

log = logging.getLogger(__name__)
MiB = 1024 * 1024


@dataclass(frozen=True)
class WorkerSpec:
    """How each worker claims its device: a GPU, a CPU share, and/or a custom resource."""

    num_gpus: float = 0
    num_cpus: float = 0.5
    resources: dict[str, float] = field(default_factory=dict)
    max_restarts: int = 2
    fanout: int = 2  # peers a worker may send reflection candidates to
    threads: int | None = None  # torch CPU threads per worker (default: OMP_NUM_THREADS, as Ray sets it)

    @classmethod
    def for_cluster(cls, resource: str | None = None, cpus: float = 0.5, **kw: Any) -> WorkerSpec:
        """One GPU per worker when the cluster has GPUs; otherwise ``cpus`` CPUs (plus ``resource`` if named)."""
        if resource:
            return cls(num_gpus=0, num_cpus=0, resources={resource: 1}, **kw)
        if ray.cluster_resources().get("GPU", 0) > 0:
            return cls(num_gpus=1, num_cpus=1, **kw)
        return cls(num_gpus=0, num_cpus=cpus, **kw)

    def capacity(self) -> int:
        """How many such workers the cluster's total resources could hold at once."""
        total = ray.cluster_resources()
        need = {"GPU": self.num_gpus, "CPU": self.num_cpus, **self.resources}
        fits = [int(total.get(k, 0) // v) for k, v in need.items() if v > 0]
        return min(fits) if fits else 1


def connect(address: str | None = None, num_cpus: int | None = None, resources: dict[str, float] | None = None, object_store_mb: int = 256) -> bool:
    """Join ``address`` (or ``RAY_ADDRESS``, as inside a Ray Job) or start a local Ray on 127.0.0.1.

    Returns whether a Ray connection was made here (the caller then calls ``ray.shutdown()``).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, logging_level="WARNING", log_to_driver=True)
    else:
        ensure_private_token()
        ray.init(
            address="local",  # a new instance even where `ray start` ran (None would try to join that one)
            num_cpus=num_cpus,
            resources=resources,
            include_dashboard=False,
            object_store_memory=object_store_mb * MiB,
            _node_ip_address="127.0.0.1",
            logging_level="WARNING",
        )
    return True


def ensure_private_token() -> None:
    """Give a private local cluster an ephemeral auth token (in this process's env) if none is configured.

    Ray 2.60 turns token authentication on for new local clusters and would otherwise write a token
    to ``~/.ray/auth_token``; a cluster that lives only as long as this command needs no file.
    """
    configured = any(os.environ.get(k) for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"))
    if os.environ.get("RAY_AUTH_MODE", "token").lower() == "token" and not configured and not (Path.home() / ".ray" / "auth_token").exists():
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def start_workers(n: int, cfg: RenderConfig, spec: WorkerSpec) -> list[Any]:
    """Start ``n`` worker actors and introduce them to each other; each is usable once ``ready()`` returns.

    Does not wait: on an autoscaling cluster workers may come up one by one, and the batch driver
    gives a worker jobs as soon as it is ready.
    """
    if n > spec.capacity():
        log.warning("asked for %d workers but the cluster now holds resources for %d; the rest wait for resources", n, spec.capacity())
    options = actor_options(spec.num_gpus, spec.num_cpus, spec.resources, spec.max_restarts)
    workers = [RemoteWorker.options(**options).remote(cfg, i, spec.fanout, spec.threads) for i in range(n)]
    introduce(workers)
    return workers


def start_teams(n: int, per_job: int, cfg: RenderConfig, spec: WorkerSpec) -> tuple[list[Any], list[Any]]:
    """``n`` workers in teams of ``per_job``: each team's leader takes jobs and splits each over its team
    (``cluster.split``); returns the leaders, introduced to each other, and every worker. A team keeps its
    members when Ray restarts its leader (they are the leader's constructor arguments)."""
    if per_job == 1:
        workers = start_workers(n, cfg, spec)
        return workers, workers
    options = actor_options(spec.num_gpus, spec.num_cpus, spec.resources, spec.max_restarts)
    leaders, everyone = [], []
    for t in range(n // per_job):
        team = [RemoteWorker.options(**options).remote(cfg, t * per_job + i, 0, spec.threads) for i in range(1, per_job)]
        leaders.append(RemoteWorker.options(**options).remote(cfg, t * per_job, spec.fanout, spec.threads, team))
        everyone += [leaders[-1], *team]
    introduce(leaders)
    return leaders, everyone


def worker_infos(workers: list[Any]) -> list[WorkerInfo]:
    """Where each worker runs."""
    return ray.get([w.ready.remote() for w in workers])
