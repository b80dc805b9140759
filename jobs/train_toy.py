"""Train the shipped toy model on the toy world, write it as a diffusers Wan pipeline, and gate its quality.

    python jobs/train_toy.py [--out DIR] [--profile cpu|gpu] [--levels shared|mixed]   # train into DIR
    python jobs/train_toy.py --eval [--out DIR]                                       # quality gate of DIR

Stages: (1) render long toy-world streams (worker processes); (2) the VAE (``AutoencoderKLWan`` with
Wan2.2's patch and residual options, no temporal compression, temporal taps zero: a per-frame
autoencoder like VideoCrafter2's, 4x spatial by default, ``--vae-scale 8`` for Wan's 8x; sprite-weighted
L1 + MSE reconstruction + small KL) on frames of those streams; (3) encode the streams and set the VAE
config's latent mean/std; (4) the transformer (``WanTransformer3DModel``, one token per 16x16 pixels) and
the tiny UMT5 text encoder together, flow matching on windows cropped from the streams and, in the same
steps, on single frames (joint image-video training, as Wan and VideoCrafter2 were trained;
``--image-batch 0`` for windows only), 10% of prompts dropped to "" for classifier-free guidance; the
saved weights are an exponential moving average of the trained ones.

``--levels shared`` (the default) trains as Wan2.1 and VideoCrafter2 were trained: one noise level
shared by every latent of a window. ``--levels mixed`` is the earlier recipe, kept as the control: a
third of the windows shared, a third independent per latent, a third independent and sorted (the
mixed-level windows FIFO-Diffusion feeds a model), so that model has no train-inference mismatch.
``--profile`` sets the sizes (``cpu``: the 2-core development VM, ``gpu``: one H100/H200); any size
flag overrides it. Times and gate results: docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import UMT5Config, UMT5EncoderModel

from miga_ray.benchmarks.options import at_least
from miga_ray.evaluation.toy_world import ToyReport, analyze
from miga_ray.models import TOY_DIR
from miga_ray.models.decode import StreamingDecoder, frames_of_latents, latent_norm, to_uint8
from miga_ray.models.registry import load_model as load_pipeline
from miga_ray.models.toy_tokenizer import build_toy_tokenizer
from miga_ray.models.toy_world import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    SIZES,
    WORLDS,
    Scene,
    World,
    parse_prompt,
    render_clip,
)
from miga_ray.models.wan import WAN21_SCHEDULER, T5PromptEncoder, embed_tokens, frame_timesteps_to_tokens
from miga_ray.sampling.denoiser import Conditioning, guided_forward
from miga_ray.sampling.presets import get_preset
from miga_ray.sampling.solvers import FlowEuler

SIZE = 64  # pixels, square
WINDOW = 16  # latents per window: 16 frames, VideoCrafter2's window
PRESET = "toy"  # the sampler preset of the models this recipe trains
STREAM = 33  # latents per encoded training stream: 33 frames (Wan's encoder takes 1 + 4k frames)
CLIP = 9  # frames of the real clips whose reconstructions score the VAE
TEXT_LEN = 32
GRAMMAR = ("a", "an", "and", "moving", "over", "on", "the")
# Wan2.2-style options of the same AutoencoderKLWan class: a lossless 2x2 space-to-depth patch in front
# of the convolutions (so they run at 32x32) and residual shortcuts around every resampling stage; 16
# channels and no temporal compression. With Wan's 4x temporal compression a CPU does not train the
# temporal path in the recipe's budget (reconstructions recognised in about half the frames,
# docs/RESULTS.md); per frame, images alone train it in minutes. Keyed by the spatial compression:
# 8 is Wan's (64x64 frames -> 8x8 latents, where a small sprite is 1.3 latents across); 4 keeps four
# times the latent positions (16x16) for the small sprites the 8x VAE loses (docs/RESULTS.md).
VAE_BASE = {
    "base_dim": 16, "z_dim": 16, "num_res_blocks": 1, "is_residual": True, "patch_size": 2, "in_channels": 12,
    "out_channels": 12, "scale_factor_temporal": 1,
}
VAE_CONFIGS = {
    8: {**VAE_BASE, "dim_mult": [1, 2, 2], "temperal_downsample": [False, False], "scale_factor_spatial": 8},
    4: {**VAE_BASE, "dim_mult": [2, 2], "temperal_downsample": [False], "scale_factor_spatial": 4},
}
VAE_SCALE = 4  # the recipe's: on the same 60 clips the 8x VAE keeps shape in 0.63 of frames, this one 0.92
TOKEN_PIXELS = 16  # a transformer token covers 16x16 pixels whatever the VAE: patch = TOKEN_PIXELS / VAE scale
SPRITE_WEIGHT = 4.0  # extra reconstruction weight on pixels far from the frame's median colour (sprites)
MOTION_WEIGHT = 4.0  # extra flow-matching weight on latents far from their stream's static background (sprites)
TEXT_CONFIG = {
    "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4, "dropout_rate": 0.0,
    "feed_forward_proj": "gated-gelu",
}
TRANSFORMER_CONFIG = {
    "num_attention_heads": 4, "attention_head_dim": 32, "ffn_dim": 384, "num_layers": 4,
    "freq_dim": 64,
}
SCHEDULER_SHIFT = 3.0
KL_WEIGHT = 1e-5  # per latent element, against the per-pixel L1: a light pull of the posterior towards N(0, 1)
EMA_DECAY = 0.999  # the saved transformer and text encoder are this exponential moving average of the trained ones
# Sizes per machine: the 2-core development VM, and one lent H100/H200 (docs/RESULTS.md has the times).
# A ``*_seconds`` budget caps its stage's steps at what fits that time (StepBudget); None runs every step.
PROFILES: dict[str, dict[str, float | None]] = {
    "cpu": {"vae_steps": 3000, "vae_seconds": None, "vae_batch": 12, "vae_lr": 1e-3, "streams": 600,
            "transformer_steps": 8000, "transformer_seconds": None, "batch": 16, "image_batch": 64, "lr": 1e-3, "workers": 2},
    "gpu": {"vae_steps": 20000, "vae_seconds": 50.0, "vae_batch": 96, "vae_lr": 1e-3, "streams": 4000,
            "transformer_steps": 100000, "transformer_seconds": 150.0, "batch": 128, "image_batch": 512, "lr": 1e-3, "workers": 6},
}
SIZES_MAY_BE_ZERO = ("vae_steps", "transformer_steps", "image_batch")  # a stage or a batch left out; other sizes > 0
LEVEL_MODES = ("shared", "mixed")


def video_tensor(frames: np.ndarray) -> Tensor:
    """uint8 ``[F, H, W, 3]`` -> float ``[3, F, H, W]`` in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1


def random_clips(rng: np.random.Generator, count: int, num_frames: int, world: World) -> tuple[Tensor, list[str]]:
    """``count`` clips of fresh scenes of ``world`` from random points of their trajectories, and their prompts."""
    scenes = [world.sample_scene(rng) for _ in range(count)]
    clips = [
        video_tensor(render_clip(s, num_frames, SIZE, SIZE, seed=int(rng.integers(2**31)), start=int(rng.integers(400))))
        for s in scenes
    ]
    return torch.stack(clips), [s.prompt for s in scenes]


def _render(job: tuple[Scene, int, int, int]) -> np.ndarray:
    """One stream's frames (a top-level function so worker processes can run it)."""
    scene, frames, seed, start = job
    return render_clip(scene, frames, SIZE, SIZE, seed=seed, start=start)


def render_streams(
    rng: np.random.Generator, count: int, frames: int, workers: int, world: World
) -> tuple[np.ndarray, list[str]]:
    """``count`` streams of fresh scenes of ``world`` as uint8 ``[N, F, H, W, 3]`` and their prompts; the
    scenes, seeds and start frames come from ``rng`` alone, so the result does not depend on ``workers``."""
    scenes = [world.sample_scene(rng) for _ in range(count)]
    jobs = [(s, frames, int(rng.integers(2**31)), int(rng.integers(400))) for s in scenes]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            clips = list(pool.map(_render, jobs, chunksize=64))
    else:
        clips = [_render(j) for j in jobs]
    return np.stack(clips), [s.prompt for s in scenes]


class StepBudget:
    """``steps`` training steps, or with ``seconds`` as many as fit that time at the rate measured over
    steps 10-50 (the count is fixed from step 50 on, so the learning-rate schedule knows its end)."""

    def __init__(self, steps: int, seconds: float | None, device: torch.device) -> None:
        self.steps, self.seconds, self.device = steps, seconds, device

    def __iter__(self):
        step = 0
        while step < self.steps:
            yield step
            step += 1
            if self.seconds and step in (10, 50):
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                if step == 10:
                    start = time.monotonic()
                else:
                    rate = (time.monotonic() - start) / 40
                    self.steps = min(self.steps, max(step, int(self.seconds / rate)))


def cosine_lr(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def reconstruction_loss(vae: AutoencoderKLWan, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted L1 and MSE of the posterior mean's reconstruction, and the KL per latent element.

    Sprites cover a few percent of a frame, so pixels far from the frame's median colour weigh
    ``1 + SPRITE_WEIGHT``; the reconstruction is of the posterior mean (sampled latents stall
    this short training)."""
    posterior = vae.encode(x).latent_dist
    recon = StreamingDecoder(vae).decode_raw(posterior.mode())
    median = x.flatten(3).median(dim=3).values[..., None, None]
    weight = 1 + SPRITE_WEIGHT * ((x - median).abs().amax(dim=1, keepdim=True) > 0.25).float()
    error = recon - x
    kl = posterior.kl().mean() / posterior.mean[0].numel()
    return (error.abs() * weight).mean(), (error.pow(2) * weight).mean(), kl


def per_frame_vae(scale: int) -> AutoencoderKLWan:
    """A fresh VAE with ``scale``x spatial compression (``VAE_CONFIGS``) whose causal convolutions see only
    the current frame: the taps on earlier frames start at zero, and single-frame training (zero padding in
    front) never moves them, so every frame of a video is encoded and decoded exactly as an image."""
    config = VAE_CONFIGS[scale]
    z = config["z_dim"]
    vae = AutoencoderKLWan(**config, latents_mean=[0.0] * z, latents_std=[1.0] * z)
    with torch.no_grad():
        for conv in vae.modules():
            if isinstance(conv, WanCausalConv3d) and conv.kernel_size[0] > 1:
                conv.weight[:, :, :-1] = 0
    return vae


def train_vae(frames: np.ndarray, scale: int, steps: StepBudget, batch: int, lr: float, seed: int) -> AutoencoderKLWan:
    """The VAE on single frames drawn from ``frames`` (uint8 ``[N, F, H, W, 3]``): weighted L1 + MSE plus a
    small KL; every 500 steps the analyzer scores its reconstructions of held-out clips."""
    device = steps.device
    vae = per_frame_vae(scale).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, steps.steps, 20))
    held_out = random_clips(np.random.default_rng(12345), 8, CLIP, WORLDS["full"])
    pool = torch.from_numpy(frames.reshape(-1, *frames.shape[2:]))  # every frame of every stream
    g = torch.Generator().manual_seed(seed)
    for step in steps:
        picks = pool[torch.randint(pool.shape[0], (batch,), generator=g)]
        images = video_tensor(picks.numpy()).permute(1, 0, 2, 3).unsqueeze(2).to(device)  # [B, 3, 1, H, W]
        l1, mse, kl = reconstruction_loss(vae, images)
        opt.zero_grad()
        (l1 + mse + KL_WEIGHT * kl).backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        log(f"vae {step + 1}/{steps.steps} l1 {l1.item():.4f} mse {mse.item():.4f} kl {kl.item():.3f}", step, steps.steps, every=250)
        if (step + 1) % 1000 == 0 or step == steps.steps - 1:
            log(f"vae {step + 1}/{steps.steps} held-out reconstructions: {reconstruction_rates(vae.eval(), *held_out)}", 0, 1)
            vae.train()
    return vae.eval()


def sprite_group(prompt: str) -> str:
    """Which kind of scene a prompt is for the per-sprite rates: one small sprite, one large, or two."""
    sprites = parse_prompt(prompt).sprites
    return sprites[0].size if len(sprites) == 1 else "two"


def mean_rates(reports: list[ToyReport], prompts: list[str], names: tuple[str, ...]) -> dict[str, float | None]:
    """The analyzer's ``names`` rates over all frames of ``reports``, and the shape rate by ``sprite_group``
    (small sprites are what an 8x VAE loses, docs/RESULTS.md)."""
    rates = {k: float(np.mean([getattr(r, k) for r in reports])) for k in names}
    groups = [sprite_group(p) for p in prompts]
    for group in ("small", "large", "two"):
        mine = [r.shape_rate for r, g in zip(reports, groups) if g == group]
        rates[f"shape_rate_{group}"] = float(np.mean(mine)) if mine else None
    return rates


@torch.no_grad()
def reconstruction_rates(vae: AutoencoderKLWan, clips: Tensor, prompts: list[str]) -> dict[str, float | None]:
    """The analyzer's colour, shape and background rates on the VAE's reconstructions of real toy clips:
    the ceiling any transformer works under."""
    device = next(vae.parameters()).device
    frames = to_uint8(vae.decode(vae.encode(clips.to(device)).latent_dist.mode()).sample.cpu()).numpy()
    reports = [analyze(f, p) for f, p in zip(frames, prompts)]
    return mean_rates(reports, prompts, ("color_rate", "shape_rate", "background_rate"))


@torch.no_grad()
def encode_streams(vae: AutoencoderKLWan, frames: np.ndarray, chunk: int) -> Tensor:
    """Posterior-mean latents ``[N, C, F, h, w]`` (on the VAE's device) of uint8 streams ``[N, F, H, W, 3]``."""
    device = next(vae.parameters()).device
    latents = []
    for i in range(0, frames.shape[0], chunk):
        latents.append(vae.encode(torch.stack([video_tensor(f) for f in frames[i : i + chunk]]).to(device)).latent_dist.mean)
        log(f"encoded {i + len(latents[-1])}/{frames.shape[0]} streams", i // chunk, math.ceil(frames.shape[0] / chunk))
    return torch.cat(latents)


def set_latent_norm(vae: AutoencoderKLWan, latents: Tensor) -> None:
    """Store the per-channel mean and std of the encoded data in the VAE config (Wan's normalisation)."""
    flat = latents.transpose(0, 1).flatten(1)
    vae.register_to_config(latents_mean=flat.mean(1).tolist(), latents_std=flat.std(1).tolist())


def sample_sigmas(batch: int, levels: str, g: torch.Generator) -> Tensor:
    """Per-latent sigmas ``[B, WINDOW]``, drawn uniformly and time-shifted as the sampling grid is:
    ``shared`` one per window (as real video models are trained); ``mixed`` a third shared, a third
    independent per latent, a third independent and sorted (head cleaner, as in FIFO/MIGA queues)."""
    u = torch.rand(batch, WINDOW, generator=g, device=g.device)
    if levels == "shared":
        u = u[:, :1].expand(batch, WINDOW)
    else:
        mode = torch.randint(3, (batch, 1), generator=g, device=g.device)
        u = torch.where(mode == 0, u[:, :1], torch.where(mode == 1, u, u.sort(dim=1).values))
    return SCHEDULER_SHIFT * u / (1 + (SCHEDULER_SHIFT - 1) * u)


def motion_weights(latents: Tensor) -> Tensor:
    """Per-position loss weights ``[N, 1, F, h, w]`` of normalised latents: backgrounds are static, so a
    position's distance from its stream's temporal median marks the sprites, a few percent of the
    positions that decide the prompt's colours and shapes."""
    distance = (latents - latents.median(dim=2, keepdim=True).values).pow(2).mean(1, keepdim=True).sqrt()
    return 1 + MOTION_WEIGHT * distance.clamp(max=1.0)


class TrainingState:
    """The transformer stage's whole state in ``folder`` (safetensors + JSON, never pickle): trained and
    averaged weights, optimizer moments, the sampling generator, the step and the clocks, so a run of many
    CPU hours survives the end of a session and resumes to the weights an unbroken run gives."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def exists(self) -> bool:
        """Whether a saved state is there."""
        return (self.folder / "state.json").is_file()

    def meta(self) -> dict:
        """The saved step, clocks and recipe."""
        return json.loads((self.folder / "state.json").read_text())

    def save(self, meta: dict, trained: torch.nn.Module, ema: AveragedModel, opt: torch.optim.Optimizer, g: torch.Generator) -> None:
        """Write every part, then ``state.json`` last, each by rename, so a kill leaves the previous state whole."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, module in (("trained", trained), ("ema", ema)):
            save_model(module, str(self.folder / f"{name}.tmp"))
            (self.folder / f"{name}.tmp").replace(self.folder / f"{name}.safetensors")
        opt_state = opt.state_dict()
        tensors = {f"{i}.{k}": v.detach().cpu().contiguous() for i, st in opt_state["state"].items() for k, v in st.items()}
        tensors["generator"] = g.get_state().cpu()
        save_file(tensors, str(self.folder / "optimizer.tmp"))
        (self.folder / "optimizer.tmp").replace(self.folder / "optimizer.safetensors")
        meta = {**meta, "param_groups": opt_state["param_groups"]}
        (self.folder / "state.tmp").write_text(json.dumps(meta) + "\n")
        (self.folder / "state.tmp").replace(self.folder / "state.json")

    def load(self, trained: torch.nn.Module, ema: AveragedModel, opt: torch.optim.Optimizer, g: torch.Generator) -> dict:
        """Load every part into the given objects; returns the saved meta (step, clocks, recipe)."""
        meta = self.meta()
        device = next(trained.parameters()).device
        load_model(trained, str(self.folder / "trained.safetensors"), device=str(device))
        load_model(ema, str(self.folder / "ema.safetensors"), device=str(device))
        tensors = load_file(str(self.folder / "optimizer.safetensors"), device=str(device))
        g.set_state(tensors.pop("generator").cpu())
        state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        return meta


class Clock:
    """CPU and wall seconds of this stage across resumed runs, and the peak resident memory of this process."""

    def __init__(self, cpu: float = 0.0, wall: float = 0.0) -> None:
        self.cpu0, self.wall0 = time.process_time() - cpu, time.monotonic() - wall

    def as_dict(self) -> dict[str, float]:
        """Seconds so far and the peak RSS in MiB."""
        return {"cpu_seconds": round(time.process_time() - self.cpu0, 1), "wall_seconds": round(time.monotonic() - self.wall0, 1),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def easy_streams(prompts: list[str]) -> list[int]:
    """Streams of one large sprite: what a curriculum shows first (the shape decided by the most pixels)."""
    easy = []
    for i, prompt in enumerate(prompts):
        sprites = parse_prompt(prompt).sprites
        if len(sprites) == 1 and sprites[0].size == "large":
            easy.append(i)
    return easy


def train_transformer(
    latents: Tensor, prompts: list[str], text: T5PromptEncoder, recipe: dict, steps: StepBudget, state: TrainingState,
    checkpoint: Callable[[int, torch.nn.ModuleList, dict], None], every: int, until: int | None = None,
) -> WanTransformer3DModel | None:
    """Flow matching of the transformer (``recipe["patch"]`` x ``patch`` latents per token) and text encoder
    on normalised latent windows (on ``latents``'s device), weighted towards the moving sprites, with
    ``recipe["levels"]`` noise levels per window, and on ``image_batch`` single frames per step alongside
    (joint image-video training, as Wan and VideoCrafter2 were trained); the first ``curriculum`` of the
    steps only on streams of one large sprite. Every ``every`` steps the state is saved (resumable) and
    ``checkpoint(step, averaged modules, clock)`` runs; returns the exponential moving average of both
    (set into ``text`` too), or None when it stops at step ``until`` before the schedule's end (saved, to
    resume)."""
    device = latents.device
    g = torch.Generator(device).manual_seed(recipe["seed"])
    channels = latents.shape[1]
    weights = motion_weights(latents)
    heads, patch = recipe["heads"], recipe["patch"]
    transformer = WanTransformer3DModel(
        **{**TRANSFORMER_CONFIG, "num_attention_heads": heads, "ffn_dim": 3 * heads * TRANSFORMER_CONFIG["attention_head_dim"]},
        patch_size=(1, patch, patch), in_channels=channels, out_channels=channels, text_dim=TEXT_CONFIG["d_model"],
    ).to(device)
    text.text_encoder.to(device)
    trained = torch.nn.ModuleList([transformer, text.text_encoder])
    params = list(trained.parameters())
    ema = AveragedModel(trained, multi_avg_fn=get_ema_multi_avg_fn(EMA_DECAY), use_buffers=True)
    opt = torch.optim.AdamW(params, lr=recipe["lr"], weight_decay=0.01)
    first, clock = 0, Clock()
    if state.exists():
        meta = state.load(trained, ema, opt, g)
        first, steps.steps, clock = meta["step"], meta["steps"], Clock(meta["cpu_seconds"], meta["wall_seconds"])
        log(f"resumed at step {first}/{steps.steps} from {state.folder}", 0, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, steps.steps, 200), last_epoch=first - 1)
    tokens_per_frame = (latents.shape[3] // patch) * (latents.shape[4] // patch)
    tokens = text.tokenize([*prompts, ""]).to(device)  # every prompt once; the last row is the dropped prompt
    offsets = torch.arange(WINDOW, device=device)
    easy = torch.tensor(easy_streams(prompts), device=device, dtype=torch.long)
    curriculum_steps = int(recipe["curriculum"] * steps.steps)
    text.text_encoder.train()

    def flow_loss(idx: Tensor, frames: Tensor, sigma: Tensor) -> Tensor:
        """Weighted flow-matching loss of the clips at ``frames`` ``[B, F]`` of streams ``idx`` ``[B]``, at
        per-latent ``sigma`` ``[B, F]``, under the streams' prompts, a tenth of them dropped to the empty one."""
        x0, weight = (t[idx[:, None], :, frames].permute(0, 2, 1, 3, 4) for t in (latents, weights))
        n, length = sigma.shape
        noise = torch.randn(x0.shape, generator=g, device=device)
        s = sigma.view(n, 1, length, 1, 1)
        drop = torch.rand(n, generator=g, device=device) < 0.1
        rows = torch.where(drop, len(prompts), idx)
        context = embed_tokens(text.text_encoder, tokens.input_ids[rows], tokens.attention_mask[rows])
        timestep = frame_timesteps_to_tokens(sigma * 1000, n, tokens_per_frame)
        pred = transformer((1 - s) * x0 + s * noise, timestep, context, return_dict=False)[0]
        return ((pred - (noise - x0)).pow(2) * weight).mean()

    def streams(count: int, step: int) -> Tensor:
        """Stream indices for a batch: any stream, or during the curriculum one of the easy ones."""
        if step < curriculum_steps and len(easy):
            return easy[torch.randint(len(easy), (count,), generator=g, device=device)]
        return torch.randint(latents.shape[0], (count,), generator=g, device=device)

    batch, image_batch = recipe["batch"], recipe["image_batch"]
    for step in steps:
        if step < first:
            continue
        idx = streams(batch, step)
        keep_start = torch.rand(batch, generator=g, device=device) > 0.25  # a quarter of windows open their stream
        start = torch.randint(STREAM - WINDOW + 1, (batch,), generator=g, device=device) * keep_start
        loss = flow_loss(idx, start[:, None] + offsets, sample_sigmas(batch, recipe["levels"], g))
        if image_batch:
            idx = streams(image_batch, step)
            frame = torch.randint(STREAM, (image_batch, 1), generator=g, device=device)
            loss = loss + flow_loss(idx, frame, sample_sigmas(image_batch, "shared", g)[:, :1])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.update_parameters(trained)
        log(f"transformer {step + 1}/{steps.steps} loss {loss.item():.4f}", step, steps.steps, every=500)
        done = step + 1
        if every and (done % every == 0 or done in (steps.steps, until)):
            meta = {"step": done, "steps": steps.steps, "recipe": recipe, **clock.as_dict()}
            state.save(meta, trained, ema, opt, g)
            checkpoint(done, ema.module, clock.as_dict())
        if done == until:
            return None
    transformer, text.text_encoder = ema.module
    text.text_encoder.eval().to("cpu")
    return transformer.eval().to("cpu")


_T0 = time.monotonic()


def log(message: str, step: int, steps: int, every: int = 50) -> None:
    """Print progress every ``every`` steps and at the end, with the elapsed wall time."""
    if step % every == 0 or step == steps - 1:
        print(f"[{time.monotonic() - _T0:7.0f}s] {message}", flush=True)


STATE_DIR = "train_state"  # the resumable transformer state inside --out
CURVE = "curve.jsonl"  # the learning curve inside --out: one row per checkpoint (step, clocks, gate rates)


def train(
    out: Path, sizes: dict[str, float | None], knobs: dict, vae_scale: int, device: torch.device, vae_from: Path | None
) -> None:
    """Every stage (the VAE, ``vae_scale``x spatial, taken from ``vae_from`` when given), then save the
    pipeline (safetensors + JSON) and ``miga.json`` with the recipe, the steps actually run included, to ``out``.
    With ``knobs["gate_every"]`` the transformer's state is saved that often (a rerun of the same command
    resumes from it) and the quality gate scores the averaged weights, one row of ``curve.jsonl`` each."""
    seed, world = knobs["seed"], WORLDS[knobs["world"]]
    if vae_from is not None:
        vae_scale = AutoencoderKLWan.load_config(vae_from, subfolder="vae")["scale_factor_spatial"]
    recipe = {"levels": knobs["levels"], "world": knobs["world"], "curriculum": knobs["curriculum"],
              "patch": knobs["token_pixels"] // vae_scale, "heads": knobs["heads"], "seed": seed,
              "batch": int(sizes["batch"]), "image_batch": int(sizes["image_batch"]), "lr": sizes["lr"]}
    state = TrainingState(out / STATE_DIR)
    if state.exists() and state.meta()["recipe"] != recipe:  # before any work
        saved = state.meta()["recipe"]
        differ = ", ".join(f"{k}: saved {saved.get(k)!r}, asked {v!r}" for k, v in recipe.items() if saved.get(k) != v)
        print(f"--out {out} holds the state of another recipe ({differ}); give another --out", file=sys.stderr)
        raise SystemExit(2)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    streams, prompts = render_streams(rng, int(sizes["streams"]), frames_of_latents(STREAM, 1), int(sizes["workers"]), world)
    log(f"rendered {len(prompts)} streams of {streams.shape[1]} frames", 0, 1)
    vae_steps = StepBudget(int(sizes["vae_steps"]), sizes["vae_seconds"], device)
    if vae_from is None:
        vae = train_vae(streams, vae_scale, vae_steps, int(sizes["vae_batch"]), sizes["vae_lr"], seed)
    else:
        vae = AutoencoderKLWan.from_pretrained(vae_from, subfolder="vae").to(device).eval()
        vae_steps.steps = 0
    latents = encode_streams(vae, streams, 64 if device.type == "cuda" else 4)
    del streams
    if vae_from is None:
        set_latent_norm(vae, latents)
    mean, std = latent_norm(vae)
    latents = (latents - mean.to(latents.device)) / std.to(latents.device)
    tokenizer = build_toy_tokenizer([*GRAMMAR, *SIZES, *COLORS, *SHAPES, *BACKGROUNDS], TEXT_LEN)
    text = T5PromptEncoder(tokenizer, UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), **TEXT_CONFIG)))
    steps = StepBudget(int(sizes["transformer_steps"]), sizes["transformer_seconds"], device)
    scheduler = UniPCMultistepScheduler(**{**WAN21_SCHEDULER, "flow_shift": SCHEDULER_SHIFT})

    def save(transformer: WanTransformer3DModel, text_encoder: torch.nn.Module, extra: dict) -> None:
        """The pipeline and ``miga.json`` (the recipe, the world, ``extra``) into ``out``."""
        pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=scheduler)
        pipe.save_pretrained(out, safe_serialization=True)
        meta = {"device": device.type, "vae_from": str(vae_from) if vae_from else None, "vae_scale": vae_scale,
                "token_pixels": knobs["token_pixels"], **sizes, **recipe, "vae_steps": vae_steps.steps, **extra}
        (out / "miga.json").write_text(json.dumps(
            {"resolution": [SIZE, SIZE], "window": WINDOW, "world": world.as_json(), "recipe": meta}) + "\n")

    def checkpoint(step: int, averaged: torch.nn.ModuleList, clock: dict) -> None:
        """Save the averaged weights as the pipeline and append their quality gate to the learning curve."""
        transformer, text_encoder = (copy.deepcopy(m).to("cpu").eval() for m in averaged)
        save(transformer, text_encoder, {"transformer_steps": step, **clock})
        preset = get_preset(PRESET)
        gate = quality_gate(out, knobs["gate_prompts"], preset.num_levels, preset.cfg_scale, 0, device)
        row = {"step": step, **clock, **{k: gate[k] for k in (*GATE_RATES, "gate_met")}}
        with (out / CURVE).open("a") as curve:
            curve.write(json.dumps(row) + "\n")
        log(f"checkpoint {json.dumps(row)}", 0, 1)

    vae.to("cpu")
    transformer = train_transformer(latents, prompts, text, recipe, steps, state, checkpoint, knobs["gate_every"], knobs["until_step"])
    if transformer is None:
        log(f"stopped at step {knobs['until_step']}; the same command without --until-step resumes", 0, 1)
        return
    final = {"transformer_steps": steps.steps, "seconds": round(time.monotonic() - _T0)}
    if state.exists():
        final.update({k: v for k, v in state.meta().items() if k.endswith(("_seconds", "_mib"))})
    save(transformer, text.text_encoder, final)
    print(f"[{time.monotonic() - _T0:7.0f}s] saved to {out}: {json.dumps(final)}", flush=True)


GATE_RATES = ("color_rate", "background_rate", "shape_rate", "count_rate")  # what the gate asks of base clips
GATE_MINIMUM = {"color_rate": 0.9, "background_rate": 0.9, "shape_rate": 0.8, "count_rate": 0.8}


@torch.no_grad()
def quality_gate(source: Path, prompts: int, steps: int, cfg: float, seed: int, device: torch.device) -> dict[str, float]:
    """Base sampler only: one window per prompt of the model's world, all latents at one level, plain Euler
    over the model's grid with CFG; the analyzer's recognition rates over all frames against ``GATE_MINIMUM``, the same
    rates for the VAE's reconstructions of real toy clips (the ceiling the transformer works under),
    and the time of one model call."""
    model = load_pipeline(str(source), device=device, dtype=torch.float32)
    world = World.trained(source)
    rng = np.random.default_rng(seed)
    texts = [world.sample_scene(rng).prompt for _ in range(prompts)]
    pos, neg = model.encode_prompt(texts)
    cond = Conditioning(pos, neg, cfg)
    grid = model.grid(steps)
    solver = FlowEuler(grid)
    h, w = (r // model.vae_scale[1] for r in model.default_resolution)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(prompts, model.latent_channels, model.default_window, h, w, generator=g).to(device)
    for level in range(steps, 0, -1):
        at = torch.full((model.default_window,), level)
        x = solver.step(x, guided_forward(model.denoiser, x, grid.timesteps[at].to(device), cond), at)
    frames = model.decoder().push(x).cpu().numpy()
    rates = mean_rates([analyze(f, t) for f, t in zip(frames, texts)], texts, GATE_RATES)
    vae_rates = reconstruction_rates(model.decoder().vae, *random_clips(rng, prompts, CLIP, world))
    staircase = grid.timesteps[torch.linspace(1, steps, model.default_window).round().long()].to(device)
    start = time.monotonic()
    for _ in range(20):
        model.denoiser(x[:1], staircase, pos[:1].to(device))
    return {
        **rates,
        "gate_met": all(rates[k] >= v for k, v in GATE_MINIMUM.items()),
        **{f"vae_reconstruction_{k}": v for k, v in vae_rates.items()},
        "seconds_per_model_call": (time.monotonic() - start) / 20,
    }


def main() -> None:
    """Parse the command line and train or evaluate."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=TOY_DIR, help="checkpoint directory (default: the shipped one)")
    parser.add_argument("--eval", action="store_true", help="run the quality gate on --out instead of training")
    parser.add_argument("--levels", choices=LEVEL_MODES, default="shared", help="noise levels per training window (default shared)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu", help="training sizes (default cpu)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 on a machine busy with other work)")
    parser.add_argument("--vae-from", type=Path, help="take the VAE of this checkpoint instead of training one")
    parser.add_argument("--vae-scale", type=int, choices=sorted(VAE_CONFIGS), help=f"spatial compression of a new VAE (default {VAE_SCALE})")
    for name, value in PROFILES["gpu"].items():
        low = 0 if name in SIZES_MAY_BE_ZERO else 1
        size = at_least(float, 0, strict=True) if isinstance(value, float) else at_least(int, low)
        parser.add_argument(f"--{name.replace('_', '-')}", type=size, help=f"overrides the profile's {name}")
    parser.add_argument("--world", choices=sorted(WORLDS), default="full", help="the part of the grammar to train on (default full)")
    parser.add_argument("--curriculum", type=at_least(float, 0), default=0.0,
                        help="share of the transformer's steps shown only one large sprite first (default 0)")
    parser.add_argument("--token-pixels", type=int, choices=(8, 16), default=TOKEN_PIXELS,
                        help=f"pixels a transformer token covers per side (default {TOKEN_PIXELS})")
    parser.add_argument("--heads", type=at_least(int, 1), default=TRANSFORMER_CONFIG["num_attention_heads"],
                        help=f"attention heads of {TRANSFORMER_CONFIG['attention_head_dim']} channels: the width (default 4)")
    parser.add_argument("--gate-every", type=at_least(int, 0), default=0,
                        help="save the resumable state and gate the averaged weights every N transformer steps (0: never)")
    parser.add_argument("--until-step", type=at_least(int, 1),
                        help="stop after this transformer step, saved; the same command resumes (needs --gate-every)")
    parser.add_argument("--prompts", type=at_least(int, 1), default=20, help="quality gate: prompts")
    parser.add_argument("--preset", default=PRESET, help=f"quality gate: the sampler preset whose T and CFG it uses (default {PRESET})")
    parser.add_argument("--steps", type=int, help="quality gate: grid levels (default: the preset's T)")
    parser.add_argument("--cfg", type=float, help="quality gate: guidance scale (default: the preset's)")
    args = parser.parse_args()
    preset = get_preset(args.preset)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.eval:
        steps, cfg = args.steps or preset.num_levels, args.cfg or preset.cfg_scale
        print(json.dumps(quality_gate(args.out, args.prompts, steps, cfg, args.seed, device), indent=2))
        return
    sizes = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in PROFILES[args.profile].items()}
    if args.vae_from and args.vae_scale:
        parser.error("--vae-scale: the VAE of --vae-from sets the scale; give one of them")
    if args.curriculum >= 1:
        parser.error(f"--curriculum: a share of the steps below 1, got {args.curriculum}")
    if args.until_step and not args.gate_every:
        parser.error("--until-step: needs --gate-every, which saves the state it resumes from")
    knobs = {"until_step": args.until_step, "levels": args.levels, "world": args.world, "curriculum": args.curriculum, "token_pixels": args.token_pixels,
             "heads": args.heads, "seed": args.seed, "gate_every": args.gate_every, "gate_prompts": args.prompts}
    train(args.out, sizes, knobs, args.vae_scale or VAE_SCALE, device, args.vae_from)


if __name__ == "__main__":
    main()
