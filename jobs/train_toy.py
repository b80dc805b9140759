"""Train the shipped toy model on the toy world, write it as a diffusers Wan pipeline, and gate its quality.

    python jobs/train_toy.py [--out DIR] [--threads 1]   # train (deterministic, CPU) into DIR
    python jobs/train_toy.py --eval [--out DIR]          # quality gate of the checkpoint in DIR

Stages: (1) the VAE (``AutoencoderKLWan`` with Wan2.2's patch and residual options, no temporal
compression, temporal taps zero: a per-frame autoencoder like VideoCrafter2's; sprite-weighted
L1 + MSE reconstruction + small KL) on single frames; (2) encode
long toy-world streams and set the VAE config's latent mean/std; (3) the transformer
(``WanTransformer3DModel``) and the tiny UMT5 text encoder together, flow matching on windows
cropped from those streams, with a level shared by the window, independent per latent, or
independent and sorted (head cleaner, as in FIFO/MIGA queues), and 10% of prompts dropped to ""
for classifier-free guidance; the saved weights are an exponential moving average of the trained ones.
About 33 minutes with the default 2 threads on the 2-core development VM (docs/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import UMT5Config, UMT5EncoderModel

from miga_ray.models.decode import StreamingDecoder, frames_of_latents, latent_norm, to_uint8
from miga_ray.models.registry import TOY_DIR, load_model
from miga_ray.models.toy_tokenizer import build_toy_tokenizer
from miga_ray.models.toy_world import BACKGROUNDS, COLORS, SHAPES, SIZES, analyze, render_clip, sample_scene
from miga_ray.models.wan import WAN21_SCHEDULER, T5PromptEncoder, embed_tokens, frame_timesteps_to_tokens
from miga_ray.sampling.denoiser import Conditioning, guided_forward
from miga_ray.sampling.presets import get_preset
from miga_ray.sampling.solvers import FlowEuler

SIZE = 64  # pixels, square
WINDOW = 8  # latents per window: 8 frames
STREAM = 25  # latents per encoded training stream: 25 frames (Wan's encoder takes 1 + 4k frames)
CLIP = 9  # frames of the real clips whose reconstructions score the VAE
TEXT_LEN = 32
GRAMMAR = ("a", "an", "and", "moving", "over", "on", "the")
# Wan2.2-style options of the same AutoencoderKLWan class: a lossless 2x2 space-to-depth patch in front
# of the convolutions (so they run at 32x32) and residual shortcuts around every resampling stage; 8x
# spatial compression to 16 channels and none in time. With Wan's 4x temporal compression a CPU does not
# train the temporal path in the recipe's budget (reconstructions recognised in about half the frames,
# docs/RESULTS.md); per frame, images alone train it in minutes.
VAE_CONFIG = {
    "base_dim": 16, "z_dim": 16, "dim_mult": [1, 2, 2], "num_res_blocks": 1, "temperal_downsample": [False, False],
    "is_residual": True, "patch_size": 2, "in_channels": 12, "out_channels": 12, "scale_factor_spatial": 8,
    "scale_factor_temporal": 1,
}
VAE_IMAGES = 12  # single frames per VAE step
SPRITE_WEIGHT = 4.0  # extra reconstruction weight on pixels far from the frame's median colour (sprites)
MOTION_WEIGHT = 4.0  # extra flow-matching weight on latents far from their stream's static background (sprites)
TEXT_CONFIG = {
    "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4, "dropout_rate": 0.0,
    "feed_forward_proj": "gated-gelu",
}
TRANSFORMER_CONFIG = {
    "patch_size": (1, 2, 2), "num_attention_heads": 4, "attention_head_dim": 32, "ffn_dim": 384, "num_layers": 4,
    "freq_dim": 64,
}
SCHEDULER_SHIFT = 3.0
KL_WEIGHT = 1e-5  # per latent element, against the per-pixel L1: a light pull of the posterior towards N(0, 1)
EMA_DECAY = 0.999  # the saved transformer and text encoder are this exponential moving average of the trained ones


def video_tensor(frames: np.ndarray) -> Tensor:
    """uint8 ``[F, H, W, 3]`` -> float ``[3, F, H, W]`` in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1


def random_clips(rng: np.random.Generator, count: int, num_frames: int) -> tuple[Tensor, list[str]]:
    """``count`` clips of fresh scenes from random points of their trajectories, and their prompts."""
    scenes = [sample_scene(rng) for _ in range(count)]
    clips = [
        video_tensor(render_clip(s, num_frames, SIZE, SIZE, seed=int(rng.integers(2**31)), start=int(rng.integers(400))))
        for s in scenes
    ]
    return torch.stack(clips), [s.prompt for s in scenes]


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


def per_frame_vae() -> AutoencoderKLWan:
    """A fresh VAE whose causal convolutions see only the current frame: the taps on earlier frames start
    at zero, and single-frame training (zero padding in front) never moves them, so every frame of a
    video is encoded and decoded exactly as an image."""
    z = VAE_CONFIG["z_dim"]
    vae = AutoencoderKLWan(**VAE_CONFIG, latents_mean=[0.0] * z, latents_std=[1.0] * z)
    with torch.no_grad():
        for conv in vae.modules():
            if isinstance(conv, WanCausalConv3d) and conv.kernel_size[0] > 1:
                conv.weight[:, :, :-1] = 0
    return vae


def train_vae(steps: int, rng: np.random.Generator, lr: float) -> AutoencoderKLWan:
    """The VAE on single frames: weighted L1 + MSE plus a small KL; every 250 steps the analyzer scores
    its reconstructions of held-out clips."""
    vae = per_frame_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, steps, 20))
    held_out = random_clips(np.random.default_rng(12345), 4, CLIP)
    for step in range(steps):
        l1, mse, kl = reconstruction_loss(vae, random_clips(rng, VAE_IMAGES, 1)[0])
        opt.zero_grad()
        (l1 + mse + KL_WEIGHT * kl).backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        log(f"vae {step + 1}/{steps} l1 {l1.item():.4f} mse {mse.item():.4f} kl {kl.item():.3f}", step, steps)
        if (step + 1) % 250 == 0 or step == steps - 1:
            log(f"vae {step + 1}/{steps} held-out reconstructions: {reconstruction_rates(vae.eval(), *held_out)}", 0, 1)
            vae.train()
    return vae.eval()


@torch.no_grad()
def reconstruction_rates(vae: AutoencoderKLWan, clips: Tensor, prompts: list[str]) -> dict[str, float]:
    """The analyzer's colour and background rates on the VAE's reconstructions of real toy clips: the
    ceiling any transformer works under."""
    frames = to_uint8(vae.decode(vae.encode(clips).latent_dist.mode()).sample).numpy()
    reports = [analyze(f, p) for f, p in zip(frames, prompts)]
    return {
        "color_rate": round(float(np.mean([r.color_rate for r in reports])), 3),
        "background_rate": round(float(np.mean([r.background_rate for r in reports])), 3),
    }


@torch.no_grad()
def encode_streams(vae: AutoencoderKLWan, count: int, rng: np.random.Generator) -> tuple[Tensor, list[str]]:
    """``count`` long streams as posterior-mean latents ``[N, C, STREAM, h, w]`` and their prompts."""
    latents, prompts = [], []
    frames = frames_of_latents(STREAM, VAE_CONFIG["scale_factor_temporal"])
    for i in range(0, count, 4):
        x, p = random_clips(rng, min(4, count - i), frames)
        latents.append(vae.encode(x).latent_dist.mean)
        prompts += p
        log(f"encoded {len(prompts)}/{count} streams", i // 4, math.ceil(count / 4))
    return torch.cat(latents), prompts


def set_latent_norm(vae: AutoencoderKLWan, latents: Tensor) -> None:
    """Store the per-channel mean and std of the encoded data in the VAE config (Wan's normalisation)."""
    flat = latents.transpose(0, 1).flatten(1)
    vae.register_to_config(latents_mean=flat.mean(1).tolist(), latents_std=flat.std(1).tolist())


def sample_sigmas(batch: int, rng: torch.Generator) -> Tensor:
    """Per-latent sigmas ``[B, WINDOW]``: shared, independent, or independent and sorted (a third each),
    drawn uniformly and time-shifted as the sampling grid is."""
    u = torch.rand(batch, WINDOW, generator=rng)
    mode = torch.randint(3, (batch, 1), generator=rng)
    u = torch.where(mode == 0, u[:, :1], torch.where(mode == 1, u, u.sort(dim=1).values))
    return SCHEDULER_SHIFT * u / (1 + (SCHEDULER_SHIFT - 1) * u)


def motion_weights(latents: Tensor) -> Tensor:
    """Per-position loss weights ``[N, 1, F, h, w]`` of normalised latents: backgrounds are static, so a
    position's distance from its stream's temporal median marks the sprites, a few percent of the
    positions that decide the prompt's colours and shapes."""
    distance = (latents - latents.median(dim=2, keepdim=True).values).pow(2).mean(1, keepdim=True).sqrt()
    return 1 + MOTION_WEIGHT * distance.clamp(max=1.0)


def train_transformer(
    latents: Tensor, prompts: list[str], text: T5PromptEncoder, steps: int, batch: int, seed: int
) -> WanTransformer3DModel:
    """Flow matching of the transformer and text encoder on normalised latent windows, weighted towards
    the moving sprites; returns the exponential moving average of both (set into ``text`` too)."""
    g = torch.Generator().manual_seed(seed)
    channels = latents.shape[1]
    weights = motion_weights(latents)
    transformer = WanTransformer3DModel(
        **TRANSFORMER_CONFIG, in_channels=channels, out_channels=channels, text_dim=TEXT_CONFIG["d_model"]
    )
    trained = torch.nn.ModuleList([transformer, text.text_encoder])
    params = list(trained.parameters())
    ema = AveragedModel(trained, multi_avg_fn=get_ema_multi_avg_fn(EMA_DECAY), use_buffers=True)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, steps, 200))
    tokens_per_frame = (latents.shape[3] // 2) * (latents.shape[4] // 2)
    text.text_encoder.train()
    for step in range(steps):
        idx = torch.randint(latents.shape[0], (batch,), generator=g)
        start = torch.randint(STREAM - WINDOW + 1, (batch,), generator=g) * (torch.rand(batch, generator=g) > 0.25)
        picks = list(zip(idx.tolist(), start.tolist()))
        x0, weight = (torch.stack([t[i, :, s : s + WINDOW] for i, s in picks]) for t in (latents, weights))
        noise = torch.randn(x0.shape, generator=g)
        sigma = sample_sigmas(batch, g)
        s = sigma.view(batch, 1, WINDOW, 1, 1)
        xt = (1 - s) * x0 + s * noise
        drop = torch.rand(batch, generator=g) < 0.1
        tokens = text.tokenize(["" if d else prompts[i] for i, d in zip(idx.tolist(), drop.tolist())])
        context = embed_tokens(text.text_encoder, tokens.input_ids, tokens.attention_mask)
        timestep = frame_timesteps_to_tokens(sigma * 1000, batch, tokens_per_frame)
        pred = transformer(xt, timestep, context, return_dict=False)[0]
        loss = ((pred - (noise - x0)).pow(2) * weight).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.update_parameters(trained)
        log(f"transformer {step + 1}/{steps} loss {loss.item():.4f}", step, steps)
    transformer, text.text_encoder = ema.module
    text.text_encoder.eval()
    return transformer.eval()


_T0 = time.monotonic()


def log(message: str, step: int, steps: int, every: int = 50) -> None:
    """Print progress every ``every`` steps and at the end, with the elapsed wall time."""
    if step % every == 0 or step == steps - 1:
        print(f"[{time.monotonic() - _T0:7.0f}s] {message}", flush=True)


def train(out: Path, vae_steps: int, vae_lr: float, streams: int, transformer_steps: int, seed: int) -> None:
    """All three stages, then save the pipeline (safetensors + JSON) and ``miga.json`` to ``out``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vae = train_vae(vae_steps, rng, vae_lr)
    latents, prompts = encode_streams(vae, streams, rng)
    set_latent_norm(vae, latents)
    mean, std = latent_norm(vae)
    latents = (latents - mean) / std
    tokenizer = build_toy_tokenizer([*GRAMMAR, *SIZES, *COLORS, *SHAPES, *BACKGROUNDS], TEXT_LEN)
    text = T5PromptEncoder(tokenizer, UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), **TEXT_CONFIG)))
    transformer = train_transformer(latents, prompts, text, transformer_steps, 16, seed)
    scheduler = UniPCMultistepScheduler(**{**WAN21_SCHEDULER, "flow_shift": SCHEDULER_SHIFT})
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text.text_encoder, transformer=transformer, vae=vae, scheduler=scheduler)
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "miga.json").write_text(json.dumps({"resolution": [SIZE, SIZE], "window": WINDOW}) + "\n")
    print(f"[{time.monotonic() - _T0:7.0f}s] saved to {out}", flush=True)


@torch.no_grad()
def quality_gate(source: Path, prompts: int, levels: int, cfg: float, seed: int) -> dict[str, float]:
    """Base sampler only: one window per prompt, all latents at one level, plain Euler over the model's
    grid with CFG; the analyzer's recognition rates over all frames, the same rates for the VAE's
    reconstructions of real toy clips (the ceiling the transformer works under), and the time of
    one model call."""
    model = load_model(str(source), device="cpu")
    rng = np.random.default_rng(seed)
    texts = [sample_scene(rng).prompt for _ in range(prompts)]
    pos, neg = model.encode_prompt(texts)
    cond = Conditioning(pos, neg, cfg)
    grid = model.grid(levels)
    solver = FlowEuler(grid)
    h, w = (r // model.vae_scale[1] for r in model.default_resolution)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(prompts, model.latent_channels, model.default_window, h, w, generator=g)
    for level in range(levels, 0, -1):
        at = torch.full((model.default_window,), level)
        x = solver.step(x, guided_forward(model.denoiser, x, grid.timesteps[at], cond), at)
    frames = model.decoder().push(x).numpy()
    reports = [analyze(f, t) for f, t in zip(frames, texts)]
    vae_rates = reconstruction_rates(model.decoder().vae, *random_clips(rng, prompts, CLIP))
    staircase = grid.timesteps[torch.linspace(1, levels, model.default_window).round().long()]
    start = time.monotonic()
    for _ in range(20):
        model.denoiser(x[:1], staircase, pos[:1])
    return {
        "color_rate": float(np.mean([r.color_rate for r in reports])),
        "background_rate": float(np.mean([r.background_rate for r in reports])),
        "shape_rate": float(np.mean([r.shape_rate for r in reports])),
        **{f"vae_reconstruction_{k}": v for k, v in vae_rates.items()},
        "seconds_per_model_call": (time.monotonic() - start) / 20,
    }


def main() -> None:
    """Parse the command line and train or evaluate."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=TOY_DIR, help="checkpoint directory (default: the shipped one)")
    parser.add_argument("--eval", action="store_true", help="run the quality gate on --out instead of training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 on a machine busy with other work)")
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--streams", type=int, default=600)
    parser.add_argument("--transformer-steps", type=int, default=8000)
    parser.add_argument("--prompts", type=int, default=20, help="quality gate: prompts")
    parser.add_argument("--levels", type=int, default=40, help="quality gate: grid levels")
    parser.add_argument(
        "--cfg", type=float, default=get_preset("toy").cfg_scale, help="quality gate: guidance scale (the toy preset's)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.eval:
        print(json.dumps(quality_gate(args.out, args.prompts, args.levels, args.cfg, args.seed), indent=2))
    else:
        train(args.out, args.vae_steps, args.vae_lr, args.streams, args.transformer_steps, args.seed)


if __name__ == "__main__":
    main()
