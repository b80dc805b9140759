"""VideoCrafter2's VAE (the LDM/Stable Diffusion ``AutoencoderKL``, 8x down, 4 channels), frame by frame.

The VAE is 2-D: every latent frame decodes to one pixel frame on its own, so streaming is trivial
(no cache, nothing to rebuild on resume) and any chunking gives the same frames bit for bit.
Module names follow the checkpoint's ``first_stage_model.{encoder,quant_conv,post_quant_conv,decoder}.*``
keys. The encoder is used only to continue a user's video (``encode``: the posterior's mean, so
encoding is deterministic, where VideoCrafter's own ``encode_first_stage`` samples it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..pixels import to_uint8
from .unet import Upsample

LATENT_SCALE = 0.18215
"""Sampler latents are VAE latents times this (``scale_factor`` of the VC2 config)."""


@dataclass(frozen=True)
class DecoderConfig:
    """The ``ddconfig`` of VideoCrafter2's first stage (``attn_resolutions`` is empty: attention only in the middle)."""

    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    out_channels: int = 3

    @property
    def spatial_scale(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(channels)
        self.conv1 = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels, with 1x1-convolution projections."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        q, k, v = (p(h).flatten(2).transpose(1, 2)[:, None] for p in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)[:, 0].transpose(1, 2).reshape(x.shape)
        return x + self.proj_out(out)


class Middle(nn.Module):
    """Residual block, attention, residual block at the lowest resolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(channels, channels), AttnBlock(channels), ResnetBlock(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Downsample(nn.Module):
    """2x down by a stride-2 3x3 convolution after padding one zero row and column at the bottom and right."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class DownLevel(nn.Module):
    """The residual blocks of one resolution, then (except at the lowest resolution) a 2x downsampling."""

    def __init__(self, channels: int, out_channels: int, blocks: int, downsample: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList([ResnetBlock(channels if i == 0 else out_channels, out_channels) for i in range(blocks)])
        self.downsample = Downsample(out_channels) if downsample else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        return self.downsample(x)


class Encoder(nn.Module):
    """Images ``[N, 3, H, W]`` in [-1, 1] -> posterior moments before ``quant_conv`` ``[N, 2z, H/8, W/8]``."""

    def __init__(self, c: DecoderConfig) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(c.out_channels, c.channels, 3, padding=1)
        mults = (1, *c.channel_mult)
        last = len(c.channel_mult) - 1
        self.down = nn.ModuleList(
            DownLevel(c.channels * mults[i], c.channels * mults[i + 1], c.num_res_blocks, downsample=i < last) for i in range(last + 1)
        )
        ch = c.channels * c.channel_mult[-1]
        self.mid = Middle(ch)
        self.norm_out = _norm(ch)
        self.conv_out = nn.Conv2d(ch, 2 * c.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class UpLevel(nn.Module):
    """The residual blocks of one resolution, then (except at full resolution) a 2x upsampling."""

    def __init__(self, channels: int, out_channels: int, blocks: int, upsample: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList([ResnetBlock(channels if i == 0 else out_channels, out_channels) for i in range(blocks)])
        self.upsample = Upsample(out_channels) if upsample else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        return self.upsample(x)


class Decoder(nn.Module):
    """Latents ``[N, z, h, w]`` -> images ``[N, 3, 8h, 8w]`` in about [-1, 1]."""

    def __init__(self, c: DecoderConfig) -> None:
        super().__init__()
        ch = c.channels * c.channel_mult[-1]
        self.conv_in = nn.Conv2d(c.z_channels, ch, 3, padding=1)
        self.mid = Middle(ch)
        levels: list[UpLevel] = []
        for level in reversed(range(len(c.channel_mult))):
            out = c.channels * c.channel_mult[level]
            levels.insert(0, UpLevel(ch, out, c.num_res_blocks + 1, upsample=level > 0))
            ch = out
        self.up = nn.ModuleList(levels)  # up[0] is the full-resolution level, run last
        self.norm_out = _norm(ch)
        self.conv_out = nn.Conv2d(ch, c.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class FirstStage(nn.Module):
    """VideoCrafter2's ``AutoencoderKL``: ``forward`` decodes, ``encode`` gives the posterior's mean."""

    def __init__(self, config: DecoderConfig = DecoderConfig()) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.z_channels, 1)
        self.post_quant_conv = nn.Conv2d(config.z_channels, config.z_channels, 1)
        self.decoder = Decoder(config)

    def forward(self, z: Tensor) -> Tensor:
        """VAE latents ``[N, z, h, w]`` (not scaled) -> images ``[N, 3, H, W]``, unclamped."""
        return self.decoder(self.post_quant_conv(z))

    def encode(self, x: Tensor) -> Tensor:
        """Images ``[N, 3, H, W]`` in [-1, 1] -> VAE latents ``[N, z, H/8, W/8]`` (not scaled): the posterior's mean."""
        return self.quant_conv(self.encoder(x)).chunk(2, dim=1)[0]


class FrameDecoder:
    """Sampler latents -> uint8 frames, one latent frame at a time; the render layer's decoder interface."""

    context_latents = 0  # no state carries over from one latent to the next

    def __init__(self, vae: FirstStage, scale: float = LATENT_SCALE) -> None:
        self.vae, self.scale = vae, scale
        self.num_latents = 0

    @torch.no_grad()
    def push(self, latents: Tensor) -> Tensor:
        """Sampler latents ``[B, C, n, h, w]`` -> their ``n`` frames, uint8 ``[B, n, H, W, 3]``."""
        param = next(self.vae.parameters())
        b, _, n, h, w = latents.shape
        s = self.vae.config.spatial_scale
        frames = [self.vae(latents[:, :, i].to(param) / self.scale) for i in range(n)]
        self.num_latents += n
        if not frames:
            return torch.empty(b, 0, h * s, w * s, 3, dtype=torch.uint8, device=latents.device)
        return to_uint8(torch.stack(frames, dim=2))

    def resume(self, previous: Tensor, num_latents: int) -> None:
        """Continue after the first ``num_latents`` latents; a 2-D decoder needs none of them."""
        self.num_latents = num_latents
