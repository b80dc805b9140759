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

from .noise import NoiseSource
from .phases import ENTRY_NOISE, REFLECT
from .runner import WindowRunner
from .solvers import Solver
from .windows import reference_offset, sweep_blocks


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


def entry_latent(solver: Solver, noise: NoiseSource, anchor: Tensor | None, latent_id: int, variant: int) -> Tensor:
    """A new latent at the top level T: pure noise, or ``anchor`` noised to T."""
    T = solver.grid.num_levels
    eps = noise.draw(ENTRY_NOISE, latent_id, T, variant)
    if anchor is None:
        return eps
    lv = torch.tensor([T])
    return solver.add_noise(anchor.unsqueeze(2), eps.unsqueeze(2), lv).squeeze(2)


def run_candidate(runner: WindowRunner, request: CandidateRequest) -> Tensor:
    """Grow one candidate (a short FIFO-style run from fresh noise); return its new latents ``[B, C, N, H, W]``."""
    T = runner.solver.grid.num_levels
    frozen = len(request.ref_ids)
    xs = list(request.refs.unbind(dim=2))
    levels, ids = list(request.ref_levels), list(request.ref_ids)
    for step in range(request.steps):
        if step < len(request.groups):
            for i in request.groups[step]:
                xs.append(entry_latent(runner.solver, runner.noise, request.anchor, i, request.candidate))
                levels.append(T)
                ids.append(i)
        n = len(xs)
        offset = reference_offset(n, request.window, request.stride) if request.official_layout else step % request.stride
        for a, b in sweep_blocks(n, request.window, request.stride, offset):
            if b <= frozen and not request.official_layout:
                continue
            span = range(a, min(n, a + request.window))
            kept = [frozen <= j < b for j in span]
            out = runner(
                REFLECT,
                [xs[j] for j in span],
                [levels[j] for j in span],
                [ids[j] for j in span],
                kept,
                guidance=[j < frozen for j in span],
                variant=request.candidate,
            )
            for j, x in zip([j for j, k in zip(span, kept) if k], out):
                xs[j], levels[j] = x, levels[j] - 1
    return torch.stack(xs[frozen:], dim=2)


CandidateRunner = Callable[[Sequence[CandidateRequest]], list[Tensor]]


def local_candidates(runner: WindowRunner) -> CandidateRunner:
    """Run candidate requests one after another on this process's model."""
    return lambda requests: [run_candidate(runner, r) for r in requests]
