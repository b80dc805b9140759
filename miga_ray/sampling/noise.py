"""Counter-based noise: every random tensor is a pure function of (seed, purpose, latent, level, variant).

No generator state is carried between draws, so the output does not depend on which device ran
a piece of work, on the order of work, or on where a render was stopped and resumed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor


def noise_key(seed: int, purpose: str, index: int, level: int = 0, variant: int = 0) -> int:
    """A 63-bit generator seed for one draw, from a cryptographic hash of its coordinates."""
    digest = hashlib.blake2b(f"{seed}|{purpose}|{index}|{level}|{variant}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class NoiseSource:
    """Gaussian latents ``[B, C, H, W]`` keyed by their coordinates, drawn in float32 on the CPU."""

    def __init__(self, seed: int, shape: Sequence[int], dtype: torch.dtype, device: torch.device | str) -> None:
        self.seed, self.shape, self.dtype, self.device = int(seed), tuple(shape), dtype, torch.device(device)

    def draw(self, purpose: str, index: int, level: int = 0, variant: int = 0) -> Tensor:
        """One latent frame of noise ``[B, C, H, W]``."""
        g = torch.Generator().manual_seed(noise_key(self.seed, purpose, index, level, variant))
        return torch.randn(self.shape, generator=g, dtype=torch.float32).to(self.device, self.dtype)

    def frames(self, purpose: str, indices: Sequence[int], levels: Sequence[int], variant: int = 0) -> Tensor:
        """Noise for several latent frames, stacked as ``[B, C, F, H, W]``."""
        return torch.stack([self.draw(purpose, i, l, variant) for i, l in zip(indices, levels)], dim=2)
