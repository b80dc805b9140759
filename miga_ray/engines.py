"""From a validated render config to a loaded model and a sampler engine: no storage, no video.

Kept apart from ``render.py`` (which adds the object store, the writers and checkpoints) so a study
or a GPU machine without PyAV and boto3 builds engines exactly as ``miga render`` does.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import torch
from torch import Tensor

from .config import ConfigError, RenderConfig
from .models.decode import latent_of_frame
from .models.registry import LoadedModel, load_model
from .sampling import (
    DDIM,
    CallTrace,
    CandidateRunner,
    Conditioning,
    Denoiser,
    FifoEngine,
    FlowEuler,
    MigaEngine,
    NoiseSource,
    PromptSchedule,
    Seed,
    Solver,
    StreamingEngine,
    WindowRunner,
    get_preset,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first GPU when there is one, else the CPU; any other name is taken as it is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_for(cfg: RenderConfig) -> LoadedModel:
    """Load the configured model on the configured device and dtype."""
    device = resolve_device(cfg.model.device)
    dtype = None if cfg.model.dtype == "auto" else DTYPES[cfg.model.dtype]
    return load_model(cfg.model.name, device, dtype)


def make_solver(model: LoadedModel, cfg: RenderConfig) -> Solver:
    """The model scheduler's grid at T levels, stepped per latent as the preset says."""
    s = cfg.sampler
    grid = model.grid(s.levels(), s.shift)
    if grid.kind == "flow":
        return FlowEuler(grid)
    return DDIM(grid, eta=get_preset(s.preset).eta)


def build_engine(
    model: LoadedModel,
    cfg: RenderConfig,
    prompt: str | Sequence[str],
    num_latents: int,
    trace: TextIO | None = None,
    candidates: CandidateRunner | None = None,
    on_call: Callable[[], None] | None = None,
    seed: Seed | None = None,
) -> StreamingEngine:
    """The sampler for one prompt on a loaded model (``on_call`` runs after every model forward); a list of
    prompts samples one batch row each (every random tensor is then drawn for the whole batch, so a row
    differs from its prompt alone). With a ``seed`` it continues the seed's clean latents."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    height, width = cfg.video.height or model.default_resolution[0], cfg.video.width or model.default_resolution[1]
    spatial = model.vae_scale[1]
    if height % (2 * spatial) or width % (2 * spatial):
        raise ConfigError(f"video.height/width: {height}x{width} must be multiples of {2 * spatial} for this model")
    cond = conditioning(model, cfg, prompts)
    shape = (len(prompts), model.latent_channels, height // spatial, width // spatial)
    noise = NoiseSource(cfg.seed, shape, model.dtype, model.device)
    denoiser = _notify_after(model.denoiser, on_call) if on_call else model.denoiser
    runner = WindowRunner(denoiser, make_solver(model, cfg), cond, noise, CallTrace(trace) if trace else None, seed)
    try:
        if cfg.sampler.kind == "miga":
            return MigaEngine(runner, cfg.sampler.miga_config(model.default_window), num_latents, model.dtype, model.device, candidates)
        return FifoEngine(runner, cfg.sampler.fifo_config(model.default_window), num_latents, model.dtype, model.device)
    except ValueError as exc:
        raise ConfigError(f"sampler.{cfg.sampler.kind}.{exc}") from None


def seed_depth(model: LoadedModel, cfg: RenderConfig) -> int:
    """How many of a seed's last latents the configured engine reads."""
    s = cfg.sampler
    if s.kind == "miga":
        return MigaEngine.seed_depth(s.miga_config(model.default_window), s.levels())
    return FifoEngine.seed_depth(s.fifo_config(model.default_window), s.levels())


def seed_of(model: LoadedModel, cfg: RenderConfig, latents: Sequence[Tensor]) -> Seed:
    """The seed an engine continues clean latents ``[B, C, h, w]`` with (a user's clip, a finished job's end):
    the last of them it reads, and how many there are."""
    return Seed(list(latents[-seed_depth(model, cfg) :]), len(latents))


def decoded_video(model: LoadedModel, engine: StreamingEngine, head: Sequence[Tensor] = ()) -> Tensor:
    """A whole stream decoded in memory, for studies: clean latents ``head`` (what the engine continues) then
    every latent the engine yields, through one streaming decoder; uint8 ``[B, F, H, W, 3]`` on the CPU."""
    decoder = model.decoder()
    latents = itertools.chain(head, (latent for _, latent in engine))
    return torch.cat([decoder.push(latent.unsqueeze(2)).cpu() for latent in latents], dim=1)


def conditioning(model: LoadedModel, cfg: RenderConfig, prompts: list[str]) -> Conditioning | PromptSchedule:
    """The prompts' conditioning, or with a story its schedule: every text encoded once, each ``at`` frame
    mapped to the latent that decodes it."""
    scale, story = cfg.sampler.guidance_scale(), cfg.story
    if story is None:
        return Conditioning(*model.encode_prompt(prompts, cfg.negative_prompt), scale)
    pos, neg = model.encode_prompt([p.prompt for p in story.parts], cfg.negative_prompt)
    starts = [latent_of_frame(p.at, model.vae_scale[0]) for p in story.parts]
    for k in range(1, len(starts)):
        if starts[k] == starts[k - 1]:
            raise ConfigError(f"story[{k}]: at {story.parts[k].at} falls in the same latent as story[{k - 1}] (at {story.parts[k - 1].at}); "
                              f"this model makes {model.vae_scale[0]} frames per latent")
    parts = tuple(Conditioning(pos[k : k + 1], neg[k : k + 1], scale) for k in range(len(starts)))
    return PromptSchedule(parts, tuple(starts), story.transition, story.at_switch == "respect")


def _notify_after(model: Denoiser, on_call: Callable[[], None]) -> Denoiser:
    """``model`` calling ``on_call`` after each forward."""

    def forward(latents: Tensor, timesteps: Tensor, context: Any) -> Tensor:
        out = model(latents, timesteps, context)
        on_call()
        return out

    return forward
