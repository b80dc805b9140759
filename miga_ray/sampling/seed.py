"""Given clean latents a video begins with (a user's clip, or a finished render's end): the one seeding path of every engine.

A seeded engine treats latents ``0 .. count-1`` as known: wherever one of them sits in a queue, at
whatever level, it is the given latent noised to that level (its own counter-based noise), and a
window step that writes it writes that again instead of the model's step. The engines lay the
known latents out where their own latents would stand in a steady queue (FIFO: the whole
diagonal; MIGA: the stage-1 staircase from level E + 1 up), so the first new latent enters behind
known context at every level, and they output only latents ``count`` and later. A window whose
written latents are all known needs no model call and makes none.

Only the last ``depth`` known latents can be in a queue (``FifoEngine.seed_depth``,
``MigaEngine.seed_depth``), so a seed holds only those; an id before them (a clip shorter than the
queue) is its first latent, as FIFO's own start repeats the base clip's first latent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .noise import NoiseSource
from .phases import SEED_NOISE
from .solvers import Solver


@dataclass
class Seed:
    """The last ``len(latents)`` of ``count`` known clean latents, each ``[B, C, H, W]``."""

    latents: list[Tensor]
    count: int

    def __post_init__(self) -> None:
        if not self.latents or self.count < len(self.latents):
            raise ValueError(f"seed: must satisfy 1 <= latents held ({len(self.latents)}) <= count ({self.count})")

    def latent(self, index: int) -> Tensor:
        """Known clean latent ``index`` (< count); ids before the held ones are the first held."""
        return self.latents[max(0, index - (self.count - len(self.latents)))]

    def hold(self, solver: Solver, noise: NoiseSource, index: int, level: int) -> Tensor:
        """Known latent ``index`` at ``level``: itself at level 0, else noised with its own noise."""
        x0 = self.latent(index)
        if level == 0:
            return x0
        eps = noise.draw(SEED_NOISE, index, level)
        return solver.add_noise(x0.unsqueeze(2), eps.unsqueeze(2).to(x0), torch.tensor([level])).squeeze(2)

    def known(self, ids: Sequence[int]) -> list[bool]:
        """Whether each of ``ids`` is a given latent (the engine outputs none of them)."""
        return [i < self.count for i in ids]


def seed_like(seed: Seed | None, shape: Sequence[int]) -> Seed | None:
    """A seed of the same count with zero latents of ``shape`` (a dry run's: the schedule depends on the count alone)."""
    return None if seed is None else Seed([torch.zeros(tuple(shape))], seed.count)
