"""Streaming decode of Wan latents: any chunking equals decoding at once, and restarts are exact."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan

from miga_ray.models.decode import StreamingDecoder, causal_context
from miga_ray.models.pixels import to_uint8

MEAN, STD = [0.1, -0.2, 0.3, 0.0], [1.5, 0.5, 1.0, 2.0]


@pytest.fixture(scope="module")
def vae() -> AutoencoderKLWan:
    torch.manual_seed(0)
    config = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, latents_mean=MEAN, latents_std=STD)
    return AutoencoderKLWan(**config).eval()


def stream(vae: AutoencoderKLWan, latents: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    decoder, frames, i = StreamingDecoder(vae), [], 0
    for n in chunks:
        frames.append(decoder.push(latents[:, :, i : i + n]))
        i += n
    assert i == latents.shape[2]
    return torch.cat(frames, dim=1)


def test_push_matches_vae_decode_of_denormalised_latents(vae: AutoencoderKLWan) -> None:
    x = torch.randn(2, 4, 5, 3, 4)
    z = x * torch.tensor(STD).view(1, -1, 1, 1, 1) + torch.tensor(MEAN).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        reference = to_uint8(vae.decode(z).sample)
    frames = StreamingDecoder(vae).push(x)
    assert frames.shape == (2, 1 + 4 * 4, 24, 32, 3) and frames.dtype == torch.uint8
    assert (frames.int() - reference.int()).abs().max() <= 1


@pytest.mark.parametrize("chunks", [[10], [1] * 10, [3, 2, 5], [1, 4, 0, 5]])
def test_any_chunking_equals_decoding_at_once(vae: AutoencoderKLWan, chunks: list[int]) -> None:
    x = torch.randn(1, 4, 10, 2, 3)
    assert torch.equal(stream(vae, x, chunks), stream(vae, x, [10]))


def test_first_latent_gives_one_frame_later_ones_four(vae: AutoencoderKLWan) -> None:
    decoder = StreamingDecoder(vae)
    counts = [decoder.push(torch.randn(1, 4, n, 2, 2)).shape[1] for n in (1, 1, 2, 0)]
    assert counts == [1, 4, 8, 0] and decoder.num_latents == 4


@pytest.mark.parametrize("restart", [3, 34])  # before and after the decoder's context (30 latents here)
def test_resume_gives_the_frames_of_an_uninterrupted_stream(vae: AutoencoderKLWan, restart: int) -> None:
    x = torch.randn(1, 4, 38, 2, 2)
    uninterrupted = stream(vae, x, [38])
    resumed = StreamingDecoder(vae)
    assert resumed.context_latents == 30
    resumed.resume(x[:, :, :restart], restart)
    tail = torch.cat([resumed.push(x[:, :, restart : restart + 1]), resumed.push(x[:, :, restart + 1 :])], dim=1)
    assert torch.equal(tail, uninterrupted[:, 1 + 4 * (restart - 1) :])


def test_resume_needs_the_context_latents(vae: AutoencoderKLWan) -> None:
    with pytest.raises(ValueError, match="needs the 30 latents"):
        StreamingDecoder(vae).resume(torch.randn(1, 4, 29, 2, 2), 40)


def test_wan21_decoder_context_is_38_latents() -> None:
    with torch.device("meta"):
        assert causal_context(AutoencoderKLWan().decoder) == 38
