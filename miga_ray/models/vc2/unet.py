"""VideoCrafter2's text-to-video UNet (LVDM's ``openaimodel3d.UNetModel``), ported to load its checkpoint.

A 2-D latent-diffusion UNet run on every frame, with a temporal convolution inside every residual
block, temporal self-attention after every spatial transformer, one more temporal attention after
the first convolution, and an fps embedding added to the time embedding. Module names and shapes
follow the published ``model.diffusion_model.*`` keys (the ``temopral_conv`` typo included).

Timesteps are one per video ``[B]`` (how the released model samples) or one per frame ``[B, F]``
(what FIFO-Diffusion and MIGA need): each frame then gets its own time embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class UNetConfig:
    """Architecture hyperparameters; the defaults are VideoCrafter2's ``inference_t2v_512_v2.0.yaml``."""

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)  # downsampling factors that get attention
    head_channels: int = 64
    context_dim: int = 1024
    init_attn_heads: int = 8  # heads of the temporal attention after the first convolution

    @property
    def downsampling(self) -> int:
        """How much the latent height and width shrink at the bottom (they must divide by it)."""
        return 2 ** (len(self.channel_mult) - 1)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[N] -> [N, dim]`` in float32, cosines first (LVDM's order)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class GroupNorm32(nn.GroupNorm):
    """32-group GroupNorm computed in float32 and cast back (LVDM's ``normalization``)."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


class PointwiseConv1d(nn.Conv1d):
    """A 1x1 ``Conv1d`` (its weights as stored, ``[out, in, 1]``) applied channel-last like a Linear."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight[..., 0], self.bias)


def frames_to_video(x: Tensor, frames: int) -> Tensor:
    """``[(B F), C, H, W] -> [B, C, F, H, W]``."""
    return x.unflatten(0, (-1, frames)).transpose(1, 2)


def video_to_frames(x: Tensor) -> Tensor:
    """``[B, C, F, H, W] -> [(B F), C, H, W]``."""
    return x.transpose(1, 2).flatten(0, 1)


class Attention(nn.Module):
    """Multi-head attention with LVDM's names: self-attention, or cross-attention to ``context``."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim))  # key to_out.0 (to_out.1 was a dropout)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        source = x if context is None else context
        q, k, v = (p(s).unflatten(-1, (self.heads, -1)).transpose(1, 2) for p, s in
                   ((self.to_q, x), (self.to_k, source), (self.to_v, source)))  # fmt: skip
        return self.to_out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


class GEGLU(nn.Module):
    """Gated GELU projection of the feed-forward layer."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward with a 4x inner width."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim))  # net.1 was a dropout

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Self-attention, then attention to ``context`` (self-attention again without one), then feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.attn1 = Attention(dim, heads, head_dim)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Attention over the pixels of each frame, cross-attending to the text."""

    def __init__(self, channels: int, heads: int, head_dim: int, context_dim: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(inner, heads, head_dim, context_dim)])
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        h = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        h = self.proj_out(self.transformer_blocks[0](h, context))
        return h.transpose(1, 2).reshape(x.shape) + x


class TemporalTransformer(nn.Module):
    """Self-attention along time at every pixel; the norm pools each video's frames together."""

    def __init__(self, channels: int, heads: int, head_dim: int, pointwise_conv: bool = False) -> None:
        super().__init__()
        inner = heads * head_dim
        proj = PointwiseConv1d if pointwise_conv else nn.Linear
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = proj(channels, inner)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(inner, heads, head_dim)])
        self.proj_out = proj(inner, channels)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        video = self.norm(frames_to_video(x, frames))  # [B, C, F, H, W]
        b, c, f, h, w = video.shape
        seq = self.proj_in(video.permute(0, 3, 4, 2, 1).reshape(b * h * w, f, c))
        seq = self.proj_out(self.transformer_blocks[0](seq))
        return seq.unflatten(0, (b, h, w)).permute(0, 3, 4, 1, 2).flatten(0, 1) + x


def _temporal_conv(channels: int, dropout_slot: bool) -> nn.Sequential:
    """GroupNorm, SiLU (a dropout slot in the key layout), Conv3d with kernel 3 along time."""
    layers = [nn.GroupNorm(32, channels), nn.SiLU(), *([nn.Identity()] if dropout_slot else [])]
    return nn.Sequential(*layers, nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)))


class TemporalConv(nn.Module):
    """Four residual temporal convolutions over ``[B, C, F, H, W]`` (from ModelScope's video UNet)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _temporal_conv(channels, dropout_slot=False)
        self.conv2 = _temporal_conv(channels, dropout_slot=True)
        self.conv3 = _temporal_conv(channels, dropout_slot=True)
        self.conv4 = _temporal_conv(channels, dropout_slot=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv4(self.conv3(self.conv2(self.conv1(x)))) + x


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding, then the temporal convolution."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels), nn.SiLU(), nn.Identity(), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )  # out_layers.2 was a dropout
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        self.temopral_conv = TemporalConv(out_channels)  # sic: the checkpoint's spelling

    def forward(self, x: Tensor, emb: Tensor, frames: int) -> Tensor:
        h = self.in_layers(x) + self.emb_layers(emb).to(x.dtype)[..., None, None]
        h = self.skip_connection(x) + self.out_layers(h)
        return video_to_frames(self.temopral_conv(frames_to_video(h, frames)))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.Sequential):
    """A run of layers on frames ``[(B F), C, H, W]``, each given what it is conditioned on."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor, frames: int) -> Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, frames)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, TemporalTransformer):
                x = layer(x, frames)
            else:
                x = layer(x)
        return x


class UNet3D(nn.Module):
    """VideoCrafter2's UNet: noisy latents ``[B, C, F, H, W]``, timesteps, text ``[B, L, D]``, fps ``[B]`` -> eps."""

    def __init__(self, config: UNetConfig = UNetConfig()) -> None:
        super().__init__()
        self.config = c = config
        mc, emb = c.model_channels, 4 * c.model_channels
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.fps_embedding = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_blocks = nn.ModuleList([Stage(nn.Conv2d(c.in_channels, mc, 3, padding=1))])
        self.init_attn = Stage(TemporalTransformer(mc, c.init_attn_heads, c.head_channels, pointwise_conv=True))
        skips, ch, ds = [mc], mc, 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                self.input_blocks.append(Stage(ResBlock(ch, emb, mult * mc), *self._attention(mult * mc, ds)))
                ch = mult * mc
                skips.append(ch)
            if level != len(c.channel_mult) - 1:
                self.input_blocks.append(Stage(Downsample(ch)))
                skips.append(ch)
                ds *= 2
        self.middle_block = Stage(ResBlock(ch, emb, ch), *self._transformers(ch), ResBlock(ch, emb, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), emb, mult * mc), *self._attention(mult * mc, ds)]
                ch = mult * mc
                if level and i == c.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(Stage(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(mc, c.out_channels, 3, padding=1))

    def _transformers(self, ch: int) -> list[nn.Module]:
        heads = ch // self.config.head_channels
        return [
            SpatialTransformer(ch, heads, self.config.head_channels, self.config.context_dim),
            TemporalTransformer(ch, heads, self.config.head_channels),
        ]

    def _attention(self, ch: int, ds: int) -> list[nn.Module]:
        return self._transformers(ch) if ds in self.config.attention_resolutions else []

    def embed(self, timesteps: Tensor, fps: Tensor, frames: int) -> Tensor:
        """Time + fps embedding per frame ``[(B F), 4 * model_channels]``; timesteps ``[B]`` or ``[B, F]``."""
        b, mc = fps.shape[0], self.config.model_channels
        dtype = next(self.time_embed.parameters()).dtype
        t = timesteps.reshape(b, -1)  # [B, 1] or [B, F]
        emb = self.time_embed(timestep_embedding(t.flatten(), mc).to(dtype)).unflatten(0, t.shape)
        emb = emb + self.fps_embedding(timestep_embedding(fps, mc).to(dtype))[:, None]
        return emb.expand(b, frames, -1).flatten(0, 1)

    def forward(self, x: Tensor, timesteps: Tensor, context: Tensor, fps: Tensor) -> Tensor:
        """eps ``[B, C_out, F, H, W]``; timesteps ``[B]`` (one per video) or ``[B, F]`` (one per frame)."""
        b, _, f, h, w = x.shape
        if h % self.config.downsampling or w % self.config.downsampling:
            raise ValueError(f"latent height and width must be multiples of {self.config.downsampling}, got {h}x{w}")
        if timesteps.shape not in ((b,), (b, f)):
            raise ValueError(f"timesteps must be [B] or [B, F] = [{b}, {f}], got {tuple(timesteps.shape)}")
        emb = self.embed(timesteps, fps, f)
        context = context.repeat_interleave(f, dim=0)
        hs, hx = [], video_to_frames(x)
        for i, stage in enumerate(self.input_blocks):
            hx = stage(hx, emb, context, f)
            if i == 0:
                hx = self.init_attn(hx, emb, context, f)
            hs.append(hx)
        hx = self.middle_block(hx, emb, context, f)
        for stage in self.output_blocks:
            hx = stage(torch.cat([hx, hs.pop()], dim=1), emb, context, f)
        return frames_to_video(self.out(hx), f)
