"""FIFO-Diffusion (Kim et al., 2024) as a streaming engine: the baseline MIGA is measured against.

A diagonal queue holds T latents, position q at level q + 1. Each iteration runs windows of f
latents over it (all reading the state from before the iteration), steps every latent one level,
emits the now-clean head and appends pure noise at the tail. With lookahead, windows sit at
stride f // 2 and write only their back part, with already-clean latents in front of the head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .config import FifoConfig
from .engine import StreamingEngine, sample_base_clip, stack_frames
from .phases import FIFO, INIT_NOISE
from .reflection import entry_latent
from .runner import WindowRunner


class FifoEngine(StreamingEngine):
    """Streams ``num_latents`` clean latents through FIFO-Diffusion."""

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
        super().__init__(runner, num_latents, dtype, device)
        self.cfg = config
        f = config.window
        self.stride = f // 2 if config.lookahead else f  # latents each window writes
        self.prefix = f - self.stride if config.lookahead else 0  # clean latents ahead of the head
        self.started = False
        self.xs: list[Tensor] = []  # prefix + diagonal, head of the diagonal at position self.prefix
        self.head = -(self.T - f)  # latent index at the head; the first T - f are warm-up, not emitted

    @property
    def levels(self) -> list[int]:
        return [0] * self.prefix + list(range(1, self.T + 1))

    def _advance(self) -> None:
        if not self.started:
            self._start()
            return
        self._iterate()

    def _start(self) -> None:
        """Base clip re-noised onto the diagonal: its first latent fills the lower levels, as in the reference."""
        f = self.cfg.window
        base = sample_base_clip(self.runner, f)
        for pos, level in enumerate(self.levels):
            index = self.head - self.prefix + pos
            x0 = base[min(f - 1, max(0, index))]
            if level == 0:
                self.xs.append(x0)
                continue
            eps = self.runner.noise.draw(INIT_NOISE, index, level)
            self.xs.append(self.runner.solver.add_noise(x0.unsqueeze(2), eps.unsqueeze(2), torch.tensor([level])).squeeze(2))
        self.started = True

    def _blocks(self) -> list[tuple[int, int]]:
        """Written blocks over the diagonal, tail first; each window is the f latents ending at its block's end."""
        p, s = self.prefix, self.stride
        return [(a, min(a + s, p + self.T)) for a in reversed(range(p, p + self.T, s))]

    def _iterate(self) -> None:
        f, levels = self.cfg.window, self.levels
        new = list(self.xs)
        first = self.head - self.prefix
        for a, b in self._blocks():
            span = range(b - f, b)
            out = self.runner(FIFO, [self.xs[j] for j in span], [levels[j] for j in span], [first + j for j in span], [j >= a for j in span])
            new[a:b] = out
        if self.head >= 0:
            self._emit(self.head, new[self.prefix])
        tail = self.head + self.T
        self.xs = new[1:] + [entry_latent(self.runner.solver, self.runner.noise, None, tail, 0)]
        self.head += 1

    def held_latents(self) -> int:
        return len(self.xs) + len(self._out)

    def _state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return {"queue": stack_frames(self.xs, self.shape, self.dtype)}, {"config": self.cfg.to_dict(), "started": self.started, "head": self.head}

    def _load(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        if meta["config"] != self.cfg.to_dict():
            raise ValueError(f"state: the checkpoint's FIFO config {meta['config']} differs from this engine's {self.cfg.to_dict()}")
        self.started, self.head = meta["started"], meta["head"]
        self.xs = self._frames(tensors["queue"])
