"""FIFO-Diffusion (Kim et al., 2024) as a streaming engine: the baseline MIGA is measured against.

A diagonal queue holds T latents, position q at level q + 1. Each iteration runs windows of f
latents over it (all reading the state from before the iteration), steps every latent one level,
emits the now-clean head and appends pure noise at the tail. With lookahead, windows sit at
stride f // 2 and write only their back part, with already-clean latents in front of the head.

The phases are functions over (runner, state, config); ``FifoEngine`` only holds them together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import FifoConfig
from .engine import StreamingEngine, StreamState, emit, sample_base_clip
from .phases import FIFO, INIT_NOISE
from .queue import Queue
from .reflection import entry_latent
from .runner import WindowRunner
from .windows import fifo_windows


@dataclass
class FifoState(StreamState):
    """FIFO-Diffusion's queue: the diagonal and where it stands in the video."""

    started: bool = False
    queue: Queue = field(default_factory=Queue)  # prefix (clean) + diagonal, the diagonal's head at position prefix


def layout(cfg: FifoConfig) -> tuple[int, int]:
    """(latents each window writes, clean latents ahead of the diagonal's head)."""
    f = cfg.window
    stride = f // 2 if cfg.lookahead else f
    return stride, f - stride if cfg.lookahead else 0


def start(runner: WindowRunner, state: FifoState, cfg: FifoConfig) -> None:
    """A clip re-noised onto the diagonal, its last latent at the tail: the base clip (whose first latent
    fills the lower levels, as in the reference), or the seed's known latents (``sampling.seed``).

    Without a seed the diagonal's head is latent ``-(T - f)``: the first T - f latents are warm-up,
    never emitted. With one the whole diagonal is known, and the first new latent enters behind it.
    """
    T, f = runner.solver.grid.num_levels, cfg.window
    _, prefix = layout(cfg)
    seed = runner.seed
    base = sample_base_clip(runner, f) if seed is None else []
    first = (f if seed is None else seed.count) - T - prefix
    for pos, level in enumerate([0] * prefix + list(range(1, T + 1))):
        index = first + pos
        if seed is not None:
            x0 = seed.hold(runner.solver, runner.noise, index, level)
        else:
            x0 = base[min(f - 1, max(0, index))]
            if level:
                x0 = runner.noised(x0, INIT_NOISE, index, level)
        state.queue.push(x0, level, index)
    state.started = True


def seed_depth(cfg: FifoConfig, num_levels: int) -> int:
    """Known latents a seeded start places: the diagonal and the clean ones in front of it."""
    return num_levels + layout(cfg)[1]


def iterate(runner: WindowRunner, state: FifoState, cfg: FifoConfig) -> None:
    """Every diagonal latent one level down; the clean head is emitted (after the warm-up), noise enters at the tail."""
    T = runner.solver.grid.num_levels
    stride, prefix = layout(cfg)
    queue = state.queue
    for window in fifo_windows(prefix, T, cfg.window, stride):
        queue.step(runner, FIFO, window)
    head = queue.ids[prefix]
    emit(state, head, queue.xs[prefix])
    queue.pop(1)
    queue.push(entry_latent(runner, None, head + T, 0), T, head + T)


class FifoEngine(StreamingEngine):
    """Streams ``num_latents`` clean latents through FIFO-Diffusion."""

    state: FifoState

    def __init__(
        self,
        runner: WindowRunner,
        config: FifoConfig,
        num_latents: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        config.validate(runner.solver.grid.num_levels)
        super().__init__(runner, num_latents, dtype, device, FifoState())
        self.cfg = config

    def _advance(self) -> None:
        """The start, then one diagonal iteration per call."""
        (iterate if self.state.started else start)(self.runner, self.state, self.cfg)

    @staticmethod
    def seed_depth(config: FifoConfig, num_levels: int) -> int:
        """How many of a seed's last latents the engine reads (``seed_depth``)."""
        return seed_depth(config, num_levels)

    def held_latents(self) -> int:
        return len(self.state.queue) + len(self.state.out)
