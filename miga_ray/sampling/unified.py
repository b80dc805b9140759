"""Stage 2 (and the refine pass) as a stream: sweeps at one shared level with a bounded lag.

Sweep p moves latents from level l_p to l_p - 1 in windows of f latents that all sit at l_p. A
window of sweep p runs as soon as sweep p-1 has written every latent it covers, so each sweep
trails the one before it by at most a window and a stride: the stage holds O(f x levels) latents,
and latents leave as soon as the last sweep has written them. The result equals running each
sweep over the whole video before the next (window placement depends only on latent indices).
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class UnifiedState:
    """Stage 2's buffer: latents from id ``base`` on, and how far each sweep has written."""

    frontier: list[int] = field(default_factory=list)  # ids below frontier[p] are written by sweep p
    arrived: int = 0
    base: int = 0  # id of xs[0]
    xs: list[Tensor] = field(default_factory=list)


class UnifiedStage:
    """Latents enter in order at the entry level; clean latents leave in order."""

    def __init__(self, runner: WindowRunner, entry_level: int, refine: bool, window: int, stride: int, total: int) -> None:
        self.runner, self.window, self.stride, self.total = runner, window, stride, total
        self.sweeps = unified_sweeps(entry_level, refine, stride, runner.solver.grid.lowest_step)
        self.renoise_after = sum(sw.phase == STAGE2 for sw in self.sweeps) - 1 if refine else -1  # last stage-2 sweep
        self.state = UnifiedState(frontier=[0] * len(self.sweeps))

    def push(self, latents: list[Tensor]) -> None:
        """Latents leaving stage 1 (at the entry level), next in order."""
        self.state.xs.extend(latents)
        self.state.arrived += len(latents)

    def run(self) -> list[tuple[int, Tensor]]:
        """Run every window whose inputs are ready; return the latents that became final."""
        for p, sweep in enumerate(self.sweeps):
            ready = self.state.frontier[p - 1] if p else self.state.arrived
            while self.state.frontier[p] < self.total:
                a, b = block_at(self.state.frontier[p], self.total, self.window, self.stride, sweep.offset)
                end = min(self.total, a + self.window)
                if ready < end:
                    break
                self._window(p, sweep, a, b, end)
        final = self.state.frontier[-1] if self.sweeps else self.state.arrived
        done = [(self.state.base + i, x) for i, x in enumerate(self.state.xs[: final - self.state.base])]
        del self.state.xs[: final - self.state.base]
        self.state.base = final
        return done

    def _window(self, p: int, sweep: Sweep, a: int, b: int, end: int) -> None:
        ids = list(range(a, end))
        out = self.runner(sweep.phase, [self.state.xs[i - self.state.base] for i in ids], [sweep.level] * len(ids), ids, [i < b for i in ids])
        if p == self.renoise_after:
            out = self._renoise(ids[: b - a], out)
        self.state.xs[a - self.state.base : b - self.state.base] = out
        self.state.frontier[p] = b

    def _renoise(self, ids: list[int], clean: list[Tensor]) -> list[Tensor]:
        """Refine entry: clean latents back to the first refine sweep's level with their own noise."""
        level = self.sweeps[self.renoise_after + 1].level
        x0 = torch.stack(clean, dim=2)
        eps = self.runner.noise.frames(REFINE_NOISE, ids, [level] * len(ids))
        return list(self.runner.solver.add_noise(x0, eps, torch.full((len(ids),), level)).unbind(dim=2))

    def held(self) -> list[Tensor]:
        return self.state.xs
