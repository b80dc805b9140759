"""Decoded video to pixels, shared by every base model's decoder (no model library needed)."""

from __future__ import annotations

import torch
from torch import Tensor


def to_uint8(video: Tensor) -> Tensor:
    """VAE output ``[B, 3, F, H, W]`` in [-1, 1] -> uint8 ``[B, F, H, W, 3]``."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).contiguous()
