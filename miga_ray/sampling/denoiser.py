"""The one door through which a base model enters the sampler, and classifier-free guidance.

A base model is anything that maps latents ``[B, C, F, H, W]``, one model timestep per latent
frame ``[F]`` and a context (text embeddings, opaque to the sampler) to its raw output of the
same shape as the latents (noise, velocity or flow, whatever its scheduler expects).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Denoiser(Protocol):
    """A base video model: latents ``[B, C, F, H, W]``, timesteps ``[F]`` -> output like latents."""

    def __call__(self, latents: Tensor, timesteps: Tensor, context: Any) -> Tensor: ...


@dataclass
class Conditioning:
    """What the model is conditioned on: a positive context, an optional negative one, a CFG scale.

    Contexts are whatever the denoiser accepts (for diffusers Wan: text embeddings ``[B, L, D]``).
    With ``negative=None`` or ``scale == 1`` the model is called once per window.
    """

    positive: Any
    negative: Any = None
    scale: float = 1.0

    @property
    def guided(self) -> bool:
        return self.negative is not None and self.scale != 1.0


def guided_forward(model: Denoiser, latents: Tensor, timesteps: Tensor, cond: Conditioning) -> Tensor:
    """Run the model once (or twice under classifier-free guidance) and combine: the only CFG in miga-ray.

    When both contexts are tensors of the same shape, the two branches run as one batch of 2B.
    """
    if not cond.guided:
        return model(latents, timesteps, cond.positive)
    pos, neg = cond.positive, cond.negative
    if isinstance(pos, Tensor) and isinstance(neg, Tensor) and pos.shape == neg.shape:
        out = model(torch.cat([latents, latents]), timesteps, torch.cat([pos, neg]))
        out_pos, out_neg = out.chunk(2)
    else:
        out_pos = model(latents, timesteps, pos)
        out_neg = model(latents, timesteps, neg)
    return out_neg + cond.scale * (out_pos - out_neg)
