"""FIFO-Diffusion (Kim et al., 2024) as a streaming engine: the baseline MIGA is measured against.

A diagonal queue holds T latents, position q at level q + 1. Each iteration runs windows of f
latents over it (all reading the state from before the iteration), steps every latent one level,
emits the now-clean head and appends pure noise at the tail. With lookahead, windows sit at
stride f // 2 and write only their back part, with already-clean latents in front of the head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import FifoConfig
from .engine import StreamingEngine, StreamState, sample_base_clip
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
        self.T = runner.solver.grid.num_levels
        config.validate(self.T)
        super().__init__(runner, num_latents, dtype, device, FifoState())
        self.cfg = config
        f = config.window
        self.stride = f // 2 if config.lookahead else f  # latents each window writes
        self.prefix = f - self.stride if config.lookahead else 0  # clean latents ahead of the head

    def _advance(self) -> None:
        if not self.state.started:
            self._start()
            return
        self._iterate()

    def _start(self) -> None:
        """Base clip re-noised onto the diagonal: its first latent fills the lower levels, as in the reference.

        The diagonal's head is latent ``-(T - f)``: the first T - f latents are warm-up, never emitted.
        """
        f = self.cfg.window
        base = sample_base_clip(self.runner, f)
        first = -(self.T - f) - self.prefix
        for pos, level in enumerate([0] * self.prefix + list(range(1, self.T + 1))):
            index = first + pos
            x0 = base[min(f - 1, max(0, index))]
            if level:
                eps = self.runner.noise.draw(INIT_NOISE, index, level)
                x0 = self.runner.solver.add_noise(x0.unsqueeze(2), eps.unsqueeze(2), torch.tensor([level])).squeeze(2)
            self.state.queue.push(x0, level, index)
        self.state.started = True

    def _iterate(self) -> None:
        """Every diagonal latent one level down; the clean head is emitted (after the warm-up), noise enters at the tail."""
        queue = self.state.queue
        for window in fifo_windows(self.prefix, self.T, self.cfg.window, self.stride):
            queue.step(self.runner, FIFO, window)
        head = queue.ids[self.prefix]
        if head >= 0:
            self._emit(head, queue.xs[self.prefix])
        queue.pop(1)
        queue.push(entry_latent(self.runner.solver, self.runner.noise, None, head + self.T, 0), self.T, head + self.T)

    def held_latents(self) -> int:
        return len(self.state.queue) + len(self.state.out)
