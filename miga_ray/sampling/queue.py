"""The one latent queue every phase steps: latents with their levels and latent ids, head first.

A level changes only where a window writes (``step``: one level down) and where the refine pass
re-noises (``renoise``); no phase keeps a level anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .runner import WindowRunner
from .windows import Window


@dataclass
class Queue:
    """Latent frames ``[B, C, H, W]``, the level of each and its latent id, in step."""

    xs: list[Tensor] = field(default_factory=list)
    levels: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.xs)

    def push(self, x: Tensor, level: int, latent_id: int) -> None:
        """A latent joins at the tail."""
        self.xs.append(x)
        self.levels.append(level)
        self.ids.append(latent_id)

    def pop(self, count: int) -> list[Tensor]:
        """The ``count`` head latents leave."""
        out = self.xs[:count]
        del self.xs[:count], self.levels[:count], self.ids[:count]
        return out

    def step(self, runner: WindowRunner, phase: str, window: Window, variant: int = 0) -> None:
        """One model call over ``window``'s positions; its written block moves one level down in place."""
        slots = window.guide + window.cur
        out = runner(
            phase,
            [self.xs[j] for j in slots],
            [self.levels[j] for j in slots],
            [self.ids[j] for j in slots],
            [False] * len(window.guide) + [j in window.write for j in window.cur],
            guidance=[True] * len(window.guide) + [False] * len(window.cur),
            variant=variant,
        )
        for j, x in zip(window.write, out):
            self.xs[j], self.levels[j] = x, self.levels[j] - 1

    def renoise(self, runner: WindowRunner, positions: range, level: int, purpose: str) -> None:
        """Latents at ``positions`` (clean) back to ``level``, each with its own noise (the refine entry)."""
        for j in positions:  # one latent at a time: elementwise, so the values equal a stacked re-noising's
            self.xs[j], self.levels[j] = runner.noised(self.xs[j], purpose, self.ids[j], level), level
