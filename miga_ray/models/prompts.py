"""Positive and negative prompt embeddings, shared by every base model: each distinct text encoded once."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class PromptEncoder(Protocol):
    """Prompts -> text embeddings ``[B, L, D]`` on the CPU."""

    def __call__(self, prompts: list[str], device: torch.device) -> Tensor: ...


def encode_with_negative(
    text: PromptEncoder, prompts: list[str], negative: str | None, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Positive ``[B, L, D]`` and negative embeddings (same shape) on ``device`` in ``dtype``.

    ``negative=None`` is the empty prompt, the unconditional embedding (WanPipeline's and LVDM's
    ``empty_seq`` convention, and the toy model's CFG dropout).
    """
    negative = negative or ""
    texts = list(dict.fromkeys([*prompts, negative]))
    table = dict(zip(texts, text(texts, device)))
    pos = torch.stack([table[p] for p in prompts]).to(device, dtype)
    neg = table[negative].to(device, dtype).expand_as(pos)
    return pos, neg
