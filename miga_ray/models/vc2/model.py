"""VideoCrafter2 behind the Denoiser protocol: its UNet, VAE decoder, text encoder and level grid (a LoadedModel).

``load_vc2`` reads the released ``model.ckpt`` (keys ``model.diffusion_model.*``,
``first_stage_model.*``, ``cond_stage_model.*``) or a safetensors conversion of it, never unpickling
objects: ``torch.load(weights_only=True)`` accepts tensors and plain containers only.
``random_vc2`` builds the same architecture with random weights for speed and memory measurements.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor, nn

from ...sampling.grid import LevelGrid, ddpm_grid
from ..pixels import from_uint8
from ..prompts import PromptEncoder, RandomPromptEncoder, encode_with_negative
from .autoencoder import LATENT_SCALE, DecoderConfig, FirstStage, FrameDecoder
from .text import ClipTokenizer, OpenClipPromptEncoder, OpenClipText, TextConfig, find_bpe_vocab
from .unet import UNet3D, UNetConfig

TRAIN_STEPS = 1000
FPS = 8
"""The fps condition MIGA's VideoCrafter2 port samples with."""

PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text": "cond_stage_model.model."}


def lvdm_grid(num_levels: int) -> LevelGrid:
    """``ddpm_grid`` on VC2's training schedule (``linear_start`` 0.00085, ``linear_end`` 0.012 of its config; LVDM's
    "linear", a linspace of sqrt(beta) squared, is what ``ddpm_grid`` calls "scaled_linear") with LVDM's DDIM spacing."""
    return ddpm_grid(num_levels, TRAIN_STEPS, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


@dataclass(frozen=True)
class VC2Config:
    """The three parts' architectures; the defaults are VideoCrafter2's (``inference_t2v_512_v2.0.yaml``)."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: DecoderConfig = field(default_factory=DecoderConfig)
    text: TextConfig = field(default_factory=TextConfig)

    def unused(self, key: str) -> bool:
        """Checkpoint keys under the parts' prefixes that are never read (the text tower past the layer read)."""
        text = PREFIXES["text"]
        return key.startswith(f"{text}transformer.resblocks.{self.text.layers - 1}.") or key in (f"{text}text_projection", f"{text}logit_scale")


def vc2_grid(num_levels: int) -> LevelGrid:
    """MIGA's VideoCrafter2 grid: level k >= 1 is training step ``round(999 (k-1) / (T-1))``, level 0 step 0.

    MIGA's port replaced LVDM's DDIM spacing (steps ``1, 1 + c, ...`` with ``c = 1000 // T``,
    ``lvdm_grid(T)``) by this one, whose top level is the last training step; its last step (level 1
    at step 0 -> level 0) leaves the latents as they are.
    """
    if not 1 <= num_levels <= TRAIN_STEPS:
        raise ValueError(f"num_levels must be in [1, {TRAIN_STEPS}], got {num_levels}")
    every = lvdm_grid(TRAIN_STEPS - 1)  # spacing 1: level k is training step k, for every step 0..999
    steps = torch.linspace(0, TRAIN_STEPS - 1, num_levels, dtype=torch.float64).round().long()
    index = torch.cat([torch.zeros(1, dtype=torch.long), steps])
    return LevelGrid("ddpm", every.timesteps[index], every.signal[index], every.sigmas[index])


class VC2Denoiser:
    """The UNet as a Denoiser: latents ``[B, 4, F, h, w]``, one timestep per frame, text ``[B, 77, 1024]`` -> eps."""

    def __init__(self, unet: UNet3D, fps: int = FPS) -> None:
        self.unet, self.fps = unet, fps

    @torch.no_grad()
    def __call__(self, latents: Tensor, timesteps: Tensor, context: Tensor) -> Tensor:
        """eps in the latents' dtype; equal timesteps take the released model's one-per-video path."""
        b, _, f, _, _ = latents.shape
        if timesteps.shape != (f,):
            raise ValueError(f"need one timestep per latent frame ({f}), got shape {tuple(timesteps.shape)}")
        param = next(self.unet.parameters())
        t = timesteps.to(param.device, torch.float32)
        t = t[:1].expand(b) if bool((timesteps == timesteps[0]).all()) else t.expand(b, f)
        fps = torch.full((b,), self.fps, device=param.device)
        return self.unet(latents.to(param), t, context.to(param), fps).to(latents.dtype)


class VC2Model:
    """A loaded VideoCrafter2: denoiser, prompt encoding, level grid and frame decoder (a LoadedModel)."""

    default_resolution = (320, 512)
    default_window = 16

    def __init__(self, unet: UNet3D, vae: FirstStage, text: PromptEncoder, fps: int = FPS) -> None:
        param = next(unet.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.denoiser = VC2Denoiser(unet, fps)
        self.vae, self.text = vae, text
        self.latent_channels: int = unet.config.in_channels
        self.vae_scale: tuple[int, int] = (1, vae.config.spatial_scale)

    def encode_prompt(self, prompts: list[str], negative: str | None = None) -> tuple[Tensor, Tensor]:
        """Positive and negative embeddings; unconditional = the empty prompt (LVDM's ``empty_seq``)."""
        return encode_with_negative(self.text, prompts, negative, self.device, self.dtype)

    def grid(self, num_levels: int, shift: float | None = None) -> LevelGrid:
        """``vc2_grid(num_levels)``; a flow shift has no meaning for this DDPM model."""
        if shift is not None:
            raise ValueError("shift applies to flow-matching models only; VideoCrafter2 is a DDPM (eps) model")
        return vc2_grid(num_levels)

    def decoder(self) -> FrameDecoder:
        """A fresh decoder at the start of a video."""
        return FrameDecoder(self.vae)

    encode_step = 1  # any number of frames: one latent each

    @torch.no_grad()
    def encode_video(self, frames: Tensor) -> Tensor:
        """uint8 frames ``[n, H, W, 3]`` -> sampler latents ``[1, 4, n, H/8, W/8]``, one frame at a time (2-D VAE)."""
        param = next(self.vae.parameters())
        images = from_uint8(frames).transpose(0, 1)  # [n, 3, H, W]
        latents = [self.vae.encode(images[i : i + 1].to(param))[0] * LATENT_SCALE for i in range(images.shape[0])]
        return torch.stack(latents, dim=1)[None].to(self.device, self.dtype)


@dataclass
class Parts:
    """The three modules a VideoCrafter2 checkpoint holds weights for."""

    unet: UNet3D
    vae: FirstStage
    text: OpenClipText

    def named(self) -> dict[str, nn.Module]:
        """The parts keyed like ``PREFIXES``."""
        return {"unet": self.unet, "vae": self.vae, "text": self.text}


def build_parts(config: VC2Config) -> Parts:
    """The three parts with freshly initialised weights, on the current default device."""
    return Parts(UNet3D(config.unet), FirstStage(config.vae), OpenClipText(config.text))


def checkpoint_state_dict(parts: Parts) -> dict[str, Tensor]:
    """The parts' weights under the released checkpoint's key names."""
    return {PREFIXES[name] + k: v for name, part in parts.named().items() for k, v in part.state_dict().items()}


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file or a torch checkpoint (its ``state_dict`` entry if it has one), unpickling nothing."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return safetensors.torch.load_file(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path}: holds objects other than tensors, which miga-ray will not unpickle; convert it to "
            f".safetensors in a trusted environment (see docs/VC2.md). {exc}"
        ) from None
    return ckpt.get("state_dict", ckpt)


def load_parts(state_dict: dict[str, Tensor], config: VC2Config) -> Parts:
    """The parts with the checkpoint's weights; any key under a part's prefix that is neither used nor
    known to be unused, or any weight missing or of the wrong shape, raises."""
    with torch.device("meta"):
        parts = build_parts(config)
    for name, part in parts.named().items():
        prefix = PREFIXES[name]
        own = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix) and not config.unused(k)}
        part.load_state_dict(own, strict=True, assign=True)
    return parts


def load_vc2(path: str | Path, device: torch.device, dtype: torch.dtype, config: VC2Config = VC2Config()) -> VC2Model:
    """VideoCrafter2 from its checkpoint file; the VAE stays float32 and the text encoder float32 on the CPU.

    The tokenizer's BPE vocabulary comes from next to the checkpoint or from an installed ``open_clip``.
    """
    tokenizer = ClipTokenizer(find_bpe_vocab(path), config.text.context_length)
    parts = load_parts(read_state_dict(path), config)
    text = OpenClipPromptEncoder(tokenizer, parts.text.float().eval())
    return VC2Model(parts.unet.to(device, dtype).eval(), parts.vae.to(device, torch.float32).eval(), text)


def random_vc2(device: torch.device, dtype: torch.dtype, config: VC2Config = VC2Config()) -> VC2Model:
    """VideoCrafter2's UNet and VAE decoder with random weights, built on ``device`` (``meta`` works);
    prompts become random embeddings ``[B, 77, 1024]`` in place of the OpenCLIP encoder."""
    with torch.device(device):
        unet, vae = UNet3D(config.unet).to(dtype).eval(), FirstStage(config.vae).eval()
    text = RandomPromptEncoder(config.text.context_length, config.unet.context_dim)
    return VC2Model(unet, vae, text)
