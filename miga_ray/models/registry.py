"""Model options by name: ``load_model(name_or_path)`` for the render layer and the command line.

A name is one of ``MODELS``; a path ending in ``.ckpt`` or ``.safetensors`` is a VideoCrafter2
checkpoint; anything else is a diffusers Wan pipeline directory or hub id. A
directory may carry ``miga.json`` (``{"resolution": [H, W], "window": n}``) with its defaults;
without one, Wan2.1's apply (480x832, 21 latents per window).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from ..sampling.denoiser import Denoiser
from ..sampling.grid import LevelGrid
from . import TOY_CHECKPOINTS, TOY_DIR
from .decode import StreamingDecoder
from .vc2 import load_vc2, random_vc2
from .vc2.autoencoder import FrameDecoder
from .wan import load_wan, random_wan

WAN21_DEFAULTS = ((480, 832), 21)
VC2_SUFFIXES = (".ckpt", ".safetensors")


class LoadedModel(Protocol):
    """What a render needs from a base model."""

    denoiser: Denoiser
    latent_channels: int
    vae_scale: tuple[int, int]  # (temporal, spatial) pixels per latent
    default_resolution: tuple[int, int]  # (height, width) in pixels
    default_window: int  # latents per model call
    encode_step: int  # encode_video takes 1 + k x encode_step frames
    device: torch.device
    dtype: torch.dtype

    def encode_prompt(self, prompts: list[str], negative: str | None = None) -> tuple[Tensor, Tensor]: ...

    def grid(self, num_levels: int, shift: float | None = None) -> LevelGrid: ...

    def decoder(self) -> StreamingDecoder | FrameDecoder: ...

    def encode_video(self, frames: Tensor) -> Tensor: ...  # uint8 [n, H, W, 3] -> sampler latents [1, C, latents, h, w]


@dataclass(frozen=True)
class ModelOption:
    """A named model and how to load it onto a device in a dtype."""

    description: str
    load: Callable[[torch.device, torch.dtype], LoadedModel]


def pipeline_loader(source: str) -> Callable[[torch.device, torch.dtype], LoadedModel]:
    """Loader of a diffusers Wan pipeline directory or hub id, with its defaults (see the module doc)."""

    def load(device: torch.device, dtype: torch.dtype) -> LoadedModel:
        resolution, window = _defaults(source)
        return load_wan(source, device, dtype, resolution, window)

    return load


MODELS: dict[str, ModelOption] = {
    "toy": ModelOption("tiny Wan-architecture model trained on one large circle of the toy world, one noise level per clip (shipped)", pipeline_loader(str(TOY_DIR))),
    "toy-mixed": ModelOption(
        "the toy model's control: the same recipe trained on FIFO's mixed-level windows (shipped)",
        pipeline_loader(str(TOY_CHECKPOINTS["toy-mixed"])),
    ),
    "wan2.1-1.3b": ModelOption("Wan2.1 text-to-video 1.3B", pipeline_loader("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")),
    "wan2.1-1.3b-random": ModelOption(
        "Wan2.1-1.3B architecture, random weights, random text embeddings (speed/memory only)", random_wan
    ),
    "vc2-random": ModelOption(
        "VideoCrafter2 architecture, random weights, random text embeddings (speed/memory only)", random_vc2
    ),
}


def default_device() -> torch.device:
    """The first GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    name_or_path: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> LoadedModel:
    """Load a model by name, checkpoint file, directory or hub id; dtype defaults to bfloat16 on GPU, float32 elsewhere."""
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    option = MODELS.get(name_or_path)
    if option is not None:
        load = option.load
    elif name_or_path.endswith(VC2_SUFFIXES):
        load = functools.partial(load_vc2, name_or_path)
    else:
        load = pipeline_loader(name_or_path)
    return load(device, dtype)


def _defaults(source: str) -> tuple[tuple[int, int], int]:
    """Resolution and window from a directory's ``miga.json``, else Wan2.1's."""
    path = Path(source) / "miga.json"
    if not path.is_file():
        return WAN21_DEFAULTS
    meta = json.loads(path.read_text())
    return (int(meta["resolution"][0]), int(meta["resolution"][1])), int(meta["window"])
