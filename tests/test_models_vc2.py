"""The VideoCrafter2 port: checkpoint keys and loading, per-frame timesteps, frame decoding, the grid, a render.

Equivalence with the reference implementation is measured by ``jobs/compare_vc2_reference.py``
(docs/VC2.md); ``data/vc2_reference_keys.json.gz`` is that script's record of the reference's full
state dict (key names and shapes), so the full-size layout is checked here without the reference.
"""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import safetensors.torch
import torch

from miga_ray.config import load_config
from miga_ray.models import registry
from miga_ray.models.pixels import to_uint8
from miga_ray.models.prompts import RandomPromptEncoder
from miga_ray.models.vc2 import VC2Config, load_vc2, random_vc2, vc2_grid
from miga_ray.models.vc2.autoencoder import LATENT_SCALE, DecoderConfig, FirstStage, FrameDecoder
from miga_ray.models.vc2.model import (
    PREFIXES,
    Parts,
    VC2Denoiser,
    VC2Model,
    build_parts,
    checkpoint_state_dict,
    lvdm_grid,
    read_state_dict,
)
from miga_ray.models.vc2.text import BPE_FILE, ClipTokenizer, TextConfig
from miga_ray.models.vc2.unet import UNet3D, UNetConfig
from miga_ray.render import JobRun
from miga_ray.sampling.denoiser import Denoiser
from miga_ray.sampling.solvers import DDIM
from miga_ray.storage import LocalStore

REFERENCE_KEYS = Path(__file__).parent / "data" / "vc2_reference_keys.json.gz"
MERGES = ["h e", "he l", "hel l", "hell o</w>", "c a", "ca t</w>"]  # a tiny BPE vocabulary: "hello", "cat"
TINY = VC2Config(
    unet=UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
                    head_channels=16, context_dim=64),
    vae=DecoderConfig(channels=32),
    text=TextConfig(vocab_size=512 + len(MERGES) + 2, width=64, heads=4, layers=3),
)  # fmt: skip


class Payload:
    """A pickled object that is not a tensor: loading must refuse it."""


def write_vocab(directory: Path) -> Path:
    path = directory / BPE_FILE
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("#version: tiny\n" + "\n".join(MERGES))
    return path


def tiny_parts(seed: int = 0) -> Parts:
    torch.manual_seed(seed)
    parts = build_parts(TINY)
    for part in parts.named().values():
        part.eval()
    return parts


def released_layout(parts: Parts) -> dict[str, torch.Tensor]:
    """Our weights as the released checkpoint holds them, with the keys it has that we never read."""
    text = PREFIXES["text"]
    return checkpoint_state_dict(parts) | {
        f"{text}transformer.resblocks.{TINY.text.layers - 1}.ln_1.weight": torch.ones(64),
        f"{text}text_projection": torch.randn(64, 64),
        f"{text}logit_scale": torch.tensor(4.6),
        "alphas_cumprod": torch.rand(1000),
        "scale_arr": torch.rand(1400),
    }


@pytest.fixture(scope="module")
def unet() -> UNet3D:
    return tiny_parts().unet


def test_full_size_keys_and_shapes_match_the_reference() -> None:
    reference = json.loads(gzip.open(REFERENCE_KEYS, "rt").read())
    with torch.device("meta"):
        parts = build_parts(VC2Config())
        ours = {k: list(v.shape) for k, v in checkpoint_state_dict(parts).items()}
    assert len(ours) == 2012 and set(ours) <= set(reference)
    assert sum(k.startswith(("first_stage_model.encoder.", "first_stage_model.quant_conv.")) for k in ours) == 108  # the encoder, all of it
    assert {k: reference[k] for k in ours} == ours
    unread = [k for k in reference if k not in ours and k.startswith(tuple(PREFIXES.values()))]
    assert all(VC2Config().unused(k) for k in unread) and len(unread) == 14
    params = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.named().items()}
    assert params == {"unet": 1_413_284_420, "vae": 83_653_863, "text": 340_387_840}  # vae: encoder 34,163,664 + decoder 49,490,199


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_checkpoint_in_the_released_layout_round_trips(tmp_path: Path, suffix: str) -> None:
    parts = tiny_parts()
    path = tmp_path / f"model{suffix}"
    if suffix == ".ckpt":
        torch.save({"state_dict": released_layout(parts), "epoch": 3, "global_step": 10}, path)
    else:
        safetensors.torch.save_file(released_layout(parts), path)
    write_vocab(tmp_path)
    model = load_vc2(path, torch.device("cpu"), torch.float32, TINY)
    for name, part in (("unet", model.denoiser.unet), ("vae", model.vae), ("text", model.text.model)):
        expected = parts.named()[name].state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in part.state_dict().items()) and len(expected) == len(part.state_dict())
    tokens = model.text.tokenizer(["Hello, cat!"])
    comma, bang = 256 + ord(",") - 33, 256 + ord("!") - 33  # single characters ending a word: "</w>" symbols
    assert tokens[0, :7].tolist() == [model.text.tokenizer.sot, 515, comma, 517, bang, model.text.tokenizer.eot, 0]
    pos, neg = model.encode_prompt(["hello cat"])
    torch.testing.assert_close(pos[0], parts.text(model.text.tokenizer(["hello cat"]))[0])
    torch.testing.assert_close(neg[0], parts.text(model.text.tokenizer([""]))[0])


def test_loading_refuses_foreign_objects_unknown_keys_and_missing_weights(tmp_path: Path) -> None:
    state = released_layout(tiny_parts())
    write_vocab(tmp_path)
    torch.save({"state_dict": state, "callbacks": Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match="will not unpickle"):
        read_state_dict(tmp_path / "evil.ckpt")
    torch.save(state | {"model.diffusion_model.extra.weight": torch.zeros(1)}, tmp_path / "extra.ckpt")
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_vc2(tmp_path / "extra.ckpt", torch.device("cpu"), torch.float32, TINY)
    safetensors.torch.save_file({k: v for k, v in state.items() if "time_embed" not in k}, tmp_path / "partial.safetensors")
    with pytest.raises(RuntimeError, match="Missing key"):
        load_vc2(tmp_path / "partial.safetensors", torch.device("cpu"), torch.float32, TINY)


def test_registry_routes_checkpoint_paths_and_builds_vc2_random(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(registry, "load_vc2", lambda *args: calls.append(args))
    registry.load_model("/weights/base_512_v2/model.ckpt", device="cpu")
    registry.load_model("/weights/vc2.safetensors", device="cpu")
    assert calls == [("/weights/base_512_v2/model.ckpt", torch.device("cpu"), torch.float32),
                     ("/weights/vc2.safetensors", torch.device("cpu"), torch.float32)]  # fmt: skip
    full = registry.load_model("vc2-random", device="meta", dtype=torch.bfloat16)  # full size, built without memory
    assert (full.device.type, full.dtype, full.latent_channels, full.vae_scale) == ("meta", torch.bfloat16, 4, (1, 8))
    assert next(full.vae.parameters()).dtype == torch.float32


def test_equal_per_frame_timesteps_equal_the_per_video_path(unet: UNet3D) -> None:
    x, ctx, fps = torch.randn(2, 4, 5, 4, 6), torch.randn(2, 7, 64), torch.tensor([8, 8])
    with torch.no_grad():
        per_video = unet(x, torch.tensor([500.0, 500.0]), ctx, fps)
        per_frame = unet(x, torch.full((2, 5), 500.0), ctx, fps)
    torch.testing.assert_close(per_frame, per_video, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(VC2Denoiser(unet)(x, torch.full((5,), 500.0), ctx), per_video)


def test_each_frame_gets_its_own_time_embedding(unet: UNet3D) -> None:
    ts, fps = torch.tensor([[10.0, 400.0, 990.0], [5.0, 5.0, 700.0]]), torch.tensor([8, 24])
    with torch.no_grad():
        emb = unet.embed(ts, fps, 3).view(2, 3, -1)
        for b in range(2):
            for f in range(3):
                torch.testing.assert_close(emb[b, f], unet.embed(ts[b, f : f + 1], fps[b : b + 1], 1)[0])
    denoiser = VC2Denoiser(unet)
    assert isinstance(denoiser, Denoiser)
    x, ctx = torch.randn(1, 4, 4, 4, 4), torch.randn(1, 7, 64)
    base = denoiser(x, torch.tensor([300.0, 300.0, 300.0, 300.0]), ctx)
    moved = denoiser(x, torch.tensor([300.0, 300.0, 300.0, 900.0]), ctx)
    assert not torch.allclose(moved, base) and torch.equal(denoiser(x, torch.full((4,), 300.0), ctx), base)
    with pytest.raises(ValueError, match="one timestep per latent frame"):
        denoiser(x, torch.tensor([1.0, 2.0]), ctx)
    with pytest.raises(ValueError, match="multiples of 2"):
        denoiser(torch.randn(1, 4, 4, 3, 4), torch.full((4,), 1.0), ctx)


def test_the_2d_decoder_decodes_frame_by_frame_in_any_chunking() -> None:
    torch.manual_seed(0)
    vae = FirstStage(DecoderConfig(channels=32)).eval()
    z = torch.randn(1, 4, 5, 4, 4)
    whole = FrameDecoder(vae).push(z)
    assert whole.shape == (1, 5, 32, 32, 3) and whole.dtype == torch.uint8
    with torch.no_grad():
        assert torch.equal(whole[:, 2], to_uint8(vae(z[:, :, 2] / LATENT_SCALE)[:, :, None])[:, 0])
    for sizes in ([2, 0, 3], [1, 1, 1, 1, 1]):
        decoder, start, chunks = FrameDecoder(vae), 0, []
        for n in sizes:
            chunks.append(decoder.push(z[:, :, start : start + n]))
            start += n
        assert torch.equal(torch.cat(chunks, dim=1), whole) and decoder.num_latents == 5
    resumed = FrameDecoder(vae)
    resumed.resume(z[:, :, :0], 3)
    assert resumed.context_latents == 0 and torch.equal(resumed.push(z[:, :, 3:]), whole[:, 3:])


def test_the_encoder_gives_the_posterior_mean_frame_by_frame_and_inverts_the_decoder_shapes() -> None:
    """Shapes and the encode -> decode path (random weights: no reconstruction quality to check; the
    reference comparison in docs/VC2.md checks the values)."""
    torch.manual_seed(0)
    vae = FirstStage(DecoderConfig(channels=32)).eval()
    model = VC2Model(UNet3D(TINY.unet).eval(), vae, RandomPromptEncoder(77, 64))
    frames = torch.randint(0, 256, (3, 40, 48, 3), dtype=torch.uint8)
    z = model.encode_video(frames)
    assert z.shape == (1, 4, 3, 5, 6) and z.dtype == torch.float32
    with torch.no_grad():
        moments = vae.quant_conv(vae.encoder(frames[1:2].permute(0, 3, 1, 2).float() / 127.5 - 1))
        assert moments.shape == (1, 8, 5, 6)
        assert torch.allclose(z[:, :, 1], moments[:, :4] * LATENT_SCALE, atol=1e-6)  # the mean, not a sample
    assert torch.equal(model.encode_video(frames), z)  # deterministic
    assert FrameDecoder(vae).push(z).shape == (1, 3, 40, 48, 3)


def test_vc2_grid_is_migas_spacing_of_lvdms_schedule() -> None:
    grid = vc2_grid(64)
    steps = [round(999 * k / 63) for k in range(64)]
    assert grid.timesteps.tolist() == [0.0, *map(float, steps)] and grid.num_levels == 64
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2  # LVDM's "linear"
    abar = torch.cumprod(1 - betas, dim=0)
    torch.testing.assert_close(grid.signal**2, abar[[0, *steps]], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grid.sigmas**2, 1 - abar[[0, *steps]], rtol=1e-12, atol=1e-12)
    assert lvdm_grid(50).timesteps.tolist() == [0.0, *(1.0 + 20 * k for k in range(50))]  # VideoCrafter's own spacing
    with pytest.raises(ValueError, match="flow-matching"):
        random_vc2(torch.device("meta"), torch.float32, TINY).grid(64, shift=5.0)


def test_ddim_over_the_vc2_grid() -> None:
    grid, gen = vc2_grid(64), torch.Generator().manual_seed(0)
    x0, eps = torch.randn(1, 4, 3, 2, 2, generator=gen), torch.randn(1, 4, 3, 2, 2, generator=gen)
    deterministic = DDIM(grid, eta=0.0)
    x = deterministic.add_noise(x0, eps, torch.full((3,), 64))
    for level in range(64, 0, -1):  # with the exact eps, every step lands on the next level's state
        x = deterministic.step(x, eps, torch.full((3,), level))
    torch.testing.assert_close(x, deterministic.add_noise(x0, eps, torch.zeros(3, dtype=torch.long)), rtol=1e-5, atol=1e-5)
    ddim = DDIM(grid, eta=1.0)
    levels, noise = torch.tensor([64, 20, 1]), torch.randn(1, 4, 3, 2, 2, generator=gen)
    xt = ddim.add_noise(x0, eps, levels)
    stepped = ddim.step(xt, eps, levels, noise)
    torch.testing.assert_close(stepped[:, :, 2], xt[:, :, 2])  # level 1 and level 0 are both training step 0: no noise
    assert grid.lowest_step == 2  # so stage 2 and refine skip that identity step, as the reference does
    a, a_prev = grid.signal[20].item() ** 2, grid.signal[19].item() ** 2
    sigma = math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    expected = math.sqrt(a_prev) * x0[:, :, 1] + math.sqrt(1 - a_prev - sigma**2) * eps[:, :, 1] + sigma * noise[:, :, 1]
    torch.testing.assert_close(stepped[:, :, 1], expected, rtol=1e-5, atol=1e-5)


def test_clip_tokenizer(tmp_path: Path) -> None:
    tokenizer = ClipTokenizer(write_vocab(tmp_path), context_length=6)
    sot, eot = tokenizer.sot, tokenizer.eot
    assert (sot, eot) == (512 + len(MERGES), 512 + len(MERGES) + 1)
    assert tokenizer(["  HELLO &amp;amp;\n cat "])[0].tolist() == [sot, 515, 256 + ord("&") - 33, 517, eot, 0]
    assert tokenizer(["hello hello hello hello hello"])[0].tolist() == [sot, 515, 515, 515, 515, eot]
    assert tokenizer(["hi"])[0].tolist() == [sot, ord("h") - 33, 256 + ord("i") - 33, eot, 0, 0]


class Stop(Exception):
    """Stands in for a crash."""


def stop_after(frames: int):
    def hook(progress) -> None:
        if progress.frames_done >= frames:
            raise Stop

    return hook


def test_vc2_random_renders_through_the_engine_and_resumes_exactly(tmp_path: Path) -> None:
    model = random_vc2(torch.device("cpu"), torch.float32, TINY)
    assert (model.vae_scale, model.default_resolution, model.default_window) == ((1, 8), (320, 512), 16)
    overrides = ["model.device=cpu", "sampler.preset=vc2", "sampler.num_levels=12", "sampler.miga.stage2_levels=3",
                 "sampler.miga.window=8", "sampler.miga.group=2", "sampler.miga.guidance=2", "sampler.miga.stride=4",
                 "video.height=64", "video.width=64", "checkpoint.every_latents=3"]  # fmt: skip
    cfg = load_config(None, overrides, frames=7)
    whole = JobRun(LocalStore(tmp_path / "a"), "a corgi on a lawn", cfg, model).run()
    assert whole.record.status == "done" and whole.record.metrics["model_calls"]
    with pytest.raises(Stop):
        JobRun(LocalStore(tmp_path / "b"), "a corgi on a lawn", cfg, model).run(on_progress=stop_after(4))
    resumed = JobRun(LocalStore(tmp_path / "b"), "a corgi on a lawn", cfg, model).run()
    assert resumed.resumed_from == 3
    a, b = tmp_path / "a" / whole.job_id, tmp_path / "b" / resumed.job_id
    latents = sorted(p.name for p in (a / "latents").glob("*.safetensors"))
    assert len(latents) == 7  # one latent per frame
    for name in latents:
        assert (a / "latents" / name).read_bytes() == (b / "latents" / name).read_bytes()
    assert decoded(a / "video.mp4").shape == (7, 64, 64, 3)
    assert np.array_equal(decoded(a / "video.mp4"), decoded(b / "video.mp4"))


def decoded(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_the_vc2_port_imports_no_wan_code() -> None:
    code = "import sys, miga_ray.models.vc2; print([m for m in sys.modules if m.startswith(('miga_ray.models.wan', 'miga_ray.models.decode', 'diffusers'))])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
