"""Diffusers Wan (``WanTransformer3DModel``, ``AutoencoderKLWan``, UMT5) behind the Denoiser protocol.

Real weights, the shipped toy checkpoint and any saved pipeline directory load through one
``from_pretrained`` path (subfolders transformer/, vae/, text_encoder/, tokenizer/, scheduler/).
``random_wan`` builds the Wan2.1-T2V-1.3B architecture with random weights for speed and memory
measurements, with random text embeddings standing in for UMT5-XXL.
"""

from __future__ import annotations

import dataclasses

import diffusers
import torch
from diffusers import AutoencoderKLWan, SchedulerMixin, UniPCMultistepScheduler, WanTransformer3DModel
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from torch import Tensor
from transformers import BatchEncoding, PreTrainedTokenizerBase, T5Tokenizer, UMT5EncoderModel

from ..sampling.grid import LevelGrid, flow_grid_from_sigmas
from .decode import StreamingDecoder, latent_norm
from .pixels import from_uint8
from .prompts import PromptEncoder, RandomPromptEncoder, encode_with_negative

WAN21_1_3B_TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    num_layers=30,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
)
"""Transformer config of Wan-AI/Wan2.1-T2V-1.3B-Diffusers."""

WAN21_SCHEDULER = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
"""The UniPC flow scheduler settings of the Wan2.1 T2V releases (shift 3 for 480p)."""

ENCODE_STEP = 4
"""``AutoencoderKLWan.encode`` reads the first frame, then chunks of 4 (whatever its temporal factor) and drops a rest."""

WAN_TEXT_LEN = 512
"""Text tokens per prompt in WanPipeline (``max_sequence_length``)."""


def frame_timesteps_to_tokens(timesteps: Tensor, batch: int, tokens_per_frame: int) -> Tensor:
    """One timestep per latent frame, ``[F]`` or ``[B, F]``, -> per-token timesteps ``[B, F * tokens_per_frame]``.

    The transformer patchifies with temporal patch 1 and flattens frame-major, so every token of
    frame f gets the timestep of frame f.
    """
    return timesteps.repeat_interleave(tokens_per_frame, dim=-1).expand(batch, -1)


class WanDenoiser:
    """A ``WanTransformer3DModel`` as a Denoiser: latents, one timestep per frame, text embeddings -> flow."""

    def __init__(self, transformer: WanTransformer3DModel) -> None:
        if transformer.config.patch_size[0] != 1:
            raise ValueError("per-frame timesteps need a temporal patch size of 1")
        self.transformer = transformer

    @torch.no_grad()
    def __call__(self, latents: Tensor, timesteps: Tensor, context: Tensor) -> Tensor:
        """Flow prediction ``[B, C, F, H, W]`` in the latents' dtype; equal timesteps take the scalar path."""
        b, _, f, h, w = latents.shape
        if timesteps.shape != (f,):
            raise ValueError(f"need one timestep per latent frame ({f}), got shape {tuple(timesteps.shape)}")
        p = self.transformer.config.patch_size
        device, dtype = self.transformer.device, self.transformer.dtype  # dtype skips the float32-kept modules
        t = timesteps.to(device=device, dtype=torch.float32)
        if bool((timesteps == timesteps[0]).all()):
            t = t[:1].expand(b)
        else:
            t = frame_timesteps_to_tokens(t, b, (h // p[1]) * (w // p[2]))
        out = self.transformer(
            latents.to(device, dtype), t, context.to(device, dtype), return_dict=False
        )[0]
        return out.to(latents.dtype)


class T5PromptEncoder:
    """UMT5 + tokenizer as WanPipeline uses them; the encoder visits ``device`` only while encoding."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, text_encoder: UMT5EncoderModel) -> None:
        self.tokenizer, self.text_encoder = tokenizer, text_encoder.to("cpu")
        self.max_length = min(tokenizer.model_max_length, WAN_TEXT_LEN)

    def tokenize(self, prompts: list[str]) -> BatchEncoding:
        """Cleaned prompts -> ``input_ids`` and ``attention_mask`` padded to ``max_length``."""
        return self.tokenizer(
            [prompt_clean(p) for p in prompts],
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )

    @torch.no_grad()
    def __call__(self, prompts: list[str], device: torch.device) -> Tensor:
        tokens = self.tokenize(prompts).to(device)
        try:
            self.text_encoder.to(device)
            return embed_tokens(self.text_encoder, tokens.input_ids, tokens.attention_mask).cpu()
        finally:
            self.text_encoder.to("cpu")


def embed_tokens(text_encoder: UMT5EncoderModel, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Text embeddings ``[B, L, D]``, zero after each prompt's tokens (WanPipeline's convention)."""
    hidden = text_encoder(input_ids, attention_mask).last_hidden_state
    return hidden.masked_fill(~attention_mask.bool().unsqueeze(-1), 0.0)


class WanModel:
    """A loaded Wan-family model: denoiser, prompt encoding, level grid and streaming decoder (a LoadedModel)."""

    def __init__(
        self,
        transformer: WanTransformer3DModel,
        vae: AutoencoderKLWan,
        text: PromptEncoder,
        scheduler: SchedulerMixin,
        default_resolution: tuple[int, int],
        default_window: int,
    ) -> None:
        self.device, self.dtype = transformer.device, transformer.dtype
        self.denoiser = WanDenoiser(transformer)
        self.vae, self.text, self.scheduler = vae, text, scheduler
        self.latent_channels: int = transformer.config.in_channels
        self.vae_scale: tuple[int, int] = (vae.config.scale_factor_temporal, vae.config.scale_factor_spatial)
        self.default_resolution, self.default_window = default_resolution, default_window

    def encode_prompt(self, prompts: list[str], negative: str | None = None) -> tuple[Tensor, Tensor]:
        """Positive and negative embeddings ``[B, L, D]`` (see ``encode_with_negative``)."""
        return encode_with_negative(self.text, prompts, negative, self.device, self.dtype)

    def grid(self, num_levels: int, shift: float | None = None) -> LevelGrid:
        """The scheduler's grid for ``num_levels`` steps (its sigmas and model timesteps), level 0 clean.

        ``shift`` overrides the scheduler config's flow shift (MIGA's Wan preset uses 5).
        """
        config = dict(self.scheduler.config)
        if shift is not None:
            config["flow_shift" if "flow_shift" in config else "shift"] = shift
        scheduler = type(self.scheduler).from_config(config)
        scheduler.set_timesteps(num_levels)
        if len(scheduler.timesteps) != num_levels or len(scheduler.sigmas) != num_levels + 1:
            raise ValueError(f"{type(scheduler).__name__} does not give {num_levels} plain steps")
        grid = flow_grid_from_sigmas(scheduler.sigmas.flip(0), config["num_train_timesteps"])
        timesteps = torch.cat([torch.zeros(1, dtype=torch.float64), scheduler.timesteps.flip(0).cpu().double()])
        return dataclasses.replace(grid, timesteps=timesteps)

    def decoder(self) -> StreamingDecoder:
        """A fresh streaming decoder at the start of a video."""
        return StreamingDecoder(self.vae)

    encode_step = ENCODE_STEP

    @torch.no_grad()
    def encode_video(self, frames: Tensor) -> Tensor:
        """uint8 frames ``[n, H, W, 3]`` (n = 1 + k x ``encode_step``) -> normalised latents ``[1, C, latents, h, w]``
        (1 + k x 4 / the temporal factor of them): the posterior's mean, in the sampler's space (``decode.latent_norm``)."""
        mean, std = latent_norm(self.vae)
        z = self.vae.encode(from_uint8(frames)[None].to(mean)).latent_dist.mode()
        return ((z - mean) / std).to(self.device, self.dtype)


def load_wan(
    source: str,
    device: torch.device,
    dtype: torch.dtype,
    default_resolution: tuple[int, int],
    default_window: int,
) -> WanModel:
    """Load a diffusers Wan pipeline directory or hub id; the VAE stays float32, the text encoder on the CPU."""
    config = UniPCMultistepScheduler.load_config(source, subfolder="scheduler")  # any scheduler class reads it
    scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
    transformer = WanTransformer3DModel.from_pretrained(source, subfolder="transformer", torch_dtype=dtype)
    vae = AutoencoderKLWan.from_pretrained(source, subfolder="vae", torch_dtype=torch.float32)
    text = T5PromptEncoder(
        T5Tokenizer.from_pretrained(source, subfolder="tokenizer"),  # Wan's class; AutoTokenizer would also ask for a config.json Wan repos lack, which fails offline
        UMT5EncoderModel.from_pretrained(source, subfolder="text_encoder", torch_dtype=dtype),
    )
    return WanModel(
        transformer.to(device).eval(), vae.to(device).eval(), text, scheduler, default_resolution, default_window
    )


def random_wan(device: torch.device, dtype: torch.dtype) -> WanModel:
    """Wan2.1-T2V-1.3B's transformer and VAE with random weights, built on ``device`` (``meta`` works);
    prompts become random embeddings ``[B, 512, 4096]`` in place of UMT5-XXL."""
    with torch.device(device):
        transformer = WanTransformer3DModel(**WAN21_1_3B_TRANSFORMER).eval()
        vae = AutoencoderKLWan().eval()
    keep = set(transformer._keep_in_fp32_modules)
    for name, param in transformer.named_parameters():  # the dtypes from_pretrained(torch_dtype=dtype) gives
        param.data = param.data.to(torch.float32 if keep & set(name.split(".")) else dtype)
    scheduler = UniPCMultistepScheduler(**WAN21_SCHEDULER)
    return WanModel(transformer, vae, RandomPromptEncoder(WAN_TEXT_LEN, 4096), scheduler, (480, 832), 21)  # UMT5-XXL: 4096 wide
