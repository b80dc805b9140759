"""The toy checkpoint the render tests use (``MIGA_TEST_TOY`` swaps in a candidate) and its frame counts."""

from __future__ import annotations

import os
from functools import cache

from miga_ray.models.decode import frames_of_latents, latents_for_frames
from miga_ray.models.registry import load_model

TOY = os.environ.get("MIGA_TEST_TOY", "toy")


@cache
def toy_temporal(source: str = TOY) -> int:
    """Frames per latent of a toy model's VAE (1 for the shipped per-frame VAE)."""
    return load_model(source, device="cpu").vae_scale[0]


def toy_latents(frames: int, source: str = TOY) -> int:
    """Latents the toy model ``source`` renders for ``frames`` frames."""
    return latents_for_frames(frames, toy_temporal(source))


def toy_frames(latents: int, source: str = TOY) -> int:
    """Frames ``latents`` latents of the toy model ``source`` decode to."""
    return frames_of_latents(latents, toy_temporal(source))
