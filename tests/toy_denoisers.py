"""Tiny weight-free denoisers for sampler tests: a random mixing network and an analytic one."""

from __future__ import annotations

import torch
from torch import Tensor


class MixingDenoiser:
    """A fixed random map whose output depends on every latent of the window and its timestep."""

    def __init__(self, channels: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> None:
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(channels, channels, generator=g, dtype=dtype) / channels**0.5
        self.calls = 0

    def __call__(self, x: Tensor, t: Tensor, context: object) -> Tensor:
        self.calls += 1
        t = t.to(x.dtype).view(1, 1, -1, 1, 1) / 1000.0
        mixed = torch.einsum("dc,bcfhw->bdfhw", self.w, x)
        context_term = 0.0 if context is None else float(context)
        return torch.tanh(mixed + 0.5 * x.mean(dim=2, keepdim=True) + t) + 0.1 * context_term


class PatternDenoiser:
    """The exact flow velocity for data that is always ``pattern`` ``[C, H, W]``: sampling lands on it."""

    def __init__(self, pattern: Tensor, sigmas: Tensor) -> None:
        self.pattern, self.sigmas = pattern, sigmas

    def __call__(self, x: Tensor, t: Tensor, context: object) -> Tensor:
        sigma = (t.to(torch.float64) / 1000.0).clamp(min=1e-3).view(1, 1, -1, 1, 1).to(x.dtype)
        return (x - self.pattern.unsqueeze(1).to(x.dtype)) / sigma


class ZeroDenoiser:
    """Costs nothing: for bookkeeping, trace and memory measurements."""

    def __call__(self, x: Tensor, t: Tensor, context: object) -> Tensor:
        return torch.zeros_like(x)


class TwoSceneDenoiser:
    """Exact flow velocity for data that is ``+pattern`` (probability ``p``) or ``-pattern``, frame by frame.

    Fresh noise almost always resolves to ``+pattern``; a latent pushed towards ``-pattern`` stays there.
    """

    def __init__(self, pattern: Tensor, p: float = 0.99) -> None:
        self.pattern, self.prior = pattern, float(torch.log(torch.tensor(p / (1 - p))))

    def __call__(self, x: Tensor, t: Tensor, context: object) -> Tensor:
        sigma = (t.to(torch.float64) / 1000.0).clamp(min=1e-3).view(1, 1, -1, 1, 1).to(x.dtype)
        c = self.pattern.unsqueeze(1).to(x.dtype)  # [C, 1, H, W]
        dot = (x * c).sum(dim=(1, 3, 4), keepdim=True)
        x0 = c * torch.tanh((self.prior + (1 - sigma) * dot / sigma**2) / 2)
        return (x - x0) / sigma
