"""Decoded video to pixels, shared by every base model's decoder (no model library needed)."""

from __future__ import annotations

import torch
from torch import Tensor


def to_uint8(video: Tensor) -> Tensor:
    """VAE output ``[B, 3, F, H, W]`` in [-1, 1] -> uint8 ``[B, F, H, W, 3]``."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).contiguous()


def from_uint8(frames: Tensor) -> Tensor:
    """uint8 frames ``[F, H, W, 3]`` -> float32 ``[3, F, H, W]`` in [-1, 1], what a VAE encoder takes (``to_uint8``'s inverse)."""
    return frames.permute(3, 0, 1, 2).float() / 127.5 - 1.0
