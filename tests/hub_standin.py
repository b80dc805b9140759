"""A stand-in for ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` in an offline Hugging Face cache.

README's GPU and cluster commands name the real hub id, which this machine can neither download nor
run. ``install_hub_standin`` saves a tiny random-weights Wan pipeline of the real classes
(``WanTransformer3DModel``, ``AutoencoderKLWan``, ``UMT5EncoderModel``, a T5 tokenizer, the Wan2.1
UniPC scheduler) with diffusers' own ``save_pretrained`` and lays it out as the hub's cache does:
``models--Wan-AI--Wan2.1-T2V-1.3B-Diffusers/{blobs,snapshots/<commit>,refs/main}``. With
``HF_HUB_CACHE`` pointing there and ``HF_HUB_OFFLINE=1``, ``from_pretrained(hub_id)`` resolves it
through the real huggingface_hub code path, as it would the downloaded weights.

It is shaped to be cheap at the config's 832x480, window 21 and 1201 frames on one CPU thread:
the VAE upsamples x4 in its decoder and unpatchifies x4 (spatial factor 16, temporal 4, so
480x832 -> 30x52 latents, as ``miga render`` requires multiples of twice the spatial factor), through
4, 2 and 1 channels; the transformer patchifies (1, 15, 13), so a latent frame is 2x4 = 8 tokens (a
window 168), and has one layer of width 24. Decoding 1201 frames at 832x480 stays the main cost.
The decoder's output layer is scaled down so that frames are smooth, low-contrast grey and cheap to
encode (random convolutions would give pixel noise). The latent has 4 channels, not Wan's 16: the
render reads them from the checkpoint's configs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from transformers import UMT5Config, UMT5EncoderModel

from miga_ray.models.toy_tokenizer import build_toy_tokenizer
from miga_ray.models.wan import WAN21_SCHEDULER

HUB_ID = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # any 40-hex revision: refs/main names it
Z_DIM = 4
TEXT_DIM = 32
TEXT_LEN = 32
VAE_CONFIG = dict(
    base_dim=1, z_dim=Z_DIM, dim_mult=[1, 2, 4], num_res_blocks=0, temperal_downsample=[True, True],
    patch_size=4, in_channels=3 * 4 * 4, out_channels=3 * 4 * 4, scale_factor_spatial=16, scale_factor_temporal=4,
    latents_mean=[0.0] * Z_DIM, latents_std=[1.0] * Z_DIM,
)  # fmt: skip
TRANSFORMER_CONFIG = dict(
    patch_size=(1, 15, 13), num_attention_heads=2, attention_head_dim=12, in_channels=Z_DIM, out_channels=Z_DIM,
    text_dim=TEXT_DIM, freq_dim=32, ffn_dim=48, num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
)  # fmt: skip
TEXT_CONFIG = dict(d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=1, num_heads=4, dropout_rate=0.0, feed_forward_proj="gated-gelu")
WORDS = "a an the and of on in over corgi dog running walking lawn grass park sky".split()


def build_pipeline(seed: int = 0) -> WanPipeline:
    """The tiny random-weights Wan pipeline (deterministic for a seed; the caller's RNG is left alone)."""
    tokenizer = build_toy_tokenizer(WORDS, TEXT_LEN)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(**VAE_CONFIG).eval()
        with torch.no_grad():  # smooth, low-contrast frames around mid-grey: cheap for x264 at any length
            vae.decoder.conv_out.weight.mul_(0.05)
            vae.decoder.conv_out.bias.zero_()
        text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), **TEXT_CONFIG)).eval()
        transformer = WanTransformer3DModel(**TRANSFORMER_CONFIG).eval()
    scheduler = UniPCMultistepScheduler(**WAN21_SCHEDULER)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=scheduler)


def install_hub_standin(cache: Path, hub_id: str = HUB_ID) -> dict[str, str]:
    """Write the stand-in into the hub cache at ``cache``; return the environment that makes it resolve."""
    repo = cache / ("models--" + hub_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    if repo.exists():
        shutil.rmtree(repo)
    build_pipeline().save_pretrained(snapshot, safe_serialization=True)
    blobs = repo / "blobs"
    blobs.mkdir()
    for path in sorted(p for p in snapshot.rglob("*") if p.is_file()):  # content-addressed blobs, linked as the hub does
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        path.replace(blobs / digest)
        path.symlink_to(os.path.relpath(blobs / digest, path.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
