"""One render's model calls on N Ray workers (each a full model replica): the executor behind ``DeferredEngine``.

A call starts as soon as the calls it reads have finished, on an idle worker, the one that made most of its
inputs first (Ray object references carry the latents; a worker reads its own outputs from its node's
store); when every worker is busy, a ready call queues behind one running call (``DEPTH``), which hides the
driver's round trip. Every worker runs one call at a time, and the driver keeps no more calls unfinished than
the engine's lookahead, so memory does not grow with the video. A call whose worker dies runs again on another:
its inputs are objects the driver owns, and every call is a pure function of them, so the video is the same.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError
from torch import Tensor

from ..config import ConfigError, RenderConfig
from ..sampling import StreamingEngine
from ..sampling.deferred import Call, DeferredEngine, Pending, producers, swap_pending

log = logging.getLogger(__name__)
WAIT_S = 0.5  # a blocking pump returns at least this often, so the render loop checks its lease and reports progress
PING_S = 1.0  # how often a restarting worker is asked whether it is back
DEPTH = 2  # calls sent to one worker at once: one running, one waiting


@dataclass(frozen=True)
class Arg:
    """Where a call's pending input travels: the worker method's positional argument ``index``."""

    index: int


def travelling(call: Call) -> tuple[Call, list[Any]]:
    """The call as it travels to a worker: values on the CPU, each pending input an ``Arg`` naming its object reference
    among the method's arguments (Ray resolves those), no outputs; and those references."""
    refs: list[Any] = []

    def place(p: Pending) -> Arg:
        refs.append(p.ref)
        return Arg(len(refs) - 1)

    inputs = [swap_pending(x, place) if producers(x) else x.cpu() for x in call.inputs]
    return dataclasses.replace(call, inputs=inputs, outputs=[]), refs


def lookahead_for(workers: int) -> int:
    """Unfinished calls the engine may run ahead by: enough for every worker to find ready work (docs/PERF.md)."""
    return max(64, 16 * workers)


class RayExecutor:
    """Runs a render's deferred calls on worker actors that have a ``window(job, call, *inputs)`` method."""

    def __init__(self, workers: Sequence[Any], job: Any) -> None:
        if not workers:
            raise ValueError("workers: a split render needs at least one worker")
        self.workers, self.job = list(workers), job
        self.live = set(range(len(self.workers)))  # not restarting, not gone
        self.load = [0] * len(self.workers)  # calls sent to each worker and not finished
        self.calls: dict[int, Call] = {}  # submitted, not finished
        self.waiting: dict[int, int] = {}  # call -> inputs not yet written
        self.dependents: dict[int, list[int]] = defaultdict(list)
        self.ready: list[int] = []
        self.running: dict[Any, tuple[int, int]] = {}  # marker ref -> (call, worker)
        self.restarting: dict[Any, int] = {}  # ready() ref -> worker
        self.ping_at: dict[int, float] = {}  # worker -> when to ask again whether it is back
        self.stats: Counter = Counter()

    @property
    def unfinished(self) -> int:
        """Calls submitted and not finished."""
        return len(self.calls)

    def describe(self) -> dict[str, int]:
        """Workers (all, and live now), calls sent to them and not finished, calls finished, calls run again."""
        return {"workers": len(self.workers), "live": len(self.live), "calls_in_flight": len(self.running),
                "calls_done": self.stats["calls"], "calls_retried": self.stats["retried"]}  # fmt: skip

    def submit(self, call: Call) -> None:
        """A new call: ready at once if every call it reads has finished."""
        reads = [c for c in call.reads() if c in self.calls]
        self.calls[call.id] = call
        if reads:
            self.waiting[call.id] = len(reads)
            for c in reads:
                self.dependents[c].append(call.id)
        else:
            heapq.heappush(self.ready, call.id)

    def finished(self, latent: Pending) -> bool:
        """Whether the call that writes ``latent`` has finished."""
        return latent.call not in self.calls

    def wait(self, latents: Sequence[Pending]) -> None:
        """Run calls until those writing ``latents`` have finished (reflection's barrier)."""
        while not all(self.finished(p) for p in latents):
            self.pump(block=True)

    def value(self, latent: Pending) -> Tensor:
        """A finished latent, fetched from the object store (on the CPU)."""
        return ray.get(latent.ref)

    def pump(self, block: bool) -> None:
        """Start ready calls on workers with room; collect finished ones (with ``block``, wait up to WAIT_S for one)."""
        self._dispatch()
        for w, at in list(self.ping_at.items()):
            if time.monotonic() >= at:
                del self.ping_at[w]
                self.restarting[self.workers[w].ready.remote()] = w
        refs = [*self.running, *self.restarting]
        if not refs and self.ping_at:
            time.sleep(WAIT_S if block else 0)
            return
        if not refs:
            if block and self.calls and not self.live:
                raise RuntimeError("split render: no worker is left to run calls")
            if block and self.calls:
                raise RuntimeError("split render: calls wait for inputs that no running call will write")
            return
        done, _ = ray.wait(refs, num_returns=1, timeout=WAIT_S if block else 0)
        if done:
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in done:
            self._collect(ref)
        self._dispatch()

    def _dispatch(self) -> None:
        while self.ready and any(self.load[w] < DEPTH for w in self.live):
            cid = heapq.heappop(self.ready)
            call = self.calls[cid]
            w = self._place(call)
            spec, args = travelling(call)
            refs = self.workers[w].window.options(num_returns=len(call.outputs) + 1).remote(self.job, spec, *args)
            for p, ref in zip(call.outputs, refs):
                p.ref, p.holder = ref, w
            self.running[refs[-1]] = (cid, w)
            self.load[w] += 1

    def _place(self, call: Call) -> int:
        """The least busy live worker; among those, the one that made most of the call's inputs, then the lowest index."""
        made = Counter(p.holder for x in call.inputs for p in producers(x))
        return min((w for w in self.live if self.load[w] < DEPTH), key=lambda w: (self.load[w], -made.get(w, 0), w))

    def _collect(self, ref: Any) -> None:
        if ref in self.restarting:
            w = self.restarting.pop(ref)
            try:
                ray.get(ref)
                self.live.add(w)
            except ActorUnavailableError:  # still restarting
                self.ping_at[w] = time.monotonic() + PING_S
            except RayActorError:
                log.warning("split render: worker %d is gone for good; %d left", w, len(self.live))
            return
        cid, w = self.running.pop(ref)
        self.load[w] -= 1
        try:
            ray.get(ref)
        except RayActorError as exc:  # the worker died: run the call elsewhere, take the worker back once it restarts
            log.warning("split render: worker %d failed on call %d (%s); running it again", w, cid, type(exc).__name__)
            self.stats["retried"] += 1
            heapq.heappush(self.ready, cid)
            if w in self.live:
                self.live.discard(w)
                self.restarting[self.workers[w].ready.remote()] = w
            return
        self.calls.pop(cid)
        self.stats["calls"] += 1
        for d in self.dependents.pop(cid, []):
            self.waiting[d] -= 1
            if not self.waiting[d]:
                del self.waiting[d]
                heapq.heappush(self.ready, d)


def splitter(workers: Sequence[Any], job: Any, lookahead: int | None = None) -> Callable[[StreamingEngine], DeferredEngine]:
    """What ``JobRun`` applies to its engine to run its calls on ``workers`` (``job``: what their ``window`` method
    needs to build the render's runner, put in Ray's store once)."""
    ahead = lookahead or lookahead_for(len(workers))
    return lambda engine: DeferredEngine(engine, RayExecutor(workers, job), ahead)


@contextmanager
def split_workers(n: int, cfg: RenderConfig, address: str | None = None, cpus: float = 0.5) -> Iterator[list[Any]]:
    """``n`` worker actors for one render's calls, claiming devices as ``miga batch`` workers do, on the Ray cluster at
    ``address`` (or ``RAY_ADDRESS``) or a new local one; a ConfigError naming ``--workers`` (exit 2) before any
    starts if the cluster cannot place them. Killed, and a local Ray shut down, on the way out."""
    from .runtime import WorkerSpec, connect, start_workers  # loads torch and the model code

    started = connect(address)
    workers: list[Any] = []
    try:
        spec = WorkerSpec.for_cluster(cpus=cpus, fanout=0)
        room = spec.capacity()
        if n > room:
            claim = f"{spec.num_gpus:g} GPU" if spec.num_gpus else f"{spec.num_cpus:g} CPU"
            total = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
            raise ConfigError(f"--workers {n}: the Ray cluster can place {room} worker(s) of {claim} each (it has {total}); ask for at most {room}")
        workers = start_workers(n, cfg, spec)
        yield workers
    finally:
        for w in workers:
            ray.kill(w)
        if started:
            ray.shutdown()
