"""The level grid: T+1 noise states of a base model's scheduler, level T = pure noise, level 0 = clean.

A model call on a latent at level k (1..T) uses ``timesteps[k]``; one solver step takes it to
level k-1. Every latent in a window may sit at its own level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

GridKind = Literal["flow", "ddpm"]


@dataclass(frozen=True)
class LevelGrid:
    """Noise state per level, in float64 on the CPU (moved to the latents' device when used).

    ``kind == "flow"``: ``x_k = (1 - sigma_k) x_0 + sigma_k eps`` (rectified flow, the Wan family).
    ``kind == "ddpm"``: ``x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps`` (VideoCrafter2 and kin),
    with ``sigma_k`` holding ``sqrt(1 - abar_k)`` for a uniform look at both.
    """

    kind: GridKind
    timesteps: Tensor  # [T+1] model timestep per level
    signal: Tensor  # [T+1] coefficient of x_0 per level
    sigmas: Tensor  # [T+1] coefficient of eps per level

    def __post_init__(self) -> None:
        n = self.timesteps.shape[0]
        if n < 2 or self.signal.shape != (n,) or self.sigmas.shape != (n,):
            raise ValueError("LevelGrid: timesteps, signal and sigmas must be 1-D of equal length >= 2")

    @property
    def num_levels(self) -> int:
        """T: the number of solver steps from pure noise to clean."""
        return self.timesteps.shape[0] - 1

    @property
    def lowest_step(self) -> int:
        """The lowest level whose step changes a latent: 2 where levels 1 and 0 share one noise state
        (MIGA's VideoCrafter2 grid, whose last DDIM step is the identity), else 1."""
        same = bool(self.signal[1] == self.signal[0]) and bool(self.sigmas[1] == self.sigmas[0])
        return 2 if same and self.num_levels >= 2 else 1


def flow_grid(num_levels: int, shift: float = 1.0, num_train_timesteps: int = 1000) -> LevelGrid:
    """Rectified-flow grid with the usual time shift ``s' = shift*s / (1 + (shift-1)*s)`` (Wan: shift 5)."""
    if num_levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    s = torch.linspace(0.0, 1.0, num_levels + 1, dtype=torch.float64)
    return flow_grid_from_sigmas(shift * s / (1 + (shift - 1) * s), num_train_timesteps)


def flow_grid_from_sigmas(sigmas: Tensor, num_train_timesteps: int = 1000) -> LevelGrid:
    """Flow grid from explicit sigmas ordered clean (0) to noisy (T), e.g. taken from a diffusers scheduler."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if sigmas[0] != 0 or bool((sigmas[1:] <= sigmas[:-1]).any()):
        raise ValueError("flow sigmas must start at 0 and increase strictly with the level")
    return LevelGrid("flow", sigmas * num_train_timesteps, 1.0 - sigmas, sigmas.clone())


def ddpm_grid(
    num_levels: int,
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    beta_schedule: Literal["scaled_linear", "linear"] = "scaled_linear",
) -> LevelGrid:
    """DDIM sub-grid of a DDPM schedule with uniform spacing (LVDM / VideoCrafter2 defaults).

    Level k >= 1 is training step ``(k-1)*c + 1`` with ``c = num_train_timesteps // T``; level 0 is
    training step 0, the state DDIM's last step lands on.
    """
    if not 1 <= num_levels <= num_train_timesteps:
        raise ValueError(f"num_levels must be in [1, {num_train_timesteps}], got {num_levels}")
    if beta_schedule == "scaled_linear":
        betas = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_train_timesteps, dtype=torch.float64) ** 2
    else:
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    abar = torch.cumprod(1.0 - betas, dim=0)
    c = num_train_timesteps // num_levels
    steps = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(num_levels) * c + 1])
    a = abar[steps]
    return LevelGrid("ddpm", steps.to(torch.float64), a.sqrt(), (1.0 - a).sqrt())
