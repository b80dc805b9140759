"""Self-reflection: a latent-space consistency score and candidate groups drawn from frozen references.

A candidate request is self-contained (tensors and integers), so the caller may run candidates on
other devices through a ``CandidateRunner``; candidate noise is counter-based, so the choice does not
depend on where they ran.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .phases import ENTRY_NOISE, REFLECT
from .queue import Queue
from .runner import WindowRunner
from .windows import candidate_windows


def consistency_score(evaluated: Tensor, references: Tensor) -> Tensor:
    """Per batch element ``[B]``: mean cosine similarity of channel-averaged spatial maps over all
    (evaluated, reference) pairs; each element of a batch is judged on its own.

    Both ``[B, C, F, H, W]``; float32 scores.
    """

    def maps(x: Tensor) -> Tensor:
        return F.normalize(x.float().mean(dim=1).flatten(2), dim=2)  # [B, F, H*W]

    return (maps(evaluated) @ maps(references).transpose(1, 2)).flatten(1).mean(dim=1)


@dataclass
class CandidateRequest:
    """One candidate: regrow ``groups`` (latent ids, head first) behind the frozen ``refs``.

    Group i enters at the top level at candidate step i and is swept ``steps - i`` times, so the
    result sits at the same levels as the queue latents it may replace.
    """

    candidate: int
    refs: Tensor  # [B, C, R, H, W] frozen reference latents, at ref_levels
    ref_levels: list[int]
    ref_ids: list[int]
    groups: list[list[int]]
    steps: int
    window: int
    stride: int
    anchor: Tensor | None  # [B, C, H, W]: entries are this latent noised to the top level; None = pure noise
    official_layout: bool  # the official code's blocks (remainder first) and its windows that write only references


def entry_latent(runner: WindowRunner, anchor: Tensor | None, latent_id: int, variant: int) -> Tensor:
    """A new latent at the top level T: pure noise, or ``anchor`` noised to T (with the same noise)."""
    T = runner.solver.grid.num_levels
    if anchor is None:
        return runner.noise.draw(ENTRY_NOISE, latent_id, T, variant)
    return runner.noised(anchor, ENTRY_NOISE, latent_id, T, variant)


def grow_candidate(runner: WindowRunner, request: CandidateRequest) -> list[Tensor]:
    """Grow one candidate (a short FIFO-style run from fresh noise); its new latents, head first, as the runner returns them."""
    T = runner.solver.grid.num_levels
    frozen = len(request.ref_ids)
    queue = Queue(list(request.refs.unbind(dim=2)), list(request.ref_levels), list(request.ref_ids))
    for step in range(request.steps):
        for i in request.groups[step] if step < len(request.groups) else []:
            queue.push(entry_latent(runner, request.anchor, i, request.candidate), T, i)
        for window in candidate_windows(len(queue), frozen, request.window, request.stride, step, request.official_layout):
            queue.step(runner, REFLECT, window, request.candidate)
    return queue.xs[frozen:]


def run_candidate(runner: WindowRunner, request: CandidateRequest) -> Tensor:
    """Grow one candidate; return its new latents ``[B, C, N, H, W]``."""
    return torch.stack(runner.resolve(grow_candidate(runner, request)), dim=2)


CandidateRunner = Callable[[Sequence[CandidateRequest]], list[Tensor]]


def local_candidates(runner: WindowRunner) -> CandidateRunner:
    """Run candidate requests on this runner: every candidate's calls first, then their values (a runner that
    defers calls runs the candidates side by side)."""

    def run(requests: Sequence[CandidateRequest]) -> list[Tensor]:
        grown = [grow_candidate(runner, r) for r in requests]
        return [torch.stack(runner.resolve(latents), dim=2) for latents in grown]

    return run
