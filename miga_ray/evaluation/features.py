"""Per-frame feature extractors for subject and background consistency.

VBench uses DINO ViT-B/16 (subject) and CLIP ViT-B/32 (background). Both load here from a local
diffusers/transformers-style directory when the user has the weights (``facebook/dino-vitb16``,
``openai/clip-vit-base-patch32`` snapshots); nothing is downloaded. Without them, the weight-free
fallback ``pixels`` compares 32x32 colour thumbnails, centred per frame: it tracks layout and colour
change, not semantics, and every output says which extractor produced each number.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class FeatureExtractor(Protocol):
    name: str

    def __call__(self, frames: np.ndarray) -> Tensor:
        """uint8 ``[F, H, W, 3]`` -> L2-normalised features ``[F, D]``."""
        ...


def _to_tensor(frames: np.ndarray, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@dataclass(frozen=True)
class PixelFeatures:
    """Weight-free fallback: a 32x32 colour thumbnail per frame, mean-centred, as one vector. Instances are
    equal, so a video scored with it for subject and background computes it once."""

    name: ClassVar[str] = "pixels-32 (weight-free fallback)"

    def __call__(self, frames: np.ndarray) -> Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous().float() / 255.0
        x = F.adaptive_avg_pool2d(x, 32).flatten(1)
        return F.normalize(x - x.mean(dim=1, keepdim=True), dim=1)


class DinoFeatures:
    """DINO ViT-B/16 CLS features (VBench's subject-consistency backbone), from a local directory."""

    name = "dino-vitb16"

    def __init__(self, path: str | Path, batch: int = 16) -> None:
        from transformers import ViTModel

        self.model, self.batch = ViTModel.from_pretrained(str(path), add_pooling_layer=False).eval(), batch

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> Tensor:
        x = _to_tensor(frames, 224, IMAGENET_MEAN, IMAGENET_STD)
        feats = [self.model(pixel_values=b).last_hidden_state[:, 0] for b in x.split(self.batch)]
        return F.normalize(torch.cat(feats), dim=1)


class ClipFeatures:
    """CLIP ViT-B/32 image embeddings (VBench's background-consistency backbone), from a local directory."""

    name = "clip-vit-b32"

    def __init__(self, path: str | Path, batch: int = 16) -> None:
        from transformers import CLIPVisionModelWithProjection

        self.model, self.batch = CLIPVisionModelWithProjection.from_pretrained(str(path)).eval(), batch

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> Tensor:
        x = _to_tensor(frames, 224, CLIP_MEAN, CLIP_STD)
        return F.normalize(torch.cat([self.model(pixel_values=b).image_embeds for b in x.split(self.batch)]), dim=1)


@functools.lru_cache(maxsize=4)
def feature_extractor(kind: str, path: str | Path | None) -> FeatureExtractor:
    """``dino`` or ``clip`` from ``path`` when given, else the weight-free fallback; loaded once per process
    (a batch worker evaluates every job it renders with the same weights)."""
    if path is None:
        return PixelFeatures()
    if not Path(path).is_dir():
        raise ValueError(f"--{kind}: {path} is not a directory with {kind} weights")
    return DinoFeatures(path) if kind == "dino" else ClipFeatures(path)
