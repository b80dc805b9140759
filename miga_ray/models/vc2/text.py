"""VideoCrafter2's text encoder: OpenCLIP ViT-H-14's text transformer read at its penultimate layer
(LVDM's ``FrozenOpenCLIPEmbedder(layer="penultimate")``), and CLIP's byte-level BPE tokenizer.

Module names follow the checkpoint's ``cond_stage_model.model.*`` keys. The last of the 24 blocks,
``text_projection`` and ``logit_scale`` are in the checkpoint but never used for the embedding, so
they are not built. The tokenizer reads CLIP's merge list (``bpe_simple_vocab_16e6.txt.gz``, shipped
in the ``open_clip_torch`` package); miga-ray does not ship it.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import math
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import regex
import torch
from torch import Tensor, nn

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


@dataclass(frozen=True)
class TextConfig:
    """OpenCLIP ViT-H-14's text tower; ``layers`` counts the blocks in the checkpoint (the last one is skipped)."""

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 1024
    heads: int = 16
    layers: int = 24


class ResidualAttentionBlock(nn.Module):
    """Pre-norm causal self-attention and a GELU MLP, with OpenCLIP's parameter names."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=nn.GELU(), c_proj=nn.Linear(4 * width, width)))

    def forward(self, x: Tensor, causal_mask: Tensor) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=causal_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """The residual attention blocks under a causal mask."""

    def __init__(self, width: int, heads: int, layers: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        for block in self.resblocks:
            x = block(x, causal)
        return x


class OpenClipText(nn.Module):
    """Token ids ``[N, 77]`` -> the penultimate block's output after the final LayerNorm, ``[N, 77, width]``."""

    def __init__(self, config: TextConfig = TextConfig()) -> None:
        super().__init__()
        self.config = c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.width)
        self.positional_embedding = nn.Parameter(torch.empty(c.context_length, c.width).normal_(std=0.01))
        self.transformer = Transformer(c.width, c.heads, c.layers - 1)
        self.ln_final = nn.LayerNorm(c.width)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.ln_final(self.transformer(self.token_embedding(tokens) + self.positional_embedding))


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible map from the 256 byte values to printable characters (printable bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(rest)}}


def clean_text(text: str) -> str:
    """OpenCLIP's default cleaning: ftfy when installed, HTML unescaping, collapsed whitespace, lower case."""
    if importlib.util.find_spec("ftfy") is not None:
        import ftfy

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class ClipTokenizer:
    """CLIP's byte-level BPE tokenizer (OpenCLIP's ``SimpleTokenizer``): ids padded with 0 to the context length."""

    def __init__(self, bpe_path: str | Path, context_length: int = 77) -> None:
        lines = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
        symbols = list(bytes_to_unicode().values())
        vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges)]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.sot, self.eot = len(vocab), len(vocab) + 1
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.context_length = context_length
        self.bpe = lru_cache(maxsize=65536)(self._bpe)

    def _bpe(self, word: str) -> tuple[str, ...]:
        """Merge the characters of one pre-token (end marked ``</w>``) by rank, lowest first."""
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            best = min(zip(parts, parts[1:]), key=lambda pair: self.ranks.get(pair, math.inf))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)

    def encode(self, text: str) -> list[int]:
        """Token ids of a text, without start/end tokens."""
        ids: list[int] = []
        for piece in CLIP_PATTERN.findall(clean_text(text)):
            ids.extend(self.encoder[t] for t in self.bpe("".join(self.byte_encoder[b] for b in piece.encode())))
        return ids

    def __call__(self, texts: list[str]) -> Tensor:
        """``[N, context_length]`` ids: start, text (truncated, the end token kept), end, zeros."""
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in zip(out, texts):
            ids = [self.sot, *self.encode(text)][: self.context_length - 1] + [self.eot]
            row[: len(ids)] = torch.tensor(ids)
        return out


def find_bpe_vocab(near: str | Path | None = None) -> Path:
    """CLIP's merge list: next to ``near`` (e.g. the checkpoint), else the installed ``open_clip`` package's copy."""
    candidates = [Path(near).parent / BPE_FILE] if near is not None else []
    spec = importlib.util.find_spec("open_clip")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / BPE_FILE for p in spec.submodule_search_locations]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"CLIP's BPE vocabulary {BPE_FILE} not found (looked in: {', '.join(map(str, candidates)) or 'nowhere'}); "
        "put it next to the checkpoint or `pip install --no-deps open_clip_torch`"
    )


class OpenClipPromptEncoder:
    """Prompts -> VideoCrafter2 text embeddings ``[N, 77, 1024]`` on the CPU; the encoder visits ``device`` only while encoding."""

    def __init__(self, tokenizer: ClipTokenizer, model: OpenClipText) -> None:
        self.tokenizer, self.model = tokenizer, model.to("cpu")

    @torch.no_grad()
    def __call__(self, prompts: list[str], device: torch.device) -> Tensor:
        try:
            self.model.to(device)
            return self.model(self.tokenizer(prompts).to(device)).cpu()
        finally:
            self.model.to("cpu")
