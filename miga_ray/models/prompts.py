"""Positive and negative prompt embeddings, shared by every base model: each distinct text encoded once."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


class PromptEncoder(Protocol):
    """Prompts -> text embeddings ``[B, L, D]`` on the CPU."""

    def __call__(self, prompts: list[str], device: torch.device) -> Tensor: ...


@dataclass
class RandomPromptEncoder:
    """Stand-in text encoder for random-weight models: a fixed random ``[text_len, text_dim]`` per prompt (seeded by its CRC32)."""

    text_len: int
    text_dim: int

    def __call__(self, prompts: list[str], device: torch.device) -> Tensor:
        gens = [torch.Generator().manual_seed(zlib.crc32(p.encode())) for p in prompts]
        return torch.stack([torch.randn(self.text_len, self.text_dim, generator=g) for g in gens])


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
