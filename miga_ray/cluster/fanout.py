"""Self-reflection candidates fanned out over peer workers: a ``CandidateRunner`` for ``JobRun``.

Candidate k goes to place ``k mod P`` (place 0 is this worker, then its peers). The peers' shares
are sent first as Ray actor calls, this worker grows its own share meanwhile, then the results
are gathered in request order. A peer that dies or fails is replaced by running its share here:
candidate noise is counter-based, so the candidates (and the choice among them) are the same
wherever they ran.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import replace
from typing import Any

import ray
from torch import Tensor

from ..sampling import CandidateRequest

log = logging.getLogger(__name__)

LocalRun = Callable[[Sequence[CandidateRequest]], list[Tensor]]
PeerCall = Callable[[Any, list[CandidateRequest]], "ray.ObjectRef"]


def to_cpu(request: CandidateRequest) -> CandidateRequest:
    """The request with its tensors on the CPU, ready to travel to another process."""
    return replace(request, refs=request.refs.cpu(), anchor=None if request.anchor is None else request.anchor.cpu())


def split(n: int, places: int) -> list[list[int]]:
    """Request indices per place, round robin: place 0 gets 0, P, 2P, ..."""
    return [list(range(p, n, places)) for p in range(places)]


class FanoutCandidates:
    """A CandidateRunner that grows candidates on this worker and on up to len(peers) peers at once."""

    def __init__(self, local: LocalRun, call: PeerCall, peers: Sequence[Any], stats: MutableMapping[str, int] | None = None) -> None:
        self.local, self.call, self.peers = local, call, list(peers)
        self.stats = stats if stats is not None else {}

    def __call__(self, requests: Sequence[CandidateRequest]) -> list[Tensor]:
        """Results in request order, the same tensors whichever places grew them."""
        t0 = time.perf_counter()
        requests = list(requests)
        places = split(len(requests), 1 + min(len(self.peers), max(0, len(requests) - 1)))
        sent = []
        for peer, idx in zip(self.peers, places[1:]):
            if idx:
                sent.append((idx, self.call(peer, [to_cpu(requests[i]) for i in idx])))
        results: dict[int, Tensor] = dict(zip(places[0], self.local([requests[i] for i in places[0]])))
        self._count("local_requests", len(places[0]))
        for idx, ref in sent:
            try:
                out = ray.get(ref)
                self._count("sent_requests", len(idx))
            except ray.exceptions.RayError as exc:  # a dead, restarting or failing peer
                log.warning("a peer failed on %d reflection candidates (%s); growing them here", len(idx), type(exc).__name__)
                out = self.local([requests[i] for i in idx])
                self._count("fallbacks", len(idx))
            results.update(zip(idx, out))
        self._count("reflections", 1)
        self._count("reflect_ms", round(1000 * (time.perf_counter() - t0)))
        return [results[i] for i in range(len(requests))]

    def _count(self, key: str, n: int) -> None:
        self.stats[key] = self.stats.get(key, 0) + n
