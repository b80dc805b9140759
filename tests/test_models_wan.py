"""The diffusers Wan adapter: per-frame timesteps, CFG, loading a saved pipeline, the level grid, the models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d
from transformers import UMT5Config, UMT5EncoderModel

from miga_ray.models import TOY_CHECKPOINTS
from miga_ray.models.prompts import RandomPromptEncoder
from miga_ray.models.registry import TOY_DIR, WAN21_DEFAULTS, load_model
from miga_ray.models.toy_tokenizer import build_toy_tokenizer
from miga_ray.models.wan import WAN21_SCHEDULER, WanDenoiser, frame_timesteps_to_tokens
from miga_ray.sampling.denoiser import Conditioning, Denoiser, guided_forward

TRAIN_TOY = Path(__file__).resolve().parents[1] / "jobs" / "train_toy.py"
TEXT_DIM = 16


def tiny_transformer(num_layers: int = 2) -> WanTransformer3DModel:
    torch.manual_seed(0)
    config = dict(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=TEXT_DIM)
    return WanTransformer3DModel(**config, freq_dim=16, ffn_dim=32, num_layers=num_layers).eval()


@pytest.fixture(scope="module")
def transformer() -> WanTransformer3DModel:
    return tiny_transformer()


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Wan pipeline saved with diffusers' own save_pretrained."""
    torch.manual_seed(1)
    tokenizer = build_toy_tokenizer(["a", "red", "blue", "circle", "over", "grass"], model_max_length=12)
    text_config = UMT5Config(vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=UMT5EncoderModel(text_config).eval(),
        transformer=tiny_transformer(),
        vae=vae,
        scheduler=UniPCMultistepScheduler(**WAN21_SCHEDULER),
    )
    path = tmp_path_factory.mktemp("pipe")
    pipe.save_pretrained(path)
    return path


def test_frame_timesteps_expand_frame_major() -> None:
    tokens = frame_timesteps_to_tokens(torch.tensor([5.0, 7.0, 9.0]), batch=2, tokens_per_frame=4)
    assert tokens.shape == (2, 12)
    assert tokens[1].tolist() == [5.0] * 4 + [7.0] * 4 + [9.0] * 4
    per_sample = frame_timesteps_to_tokens(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), batch=2, tokens_per_frame=2)
    assert per_sample.tolist() == [[1, 1, 2, 2], [3, 3, 4, 4]]


def test_equal_per_token_timesteps_match_the_scalar_timestep(transformer: WanTransformer3DModel) -> None:
    x, ctx = torch.randn(2, 4, 3, 4, 6), torch.randn(2, 5, TEXT_DIM)
    with torch.no_grad():
        scalar = transformer(x, torch.full((2,), 500.0), ctx).sample
        tokens = transformer(x, frame_timesteps_to_tokens(torch.full((3,), 500.0), 2, 2 * 3), ctx).sample
    torch.testing.assert_close(tokens, scalar, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(WanDenoiser(transformer)(x, torch.full((3,), 500.0), ctx), scalar)


def test_token_order_puts_each_frame_at_its_own_timestep() -> None:
    """Without blocks nothing mixes tokens, so frame f must equal a scalar call at timestep f."""
    bare, ts = tiny_transformer(num_layers=0), torch.tensor([100.0, 600.0, 900.0])
    x, ctx = torch.randn(1, 4, 3, 4, 6), torch.randn(1, 5, TEXT_DIM)
    out = WanDenoiser(bare)(x, ts, ctx)
    for f, t in enumerate(ts):
        torch.testing.assert_close(out[:, :, f], WanDenoiser(bare)(x, t.repeat(3), ctx)[:, :, f])


def test_changing_one_frames_timestep_changes_the_output(transformer: WanTransformer3DModel) -> None:
    denoiser = WanDenoiser(transformer)
    x, ctx = torch.randn(1, 4, 3, 4, 4), torch.randn(1, 5, TEXT_DIM)
    base = denoiser(x, torch.tensor([300.0, 300.0, 300.0]), ctx)
    moved = denoiser(x, torch.tensor([300.0, 300.0, 800.0]), ctx)
    assert not torch.allclose(base[:, :, 2], moved[:, :, 2])
    assert (moved[:, :, 2] - base[:, :, 2]).abs().mean() > (moved[:, :, 0] - base[:, :, 0]).abs().mean()


def test_adapter_shape_dtype_and_protocol() -> None:
    denoiser = WanDenoiser(tiny_transformer().to(torch.bfloat16))
    assert isinstance(denoiser, Denoiser)
    x = torch.randn(2, 4, 3, 4, 4)
    out = denoiser(x, torch.tensor([1.0, 500.0, 999.0]), torch.randn(2, 5, TEXT_DIM))
    assert out.shape == x.shape and out.dtype == torch.float32
    with pytest.raises(ValueError, match="one timestep per latent frame"):
        denoiser(x, torch.tensor([1.0, 2.0]), torch.randn(2, 5, TEXT_DIM))


def test_cfg_through_guided_forward_with_encoded_prompts(pipeline_dir: Path) -> None:
    model = load_model(str(pipeline_dir), device="cpu")
    pos, neg = model.encode_prompt(["a red circle", "a blue circle over grass"])
    x, ts = torch.randn(2, 4, 3, 4, 4), torch.tensor([200.0, 400.0, 600.0])
    guided = guided_forward(model.denoiser, x, ts, Conditioning(pos, neg, 4.0))
    out_pos, out_neg = model.denoiser(x, ts, pos), model.denoiser(x, ts, neg)
    torch.testing.assert_close(guided, out_neg + 4.0 * (out_pos - out_neg), rtol=1e-4, atol=1e-4)


def test_pipeline_round_trip(pipeline_dir: Path) -> None:
    assert not [p for p in pipeline_dir.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".ckpt"}]
    model = load_model(str(pipeline_dir), device="cpu")
    assert (model.latent_channels, model.vae_scale, model.dtype) == (4, (4, 8), torch.float32)
    assert (model.default_resolution, model.default_window) == WAN21_DEFAULTS
    x, ts, ctx = torch.randn(1, 4, 2, 4, 4), torch.tensor([300.0, 700.0]), torch.randn(1, 12, TEXT_DIM)
    torch.testing.assert_close(model.denoiser(x, ts, ctx), WanDenoiser(tiny_transformer())(x, ts, ctx))
    pos, neg = model.encode_prompt(["a red circle", "a red circle"], negative=None)
    assert pos.shape == neg.shape == (2, 12, TEXT_DIM) and torch.equal(pos[0], pos[1])
    assert pos[:, 4:].abs().max() == 0 and pos[:, :4].abs().min() > 0  # 3 words + </s>, zeros after
    assert torch.equal(neg[0], model.encode_prompt([""])[0][0])
    assert next(model.text.text_encoder.parameters()).device.type == "cpu"
    assert model.decoder().push(torch.randn(1, 4, 2, 2, 2)).shape == (1, 5, 16, 16, 3)


def test_miga_json_sets_the_defaults(pipeline_dir: Path) -> None:
    (pipeline_dir / "miga.json").write_text(json.dumps({"resolution": [64, 96], "window": 8}))
    try:
        model = load_model(str(pipeline_dir), device="cpu")
    finally:
        (pipeline_dir / "miga.json").unlink()
    assert (model.default_resolution, model.default_window) == ((64, 96), 8)


def test_grid_runs_clean_to_noisy_with_the_schedulers_shift(pipeline_dir: Path) -> None:
    model = load_model(str(pipeline_dir), device="cpu")
    grid = model.grid(10)
    scheduler = UniPCMultistepScheduler(**WAN21_SCHEDULER)
    scheduler.set_timesteps(10)
    assert grid.num_levels == 10 and grid.kind == "flow"
    assert grid.sigmas[0] == 0 and bool((grid.sigmas[1:] > grid.sigmas[:-1]).all()) and grid.sigmas[-1] > 0.99
    torch.testing.assert_close(grid.sigmas, scheduler.sigmas.flip(0).double())
    assert grid.timesteps[1:].tolist() == scheduler.timesteps.flip(0).tolist() and grid.timesteps[0] == 0
    torch.testing.assert_close(grid.signal, 1 - grid.sigmas)
    flat = model.grid(10, shift=1.0).sigmas  # the scheduler's float32 grid: compare to float32 precision
    torch.testing.assert_close(model.grid(10, shift=5.0).sigmas, 5 * flat / (1 + 4 * flat), rtol=0, atol=1e-6)
    torch.testing.assert_close(grid.sigmas, 3 * flat / (1 + 2 * flat), rtol=0, atol=1e-6)


def test_grid_from_a_flow_match_euler_config(pipeline_dir: Path) -> None:
    model = load_model(str(pipeline_dir), device="cpu")
    model.scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    grid, reference = model.grid(8, shift=5.0), FlowMatchEulerDiscreteScheduler(shift=5.0)
    reference.set_timesteps(8)
    assert grid.sigmas[0] == 0 and grid.sigmas[-1] == 1 and grid.timesteps[-1] == 1000
    torch.testing.assert_close(grid.sigmas, reference.sigmas.flip(0).double())
    torch.testing.assert_close(grid.timesteps, 1000 * grid.sigmas, rtol=0, atol=1e-3)


def test_random_wan21_builds_the_real_architecture_on_meta() -> None:
    model = load_model("wan2.1-1.3b-random", device="meta", dtype=torch.bfloat16)
    transformer = model.denoiser.transformer
    assert sum(p.numel() for p in transformer.parameters()) == 1_418_996_800
    assert (transformer.config.num_layers, transformer.config.ffn_dim, transformer.config.text_dim) == (30, 8960, 4096)
    assert model.dtype == torch.bfloat16 and transformer.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    assert (model.latent_channels, model.vae_scale, model.default_window) == (16, (4, 8), 21)
    assert model.decoder().context_latents == 38
    assert model.text == RandomPromptEncoder(512, 4096)  # UMT5-XXL's shape
    assert model.grid(54).num_levels == 54


def test_random_prompt_embeddings_are_fixed_per_prompt() -> None:
    encode = RandomPromptEncoder(text_len=8, text_dim=4)
    a, b = encode(["x", "y"], torch.device("cpu")), encode(["x"], torch.device("cpu"))
    assert a.shape == (2, 8, 4) and torch.equal(a[0], b[0]) and not torch.equal(a[0], a[1])


@pytest.mark.parametrize("name,levels", [("toy", "shared"), ("toy-mixed", "mixed")])
def test_shipped_toy_checkpoint(name: str, levels: str) -> None:
    """The shipped toy model and its mixed-level control: small, pickle-free, the same world, and each trained
    with the noise levels its name says (recorded in its ``miga.json``)."""
    root = TOY_CHECKPOINTS[name]
    files = [p for p in root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20 * 2**20
    assert {p.suffix for p in files} <= {".json", ".jsonl", ".safetensors"}  # never a pickle; .jsonl: its learning curve
    meta = json.loads((root / "miga.json").read_text())
    assert meta["recipe"]["levels"] == levels and meta["world"] == json.loads((TOY_DIR / "miga.json").read_text())["world"]
    model = load_model(name, device="cpu")
    assert (model.default_resolution, model.default_window) == ((64, 64), 16)
    pos, neg = model.encode_prompt(["a large red circle moving over grass"])
    x = torch.randn(1, model.latent_channels, model.default_window, 8, 8)
    grid = model.grid(20)
    out = guided_forward(model.denoiser, x, grid.timesteps[torch.arange(1, 17)], Conditioning(pos, neg, 5.0))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_shipped_toy_vae_is_per_frame() -> None:
    """The toy VAE compresses space only: its causal convolutions' taps on earlier frames are zero, so a
    latent video decodes to exactly the frames each latent decodes to alone."""
    vae = load_model("toy", device="cpu").decoder().vae
    convs = [m for m in vae.modules() if isinstance(m, WanCausalConv3d) and m.kernel_size[0] > 1]
    assert convs and all(not m.weight[:, :, :-1].any() for m in convs)
    z = torch.randn(1, vae.config.z_dim, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = vae.decode(z).sample
        alone = torch.cat([vae.decode(z[:, :, i : i + 1]).sample for i in range(5)], dim=2)
    assert whole.shape == (1, 3, 5, 64, 64)
    torch.testing.assert_close(whole, alone, rtol=0, atol=1e-5)


def test_shipped_toy_model_meets_its_quality_gate() -> None:
    """The gate, run as docs/RESULTS.md runs it on the shipped checkpoint (base sampler, one window, 20 prompts of
    its world, fewer levels than the preset's 50 to save time): the analyzer recognises the prompted colour and
    background in at least 90% of frames, the shape and the number of sprites in at least 80%."""
    done = subprocess.run(
        [sys.executable, str(TRAIN_TOY), "--eval", "--threads", "1", "--preset", "toy", "--steps", "40"], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-2000:]
    gate = json.loads(done.stdout)
    assert gate["color_rate"] >= 0.9 and gate["background_rate"] >= 0.9, gate
    assert gate["shape_rate"] >= 0.8 and gate["count_rate"] >= 0.8 and gate["gate_met"], gate
