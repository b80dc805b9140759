"""Streaming, exactly resumable decoding of Wan latents into uint8 frames.

``AutoencoderKLWan`` decodes one latent frame at a time through causal 3-D convolutions that keep
the last input frames of every convolution in a cache. ``StreamingDecoder`` owns such a cache and
runs the same per-latent step, so latents can arrive in chunks of any size and the frames equal
decoding everything at once, bit for bit: the first latent gives 1 frame, every later one 4.

Latents are in the sampler's normalised space ``(z - latents_mean) / latents_std`` (both from the
VAE config); the decoder denormalises.

Restart: the cache is rebuilt, not saved. It is large (Wan2.1's VAE at 480x832: about 3.8 GB in
float32), while the clean latents it came from are small and stored anyway. The stacked causal
convolutions see a finite past, ``context_latents`` latents (38 for Wan2.1), so re-decoding the
latents just before the restart point (and dropping their frames) gives the very same cache, and
the frames that follow are identical to an uninterrupted stream's.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanResample, unpatchify
from torch import Tensor, nn

from .pixels import to_uint8


class StreamingDecoder:
    """Decode normalised latents chunk by chunk, keeping the VAE's causal conv cache across chunks."""

    def __init__(self, vae: AutoencoderKLWan) -> None:
        self.vae = vae
        self._mean, self._std = latent_norm(vae)
        self._slots = sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
        self.context_latents = causal_context(vae.decoder)
        self.num_latents = 0
        self._cache: list[Tensor | str | None] = [None] * self._slots

    @torch.no_grad()
    def push(self, latents: Tensor) -> Tensor:
        """Normalised latents ``[B, C, n, h, w]`` -> the frames they complete, uint8 ``[B, frames, H, W, 3]``."""
        if latents.shape[2] == 0:
            b, _, _, h, w = latents.shape
            s = self.vae.config.scale_factor_spatial
            return torch.empty(b, 0, h * s, w * s, 3, dtype=torch.uint8, device=latents.device)
        return to_uint8(self.decode_raw(latents.to(self._mean) * self._std + self._mean))

    def decode_raw(self, z: Tensor) -> Tensor:
        """VAE latents ``[B, C, n, h, w]`` (not normalised) -> video ``[B, 3, frames, H, W]``, unclamped and
        differentiable (for training: ``AutoencoderKLWan.decode`` clamps to [-1, 1], which stops gradients)."""
        outs = []
        for i in range(z.shape[2]):
            x = self.vae.post_quant_conv(z[:, :, i : i + 1])
            outs.append(self.vae.decoder(x, feat_cache=self._cache, feat_idx=[0], first_chunk=self.num_latents == 0))
            self.num_latents += 1
        video = torch.cat(outs, dim=2)
        return video if self.vae.config.patch_size is None else unpatchify(video, patch_size=self.vae.config.patch_size)

    def resume(self, previous: Tensor, num_latents: int) -> None:
        """Continue a stream after its first ``num_latents`` latents, given (at least) the last
        ``min(num_latents, context_latents)`` of them as ``previous [B, C, k, h, w]``."""
        need = min(num_latents, self.context_latents)
        if previous.shape[2] < need:
            raise ValueError(f"resume at latent {num_latents} needs the {need} latents before it, got {previous.shape[2]}")
        self.num_latents = 0
        self._cache = [None] * self._slots
        self.push(previous[:, :, previous.shape[2] - need :])
        self.num_latents = num_latents


def frames_of_latents(count: int, temporal: int) -> int:
    """Pixel frames decoded from the first ``count`` latents (the first latent gives one frame)."""
    return 0 if count == 0 else 1 + temporal * (count - 1)


def latents_for_frames(frames: int, temporal: int) -> int:
    """Latents whose decode covers ``frames`` pixel frames (the inverse of ``frames_of_latents``, rounded up)."""
    return 1 + -(-(frames - 1) // temporal)


def latent_of_frame(frame: int, temporal: int) -> int:
    """Index of the latent whose decode produces pixel frame ``frame`` (where a story's ``at`` lands too)."""
    return 0 if frame == 0 else (frame - 1) // temporal + 1


def causal_context(decoder: nn.Module) -> int:
    """How many past latents a Wan decoder's conv cache depends on: each causal conv of temporal
    kernel k reaches k-1 frames back at its own frame rate, which doubles after every temporal upsampler."""
    doublers = {id(m.time_conv) for m in decoder.modules() if isinstance(m, WanResample) and m.mode == "upsample3d"}
    span, rate = Fraction(0), 1
    for m in decoder.modules():  # registration order is execution order for the causal convs
        if isinstance(m, WanCausalConv3d):
            span += Fraction(m.kernel_size[0] - 1, rate)
            rate *= 2 if id(m) in doublers else 1
    return math.ceil(span)


def latent_norm(vae: AutoencoderKLWan) -> tuple[Tensor, Tensor]:
    """The VAE config's per-channel latent mean and std, shaped ``[1, C, 1, 1, 1]`` on the VAE's device."""
    param = next(vae.parameters())
    mean, std = (
        torch.tensor(v, dtype=param.dtype, device=param.device).view(1, -1, 1, 1, 1)
        for v in (vae.config.latents_mean, vae.config.latents_std)
    )
    return mean, std

