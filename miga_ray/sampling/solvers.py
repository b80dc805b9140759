"""First-order per-latent solver steps on a level grid: Euler for flow matching, DDIM for eps/v models.

Each latent of a window may sit at its own level; a step takes every given latent one level down.
"""

from __future__ import annotations

from typing import Literal, Protocol

from torch import Tensor

from .grid import LevelGrid


def _per_frame(values: Tensor, levels: Tensor, like: Tensor) -> Tensor:
    """Gather one grid value per latent frame, shaped to broadcast over ``[B, C, F, H, W]``."""
    return values[levels.cpu()].to(device=like.device, dtype=like.dtype).view(1, 1, -1, 1, 1)


class Solver(Protocol):
    """A step rule over a level grid."""

    grid: LevelGrid
    stochastic: bool

    def step(self, x: Tensor, out: Tensor, levels: Tensor, noise: Tensor | None = None) -> Tensor:
        """Latents ``x`` at ``levels`` (one per frame) and model output -> latents one level lower."""
        ...

    def add_noise(self, x0: Tensor, noise: Tensor, levels: Tensor) -> Tensor:
        """Clean latents -> latents at ``levels`` (one per frame)."""
        ...


class _GridNoising:
    grid: LevelGrid

    def add_noise(self, x0: Tensor, noise: Tensor, levels: Tensor) -> Tensor:
        return _per_frame(self.grid.signal, levels, x0) * x0 + _per_frame(self.grid.sigmas, levels, x0) * noise


class FlowEuler(_GridNoising):
    """Euler on a rectified-flow grid; the model predicts the velocity ``eps - x0``."""

    stochastic = False

    def __init__(self, grid: LevelGrid) -> None:
        if grid.kind != "flow":
            raise ValueError(f"FlowEuler needs a flow grid, got kind={grid.kind!r}")
        self.grid = grid

    def step(self, x: Tensor, out: Tensor, levels: Tensor, noise: Tensor | None = None) -> Tensor:
        s = self.grid.sigmas
        return x + (_per_frame(s, levels - 1, x) - _per_frame(s, levels, x)) * out


class DDIM(_GridNoising):
    """DDIM (Song et al.) with configurable eta; the model predicts ``eps`` or ``v``."""

    def __init__(self, grid: LevelGrid, eta: float = 0.0, prediction: Literal["eps", "v"] = "eps") -> None:
        if grid.kind != "ddpm":
            raise ValueError(f"DDIM needs a ddpm grid, got kind={grid.kind!r}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}")
        self.grid, self.eta, self.prediction = grid, eta, prediction
        self.stochastic = eta > 0

    def step(self, x: Tensor, out: Tensor, levels: Tensor, noise: Tensor | None = None) -> Tensor:
        a = _per_frame(self.grid.signal, levels, x) ** 2
        a_prev = _per_frame(self.grid.signal, levels - 1, x) ** 2
        if self.prediction == "eps":
            eps = out
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        else:
            eps = a.sqrt() * out + (1 - a).sqrt() * x
            x0 = a.sqrt() * x - (1 - a).sqrt() * out
        sigma = self.eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
        x_prev = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
        if self.stochastic:
            if noise is None:
                raise ValueError("DDIM with eta > 0 needs step noise")
            x_prev = x_prev + sigma * noise
        return x_prev
