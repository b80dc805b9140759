"""Stage 2 (and the refine pass) as a stream: sweeps at one shared level with a bounded lag.

Sweep p moves latents from level l_p to l_p - 1 in windows of f latents that all sit at l_p. A
window of sweep p runs as soon as sweep p-1 has written every latent it covers, so each sweep
trails the one before it by at most a window and a stride: the stage holds O(f x levels) latents,
and latents leave as soon as the last sweep has written them. The result equals running each
sweep over the whole video before the next (window placement depends only on latent indices).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .phases import REFINE, REFINE_NOISE, STAGE2
from .runner import WindowRunner
from .windows import block_at


@dataclass(frozen=True)
class Sweep:
    phase: str  # STAGE2 or REFINE
    level: int  # level of every latent this sweep reads
    offset: int  # window offset of this sweep


def unified_sweeps(entry_level: int, refine: bool, stride: int, lowest: int) -> list[Sweep]:
    """Stage 2 from ``entry_level`` down to ``lowest`` (a grid's identity last step is not run), then
    (optionally) refine: re-noised to one level above the stage-2 entry, as the reference does, and down again."""
    starts = [(STAGE2, entry_level)] + ([(REFINE, entry_level + 1)] if refine else [])
    return [Sweep(ph, top - i, i % stride) for ph, top in starts for i in range(top - lowest + 1)]


class UnifiedStage:
    """Latents enter in order at the entry level; clean latents leave in order."""

    def __init__(self, runner: WindowRunner, entry_level: int, refine: bool, window: int, stride: int, total: int) -> None:
        self.runner, self.window, self.stride, self.total = runner, window, stride, total
        self.sweeps = unified_sweeps(entry_level, refine, stride, runner.solver.grid.lowest_step)
        self.renoise_after = sum(sw.phase == STAGE2 for sw in self.sweeps) - 1 if refine else -1  # last stage-2 sweep
        self.frontier = [0] * len(self.sweeps)  # ids below frontier[p] are written by sweep p
        self.arrived = 0
        self.base = 0  # id of self.xs[0]
        self.xs: list[Tensor] = []

    def push(self, latents: list[Tensor]) -> None:
        """Latents leaving stage 1 (at the entry level), next in order."""
        self.xs.extend(latents)
        self.arrived += len(latents)

    def run(self) -> list[tuple[int, Tensor]]:
        """Run every window whose inputs are ready; return the latents that became final."""
        for p, sweep in enumerate(self.sweeps):
            ready = self.frontier[p - 1] if p else self.arrived
            while self.frontier[p] < self.total:
                a, b = block_at(self.frontier[p], self.total, self.window, self.stride, sweep.offset)
                end = min(self.total, a + self.window)
                if ready < end:
                    break
                self._window(p, sweep, a, b, end)
        final = self.frontier[-1] if self.sweeps else self.arrived
        done = [(self.base + i, x) for i, x in enumerate(self.xs[: final - self.base])]
        del self.xs[: final - self.base]
        self.base = final
        return done

    def _window(self, p: int, sweep: Sweep, a: int, b: int, end: int) -> None:
        ids = list(range(a, end))
        out = self.runner(sweep.phase, [self.xs[i - self.base] for i in ids], [sweep.level] * len(ids), ids, [i < b for i in ids])
        if p == self.renoise_after:
            out = self._renoise(ids[: b - a], out)
        self.xs[a - self.base : b - self.base] = out
        self.frontier[p] = b

    def _renoise(self, ids: list[int], clean: list[Tensor]) -> list[Tensor]:
        """Refine entry: clean latents back to the first refine sweep's level with their own noise."""
        level = self.sweeps[self.renoise_after + 1].level
        x0 = torch.stack(clean, dim=2)
        eps = self.runner.noise.frames(REFINE_NOISE, ids, [level] * len(ids))
        return list(self.runner.solver.add_noise(x0, eps, torch.full((len(ids),), level)).unbind(dim=2))

    def held(self) -> list[Tensor]:
        return self.xs

    def meta(self) -> dict[str, Any]:
        return {"frontier": list(self.frontier), "arrived": self.arrived, "base": self.base}

    def load(self, xs: list[Tensor], meta: dict[str, Any]) -> None:
        self.frontier, self.arrived, self.base, self.xs = list(meta["frontier"]), meta["arrived"], meta["base"], xs
