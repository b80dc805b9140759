"""Model calls as futures: a runner that hands every window to an executor instead of running it, and an
engine that streams through such a runner while the calls run elsewhere (``cluster.split`` on Ray workers).

Every model call is a pure function of its inputs (latents, levels, latent ids, the prompt) and its noise
is keyed by coordinates, so any order of calls that respects the data dependencies gives the one-worker
video bit for bit. The engine's own code runs unchanged in the driver: where it would run a window, the
``DeferredRunner`` records a ``Call`` and returns ``Pending`` latents; where it re-noises a latent that does
not exist yet, a ``Noised`` recipe. Values are read only where a phase needs them (reflection's scores, a
checkpoint, an output latent). Nothing here knows Ray: an ``Executor`` runs the calls.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor

from .engine import StreamingEngine
from .miga import MigaEngine
from .reflection import local_candidates
from .runner import WindowRunner
from .trace import Counters


class Pending:
    """Output ``slot`` of model call ``call``, not computed yet. ``ref`` and ``holder`` are the executor's
    (where the value lives once computed, and which worker made it)."""

    __slots__ = ("call", "holder", "ref", "slot")

    def __init__(self, call: int, slot: int) -> None:
        self.call, self.slot, self.ref, self.holder = call, slot, None, -1


@dataclass(frozen=True)
class Noised:
    """``source`` noised to ``level`` with its counter-based noise (``WindowRunner.noised``), applied where it is read."""

    source: Any  # Pending | Noised
    purpose: str
    index: int
    level: int
    variant: int


Latent = Tensor | Pending | Noised


def producers(x: Any) -> list[Pending]:
    """The pending latents a latent is made from (none for a value)."""
    while isinstance(x, Noised):
        x = x.source
    return [x] if isinstance(x, Pending) else []


def swap_pending(x: Any, fn: Callable[[Pending], Any]) -> Any:
    """``x`` with its pending leaf replaced by ``fn(leaf)`` (a value stays as it is)."""
    if isinstance(x, Noised):
        return dataclasses.replace(x, source=swap_pending(x.source, fn))
    return fn(x) if isinstance(x, Pending) else x


def materialize(x: Any, value_of: Callable[[Any], Tensor], runner: WindowRunner) -> Tensor:
    """The value of a latent: its pending leaf through ``value_of``, then any re-noising on ``runner``."""
    if isinstance(x, Noised):
        return runner.noised(materialize(x.source, value_of, runner), x.purpose, x.index, x.level, x.variant)
    return x if isinstance(x, Tensor) else value_of(x)


@dataclass
class Call:
    """One model call of a render: the window's latents (values or pending), their levels and ids, which
    are written, which are guidance slots, the candidate variant; ``outputs`` are its written latents."""

    id: int
    phase: str
    inputs: list[Any]
    levels: list[int]
    ids: list[int]
    kept: list[bool]
    guidance: list[bool]
    variant: int
    outputs: list[Pending]

    def reads(self) -> list[int]:
        """Ids of the calls whose outputs this call reads, ascending."""
        return sorted({p.call for x in self.inputs for p in producers(x)})


class Executor(Protocol):
    """Runs deferred calls: accepts them in order, reports which are finished, and gives values."""

    def submit(self, call: Call) -> None:
        """A new call (its inputs come from earlier calls or are values)."""

    def finished(self, latent: Pending) -> bool:
        """Whether the call that writes ``latent`` has finished."""

    def wait(self, latents: Sequence[Pending]) -> None:
        """Return once every call writing ``latents`` has finished (running calls meanwhile)."""

    def value(self, latent: Pending) -> Tensor:
        """A finished latent's value (on the CPU or anywhere; the caller moves it)."""

    def pump(self, block: bool) -> None:
        """Start ready calls; with ``block``, also wait until at least one call finishes."""

    @property
    def unfinished(self) -> int:
        """Calls submitted and not finished."""

    def describe(self) -> dict[str, int]:
        """What a status line shows: workers, calls in flight and done (JSON values)."""


class DeferredRunner(WindowRunner):
    """A ``WindowRunner`` that records each window as a ``Call`` for ``executor`` and returns pending latents.

    Counts and traces calls exactly as the runner it replaces; known (seed) latents are held as that runner
    holds them, so only the model's work is deferred."""

    def __init__(self, runner: WindowRunner, executor: Executor) -> None:
        super().__init__(runner.model, runner.solver, runner.schedule, runner.noise, runner.trace, runner.seed)
        self.counters, self.executor, self.next_call = runner.counters, executor, 0

    def __call__(self, phase: str, latents: Sequence[Any], levels: Sequence[int], ids: Sequence[int], kept: Sequence[bool],
                 guidance: Sequence[bool] | None = None, variant: int = 0) -> list[Any]:  # fmt: skip
        """Record the window (a call that writes nothing is counted and not run); its kept latents, pending."""
        guidance = list(guidance) if guidance is not None else [False] * len(latents)
        kept_at = [j for j, k in enumerate(kept) if k]
        known = self.seed.known([ids[j] for j in kept_at]) if self.seed is not None else None
        if known and all(known):
            return [self.seed.hold(self.solver, self.noise, ids[j], levels[j] - 1) for j in kept_at]
        self._count(phase, ids, levels, guidance, kept, variant)
        if not kept_at:
            return []
        call = Call(self.next_call, phase, list(latents), [int(v) for v in levels], [int(i) for i in ids], [bool(k) for k in kept],
                    guidance, variant, [Pending(self.next_call, k) for k in range(len(kept_at))])  # fmt: skip
        self.next_call += 1
        self.executor.submit(call)
        if known:
            return [self.seed.hold(self.solver, self.noise, ids[j], levels[j] - 1) if k else p for j, p, k in zip(kept_at, call.outputs, known)]
        return list(call.outputs)

    def noised(self, x0: Any, purpose: str, index: int, level: int, variant: int = 0) -> Any:
        """A value is noised now; a pending latent gets a recipe applied where it is read."""
        if isinstance(x0, Tensor):
            return super().noised(x0, purpose, index, level, variant)
        return Noised(x0, purpose, index, level, variant)

    def resolve(self, latents: Sequence[Any]) -> list[Tensor]:
        """Values of the latents: waits for the calls that write them (a barrier for this engine only)."""
        self.executor.wait([p for x in latents for p in producers(x)])
        return [self.value(x) for x in latents]

    def value(self, x: Any) -> Tensor:
        """One latent's value on the engine's device, in its dtype; its calls must have finished."""
        return materialize(x, lambda p: self.executor.value(p).to(self.noise.device, self.noise.dtype), self)


def map_state(value: Any, fn: Callable[[Any], Any]) -> Any:
    """A copy of an engine state (dataclasses, lists, dicts) with every latent ``x`` replaced by ``fn(x)``.

    Tensors are never changed in place by the engines, so leaves are shared, not copied."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and not isinstance(value, Noised):
        return type(value)(**{f.name: map_state(getattr(value, f.name), fn) for f in dataclasses.fields(value)})
    if isinstance(value, list):
        return [map_state(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: map_state(v, fn) for k, v in value.items()}
    if isinstance(value, (Tensor, Pending, Noised)):
        return fn(value)
    return value


def latents_of(value: Any) -> Iterator[Any]:
    """Every latent held in an engine state."""
    found: list[Any] = []
    map_state(value, lambda x: found.append(x) or x)
    return iter(found)


@dataclass
class Snapshot:
    """The engine's sequential state at a unit boundary, with pending latents, saved once they all exist."""

    state: Any
    counters: Counters
    emitted: int


class DeferredEngine:
    """Streams like the ``StreamingEngine`` it wraps, with its model calls run by ``executor``: the engine runs
    ahead of the calls by at most ``lookahead`` unfinished calls (plus one unit of work), so memory stays flat,
    and clean latents come out in order as their calls finish. A checkpoint is the state at the unit boundary
    where it was asked for, saved once its latents exist, while dispatch goes on (``checkpoint``)."""

    def __init__(self, engine: StreamingEngine, executor: Executor, lookahead: int) -> None:
        if lookahead < 1:
            raise ValueError(f"lookahead: must satisfy lookahead >= 1 (got {lookahead})")
        engine.runner = runner = DeferredRunner(engine.runner, executor)
        if isinstance(engine, MigaEngine):
            engine.candidates = local_candidates(runner)  # candidates are calls like any other, run side by side
        self.inner, self.executor, self.lookahead = engine, executor, lookahead
        self.outputs: deque[tuple[int, Any]] = deque()
        self.written = engine.emitted
        self.snapshot: Snapshot | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """One latent frame's shape ``[B, C, H, W]``."""
        return self.inner.shape

    @property
    def emitted(self) -> int:
        """Clean latents handed out (their values exist)."""
        return self.written

    @property
    def counters(self) -> Counters:
        """The engine's counters: calls made by the engine (some may still be running)."""
        return self.inner.counters

    @property
    def done(self) -> bool:
        """Every latent handed out and every call finished (a call whose outputs no latent reads, such as the last
        window's tail, still finishes before the render records its calls)."""
        return self.inner.done and not self.outputs and not self.executor.unfinished

    def step(self) -> tuple[int, Tensor] | None:
        """The next clean latent if its calls have finished; else one unit of the engine's work if the lookahead
        allows, else wait for a call to finish; None after work."""
        if self.outputs and all(self.executor.finished(p) for p in producers(self.outputs[0][1])):
            index, latent = self.outputs.popleft()
            self.written += 1
            return index, self.inner.runner.value(latent)
        if not self.inner.done and self.executor.unfinished < self.lookahead:
            item = self.inner.step()
            if item is not None:
                self.outputs.append(item)
            self.executor.pump(block=False)
        else:
            self.executor.pump(block=True)
        return None

    def held_latents(self) -> int:
        """Latent frames the engine holds, pending ones included (a pending latent's value lives in the executor)."""
        return self.inner.held_latents() + len(self.outputs)

    def load_state_dict(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """Restore a checkpoint of the sequential engine (made on any number of workers)."""
        self.inner.load_state_dict(tensors, meta)
        self.written = self.inner.emitted

    def checkpoint(self) -> tuple[dict[str, Tensor], dict[str, Any], int, int] | None:
        """(tensors, meta, latents emitted, model calls) of the state at the unit boundary where the first
        unanswered ``checkpoint`` was asked, once every latent in it exists and every latent before it was
        handed out; None until then (asking again is free)."""
        if self.snapshot is None:
            counters = Counters.from_json(self.inner.counters.to_json())
            self.snapshot = Snapshot(map_state(self.inner.state, lambda x: x), counters, self.inner.emitted)
            return None
        snap = self.snapshot
        pending = [p for x in latents_of(snap.state) for p in producers(x)]
        if self.written < snap.emitted or not all(self.executor.finished(p) for p in pending):
            return None
        self.snapshot = None
        state = map_state(snap.state, self.inner.runner.value)
        tensors, meta = self.inner.state_dict_of(state, snap.counters)
        return tensors, meta, snap.emitted, snap.counters.total_calls


def sequential(engine: StreamingEngine | DeferredEngine) -> StreamingEngine:
    """The streaming engine itself, whether or not its calls are deferred (for its plan)."""
    return engine.inner if isinstance(engine, DeferredEngine) else engine

