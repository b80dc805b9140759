"""The toy checkpoint the render tests use (``MIGA_TEST_TOY`` swaps in a candidate) and its frame counts."""

from __future__ import annotations

import os
from functools import cache

from miga_ray.models.decode import frames_of_latents, latents_for_frames
from miga_ray.models.registry import load_model

TOY = os.environ.get("MIGA_TEST_TOY", "toy")


@cache
def toy_temporal() -> int:
    """Frames per latent of the toy model's VAE (1 for the shipped per-frame VAE)."""
    return load_model(TOY, device="cpu").vae_scale[0]


def toy_latents(frames: int) -> int:
    """Latents the toy model renders for ``frames`` frames."""
    return latents_for_frames(frames, toy_temporal())


def toy_frames(latents: int) -> int:
    """Frames ``latents`` toy latents decode to."""
    return frames_of_latents(latents, toy_temporal())
