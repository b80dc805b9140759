"""Stage 2 (and the refine pass) as a stream: sweeps at one shared level with a bounded lag.

Sweep p moves latents from level l_p to l_p - 1 in windows of f latents that all sit at l_p. A
window of sweep p runs as soon as sweep p-1 has written every latent it covers, so each sweep
trails the one before it by at most a window and a stride: the stage holds O(f x levels) latents,
and latents leave as soon as the last sweep has written them. The result equals running each
sweep over the whole video before the next (window placement depends only on latent indices).

The stage is functions over (runner, state, config): ``unified_enter`` and ``unified_run``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from torch import Tensor

from .config import MigaConfig
from .phases import REFINE, REFINE_NOISE, STAGE2
from .queue import Queue
from .runner import WindowRunner
from .windows import unified_window


@dataclass(frozen=True)
class Sweep:
    phase: str  # STAGE2 or REFINE
    level: int  # level of every latent this sweep reads
    offset: int  # window offset of this sweep


@cache
def unified_sweeps(entry_level: int, refine: bool, stride: int, lowest: int) -> tuple[Sweep, ...]:
    """Stage 2 from ``entry_level`` down to ``lowest`` (a grid's identity last step is not run), then
    (optionally) refine: re-noised to one level above the stage-2 entry, as the reference does, and down again."""
    starts = [(STAGE2, entry_level)] + ([(REFINE, entry_level + 1)] if refine else [])
    return tuple(Sweep(ph, top - i, i % stride) for ph, top in starts for i in range(top - lowest + 1))


def sweeps_of(runner: WindowRunner, cfg: MigaConfig) -> tuple[Sweep, ...]:
    """The stage-2 (and refine) sweeps of ``cfg`` on the runner's grid."""
    return unified_sweeps(cfg.stage2_levels, cfg.refine, cfg.write_stride, runner.solver.grid.lowest_step)


@dataclass
class UnifiedState:
    """Stage 2's buffer (latents not yet final, with their levels and ids), and how far each sweep has written."""

    frontier: list[int] = field(default_factory=list)  # ids below frontier[p] are written by sweep p
    arrived: int = 0
    base: int = 0  # id of the queue's head
    queue: Queue = field(default_factory=Queue)


def unified_state(runner: WindowRunner, cfg: MigaConfig) -> UnifiedState:
    """An empty stage: no latent arrived, no sweep written."""
    return UnifiedState(frontier=[0] * len(sweeps_of(runner, cfg)))


def unified_enter(state: UnifiedState, cfg: MigaConfig, latents: list[Tensor]) -> None:
    """Latents leaving stage 1 (at the entry level), next in order."""
    for x in latents:
        state.queue.push(x, cfg.stage2_levels, state.arrived)
        state.arrived += 1


def unified_run(runner: WindowRunner, state: UnifiedState, cfg: MigaConfig, total: int) -> list[tuple[int, Tensor]]:
    """Run every window whose inputs are ready (of a video of ``total`` latents); return the latents that became final."""
    sweeps = sweeps_of(runner, cfg)
    renoise_after = sum(sw.phase == STAGE2 for sw in sweeps) - 1 if cfg.refine else -1  # last stage-2 sweep
    for p, sweep in enumerate(sweeps):
        ready = state.frontier[p - 1] if p else state.arrived
        while state.frontier[p] < total:
            window = unified_window(state.frontier[p], total, cfg.window, cfg.write_stride, sweep.offset)
            if ready <= window.cur[-1]:
                break
            local = window.moved(-state.base)
            state.queue.step(runner, sweep.phase, local)
            if p == renoise_after:  # refine entry: clean latents back to the first refine level
                state.queue.renoise(runner, local.write, sweeps[p + 1].level, REFINE_NOISE)
            state.frontier[p] = window.write.stop
    final = state.frontier[-1] if sweeps else state.arrived
    done = list(zip(range(state.base, final), state.queue.pop(final - state.base)))
    state.base = final
    return done
