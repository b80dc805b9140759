"""A render's call graph, dry: every model call with the calls whose outputs it reads, the points where the
engine waits for values (reflection's scores), the critical path, and the time a list scheduler takes on N
workers (any ready call on any free worker, oldest first, the engine at most ``lookahead`` calls ahead).

Like ``plan``, it replays the engine's own code with a zero-cost model on 1x1 latents, here through a
``DeferredRunner`` whose executor only records. Reflection judges (a barrier) where the settings say, but
never triggers: the candidates it would grow depend on latent values, which no dry run has.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .deferred import Call, DeferredEngine, Pending
from .engine import StreamingEngine
from .miga import MigaEngine
from .plan import dry_engine


@dataclass(frozen=True)
class Node:
    """One model call: its place in the engine's order, its phase, the calls whose outputs it reads."""

    id: int
    phase: str
    reads: tuple[int, ...]


@dataclass
class CallGraph:
    """The calls of a whole render in the engine's order, and its barriers: ``(calls made before it, calls it waits for)``."""

    nodes: list[Node] = field(default_factory=list)
    barriers: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)

    def critical_path(self) -> int:
        """The longest chain of calls, each reading the one before (the fewest call times any number of workers needs)."""
        depth: list[int] = []
        for node in self.nodes:
            depth.append(1 + max((depth[r] for r in node.reads), default=0))
        return max(depth, default=0)

    def makespan(self, workers: int, lookahead: int | None = None) -> int:
        """Call times the whole render takes on ``workers`` equal workers under list scheduling: at every call
        time each free worker starts the oldest ready call; the engine makes calls in order, stops at a barrier
        until the calls it waits for have finished, and (with ``lookahead``) while that many calls are unfinished."""
        if workers < 1:
            raise ValueError(f"workers: must satisfy workers >= 1 (got {workers})")
        n = len(self.nodes)
        waiting = [len(node.reads) for node in self.nodes]
        dependents: list[list[int]] = [[] for _ in range(n)]
        for node in self.nodes:
            for r in node.reads:
                dependents[r].append(node.id)
        finished = [False] * n
        ready: list[int] = []
        made = done = t = barrier = 0
        while done < n:
            while made < n:
                if barrier < len(self.barriers) and self.barriers[barrier][0] == made:
                    if not all(finished[c] for c in self.barriers[barrier][1]):
                        break
                    barrier += 1
                    continue
                if lookahead is not None and made - done >= lookahead:
                    break
                if not waiting[made]:
                    heapq.heappush(ready, made)
                made += 1
            running = [heapq.heappop(ready) for _ in range(min(workers, len(ready)))]
            if not running:
                raise RuntimeError("call graph: no call can run (a barrier waits for calls not yet made)")
            t += 1
            for c in running:
                finished[c] = True
                done += 1
                for d in dependents[c]:
                    waiting[d] -= 1
                    if not waiting[d] and d < made:
                        heapq.heappush(ready, d)
        return t

    def speedup(self, workers: int, lookahead: int | None = None) -> float:
        """Predicted speedup on ``workers`` over one worker (every call costing the same)."""
        return len(self.nodes) / self.makespan(workers, lookahead) if self.nodes else 1.0


class _Recorder:
    """An executor that only records: every call finishes at once with zero latents, and a read is a barrier."""

    def __init__(self, graph: CallGraph) -> None:
        self.graph, self.zero = graph, torch.zeros(1, 1, 1, 1)

    def submit(self, call: Call) -> None:
        self.graph.nodes.append(Node(call.id, call.phase, tuple(call.reads())))

    def finished(self, latent: Pending) -> bool:
        return True

    def wait(self, latents: Sequence[Pending]) -> None:
        if latents:
            self.graph.barriers.append((len(self.graph.nodes), tuple(sorted({p.call for p in latents}))))

    def value(self, latent: Pending) -> Tensor:
        return self.zero

    def pump(self, block: bool) -> None:
        return None

    @property
    def unfinished(self) -> int:
        return 0


def call_graph(engine: StreamingEngine) -> CallGraph:
    """The call graph of a whole render on ``engine``'s settings (its length, seed, schedule; reflection judges, never triggers)."""
    dry = dry_engine(engine, reflect=True)
    if isinstance(dry, MigaEngine):
        dry.cfg = dry.cfg.with_(reflect_delta=float("inf"))  # no drop can exceed it: candidates depend on values
    graph = CallGraph()
    deferred = DeferredEngine(dry, _Recorder(graph), lookahead=1)
    while not deferred.done:
        deferred.step()
    return graph
