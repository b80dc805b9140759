"""One serialiser for every engine's state: a dataclass of latent frames and JSON values, never pickle.

A field typed ``Tensor`` (or ``Tensor | None``) is one latent frame ``[B, C, H, W]``; a field typed
``list[Tensor]`` is a list of latent frames, stored stacked on dim 2 as ``[B, C, n, H, W]`` (n may be
0); a field that is itself a state dataclass nests under its name (tensors ``name.field``); every
other field is a JSON value. Tensors go to a flat dict for safetensors, the rest to a JSON dict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar, get_type_hints

import torch
from torch import Tensor

S = TypeVar("S")
FRAME, FRAMES, NESTED, VALUE = "frame", "frames", "nested", "value"


def _kind(hint: Any) -> str:
    if hint is Tensor or hint == (Tensor | None):
        return FRAME
    if hint == list[Tensor]:
        return FRAMES
    return NESTED if dataclasses.is_dataclass(hint) else VALUE


def _kinds(cls: type) -> dict[str, tuple[str, Any]]:
    hints = get_type_hints(cls)
    return {f.name: (_kind(hints[f.name]), hints[f.name]) for f in dataclasses.fields(cls)}


def stack_frames(frames: Sequence[Tensor], like_shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    """Latent frames ``[B, C, H, W]`` -> one ``[B, C, n, H, W]`` CPU tensor (n may be 0) for a checkpoint."""
    if not frames:
        b, c, h, w = like_shape
        return torch.empty((b, c, 0, h, w), dtype=dtype)
    return torch.stack([f.detach().cpu() for f in frames], dim=2).contiguous()


def pack(state: Any, shape: Sequence[int], dtype: torch.dtype, prefix: str = "") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A state dataclass -> (tensors for safetensors, JSON-able meta)."""
    tensors: dict[str, Tensor] = {}
    meta: dict[str, Any] = {}
    for name, (kind, _) in _kinds(type(state)).items():
        value = getattr(state, name)
        if kind == FRAMES:
            tensors[prefix + name] = stack_frames(value, shape, dtype)
        elif kind == FRAME and value is not None:
            tensors[prefix + name] = stack_frames([value], shape, dtype)
        elif kind == NESTED:
            inner_tensors, meta[name] = pack(value, shape, dtype, f"{prefix}{name}.")
            tensors.update(inner_tensors)
        elif kind == VALUE:
            meta[name] = value
    return tensors, meta


def unpack(cls: type[S], tensors: dict[str, Tensor], meta: dict[str, Any], device: torch.device, dtype: torch.dtype, prefix: str = "") -> S:
    """The state dataclass ``cls`` from ``pack``'s output, its frames on ``device`` in ``dtype``."""
    values: dict[str, Any] = {}
    for name, (kind, hint) in _kinds(cls).items():
        key = prefix + name
        if kind in (FRAME, FRAMES):
            frames = [f.to(device, dtype) for f in tensors[key].unbind(dim=2)] if key in tensors else []
            values[name] = frames if kind == FRAMES else (frames[0] if frames else None)
        elif kind == NESTED:
            values[name] = unpack(hint, tensors, meta[name], device, dtype, f"{key}.")
        else:
            values[name] = meta[name]
    return cls(**values)
