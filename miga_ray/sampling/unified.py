"""Stage 2 (and the refine pass) as a stream: sweeps at one shared level with a bounded lag.

Sweep p moves latents from level l_p to l_p - 1 in windows of f latents that all sit at l_p. A
window of sweep p runs as soon as sweep p-1 has written every latent it covers, so each sweep
trails the one before it by at most a window and a stride: the stage holds O(f x levels) latents,
and latents leave as soon as the last sweep has written them. The result equals running each
sweep over the whole video before the next (window placement depends only on latent indices).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .phases import REFINE, REFINE_NOISE, STAGE2
from .queue import Queue
from .runner import WindowRunner
from .windows import unified_window


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
    """Stage 2's buffer (latents not yet final, with their levels and ids), and how far each sweep has written."""

    frontier: list[int] = field(default_factory=list)  # ids below frontier[p] are written by sweep p
    arrived: int = 0
    base: int = 0  # id of the queue's head
    queue: Queue = field(default_factory=Queue)


class UnifiedStage:
    """Latents enter in order at the entry level; clean latents leave in order."""

    def __init__(self, runner: WindowRunner, entry_level: int, refine: bool, window: int, stride: int, total: int) -> None:
        self.runner, self.window, self.stride, self.total = runner, window, stride, total
        self.entry_level = entry_level
        self.sweeps = unified_sweeps(entry_level, refine, stride, runner.solver.grid.lowest_step)
        self.renoise_after = sum(sw.phase == STAGE2 for sw in self.sweeps) - 1 if refine else -1  # last stage-2 sweep
        self.state = UnifiedState(frontier=[0] * len(self.sweeps))

    def push(self, latents: list[Tensor]) -> None:
        """Latents leaving stage 1 (at the entry level), next in order."""
        for x in latents:
            self.state.queue.push(x, self.entry_level, self.state.arrived)
            self.state.arrived += 1

    def run(self) -> list[tuple[int, Tensor]]:
        """Run every window whose inputs are ready; return the latents that became final."""
        st = self.state
        for p, sweep in enumerate(self.sweeps):
            ready = st.frontier[p - 1] if p else st.arrived
            while st.frontier[p] < self.total:
                window = unified_window(st.frontier[p], self.total, self.window, self.stride, sweep.offset)
                if ready <= window.cur[-1]:
                    break
                local = window.moved(-st.base)
                st.queue.step(self.runner, sweep.phase, local)
                if p == self.renoise_after:  # refine entry: clean latents back to the first refine level
                    st.queue.renoise(self.runner, local.write, self.sweeps[p + 1].level, REFINE_NOISE)
                st.frontier[p] = window.write.stop
        final = st.frontier[-1] if self.sweeps else st.arrived
        done = list(zip(range(st.base, final), st.queue.pop(final - st.base)))
        st.base = final
        return done

    def held(self) -> list[Tensor]:
        return self.state.queue.xs
