"""FIFO-Diffusion (Kim et al., 2024) as a streaming engine: the baseline MIGA is measured against.

A diagonal queue holds T latents, position q at level q + 1. Each iteration runs windows of f
latents over it (all reading the state from before the iteration), steps every latent one level,
emits the now-clean head and appends pure noise at the tail. With lookahead, windows sit at
stride f // 2 and write only their back part, with already-clean latents in front of the head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .config import FifoConfig
from .engine import StreamingEngine, StreamState, sample_base_clip
from .phases import FIFO, INIT_NOISE
from .reflection import entry_latent
from .runner import WindowRunner


@dataclass
class FifoState(StreamState):
    """FIFO-Diffusion's queue: the diagonal and where it stands in the video."""

    started: bool = False
    head: int = 0  # latent index at the head of the diagonal
    xs: list[Tensor] = field(default_factory=list)  # prefix + diagonal, head of the diagonal at position prefix


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
        super().__init__(runner, num_latents, dtype, device, FifoState(head=-(self.T - config.window)))  # the first T - f are warm-up
        self.cfg = config
        f = config.window
        self.stride = f // 2 if config.lookahead else f  # latents each window writes
        self.prefix = f - self.stride if config.lookahead else 0  # clean latents ahead of the head

    @property
    def levels(self) -> list[int]:
        return [0] * self.prefix + list(range(1, self.T + 1))

    def _advance(self) -> None:
        if not self.state.started:
            self._start()
            return
        self._iterate()

    def _start(self) -> None:
        """Base clip re-noised onto the diagonal: its first latent fills the lower levels, as in the reference."""
        f = self.cfg.window
        base = sample_base_clip(self.runner, f)
        for pos, level in enumerate(self.levels):
            index = self.state.head - self.prefix + pos
            x0 = base[min(f - 1, max(0, index))]
            if level == 0:
                self.state.xs.append(x0)
                continue
            eps = self.runner.noise.draw(INIT_NOISE, index, level)
            self.state.xs.append(self.runner.solver.add_noise(x0.unsqueeze(2), eps.unsqueeze(2), torch.tensor([level])).squeeze(2))
        self.state.started = True

    def _blocks(self) -> list[tuple[int, int]]:
        """Written blocks over the diagonal, tail first; each window is the f latents ending at its block's end."""
        p, s = self.prefix, self.stride
        return [(a, min(a + s, p + self.T)) for a in reversed(range(p, p + self.T, s))]

    def _iterate(self) -> None:
        f, levels = self.cfg.window, self.levels
        new = list(self.state.xs)
        first = self.state.head - self.prefix
        for a, b in self._blocks():
            span = range(b - f, b)
            out = self.runner(FIFO, [self.state.xs[j] for j in span], [levels[j] for j in span], [first + j for j in span], [j >= a for j in span])
            new[a:b] = out
        if self.state.head >= 0:
            self._emit(self.state.head, new[self.prefix])
        tail = self.state.head + self.T
        self.state.xs = new[1:] + [entry_latent(self.runner.solver, self.runner.noise, None, tail, 0)]
        self.state.head += 1

    def held_latents(self) -> int:
        return len(self.state.xs) + len(self.state.out)
