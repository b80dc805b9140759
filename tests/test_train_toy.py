"""The toy model's recipe: one level per training window by default (as real video models are trained),
the mixed-level control on request, time budgets, and a VAE reused bit for bit."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from miga_ray.models import TOY_DIR

SCRIPT = Path(__file__).resolve().parents[1] / "jobs" / "train_toy.py"
TINY = ["--vae-steps", "3", "--vae-batch", "2", "--streams", "4", "--workers", "1", "--transformer-steps", "2", "--batch", "2", "--threads", "1"]


def recipe():
    spec = importlib.util.spec_from_file_location("train_toy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shared_levels_give_every_latent_of_a_window_one_level_and_mixed_do_not():
    toy = recipe()
    shared = toy.sample_sigmas(256, "shared", torch.Generator().manual_seed(0))
    mixed = toy.sample_sigmas(256, "mixed", torch.Generator().manual_seed(0))
    assert shared.shape == mixed.shape == (256, toy.WINDOW)
    assert bool((shared == shared[:, :1]).all()) and 0 < float(shared.min()) and float(shared.max()) < 1
    varied = (mixed != mixed[:, :1]).any(dim=1)
    assert 0.5 < float(varied.float().mean()) < 0.8  # two thirds of the windows mix levels
    sorted_rows = (mixed[varied].diff(dim=1) >= 0).all(dim=1)
    assert 0.3 < float(sorted_rows.float().mean()) < 0.7  # half of those are sorted, head cleaner


def test_a_time_budget_fixes_the_step_count_once_it_has_measured_the_rate():
    toy = recipe()
    budget = toy.StepBudget(10_000, 1e-9, torch.device("cpu"))
    assert len(list(budget)) == budget.steps == 50  # measured over steps 10-50, nothing more fits
    assert len(list(toy.StepBudget(7, None, torch.device("cpu")))) == 7


def test_tiny_run_records_its_recipe_and_reuses_a_vae_bit_for_bit(tmp_path):
    run = [sys.executable, str(SCRIPT), "--profile", "cpu", *TINY]
    subprocess.run([*run, "--out", str(tmp_path / "shared")], check=True, capture_output=True, timeout=600)
    subprocess.run([*run, "--levels", "mixed", "--vae-from", str(tmp_path / "shared"), "--out", str(tmp_path / "mixed")],
                   check=True, capture_output=True, timeout=600)
    meta = {m: json.loads((tmp_path / m / "miga.json").read_text()) for m in ("shared", "mixed")}
    assert meta["shared"]["window"] == 16 and meta["shared"]["recipe"]["levels"] == "shared"
    assert meta["shared"]["recipe"]["image_batch"] == 64  # the cpu profile's single frames per step
    assert meta["mixed"]["recipe"]["levels"] == "mixed" and meta["mixed"]["recipe"]["vae_steps"] == 0
    vae = [(tmp_path / m / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() for m in ("shared", "mixed")]
    assert vae[0] == vae[1]
    transformer = [(tmp_path / m / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes() for m in ("shared", "mixed")]
    assert transformer[0] != transformer[1]


@pytest.mark.parametrize("scale", [4, 8])
def test_either_vae_keeps_a_token_at_16_pixels_and_the_checkpoint_renders(tmp_path, scale):
    """``--vae-scale``: 16x16 latents and a 4x4-latent transformer patch (the default), or 8x8 and 2x2:
    one token per 16x16 pixels either way, recorded in the recipe; the saved pipeline loads and a window
    denoises and decodes to 64x64 frames."""
    from miga_ray.models.registry import load_model

    out = tmp_path / f"vae{scale}"
    flag = [] if scale == 4 else ["--vae-scale", str(scale)]
    subprocess.run([sys.executable, str(SCRIPT), "--profile", "cpu", *TINY, *flag, "--out", str(out)],
                   check=True, capture_output=True, timeout=600)
    assert json.loads((out / "miga.json").read_text())["recipe"]["vae_scale"] == scale
    model = load_model(str(out), device=torch.device("cpu"), dtype=torch.float32)
    assert model.vae_scale == (1, scale)
    assert tuple(model.denoiser.transformer.config.patch_size) == (1, 16 // scale, 16 // scale)
    pos, _ = model.encode_prompt(["a small red circle moving over blue sky"])
    side = 64 // scale
    x = torch.randn(1, model.latent_channels, model.default_window, side, side)
    with torch.no_grad():
        v = model.denoiser(x, torch.full((model.default_window,), 500.0), pos)
        frames = model.decoder().push(x)
    assert v.shape == x.shape
    assert tuple(frames.shape[1:4]) == (model.default_window, 64, 64)


def test_vae_scale_with_a_borrowed_vae_is_a_usage_error(tmp_path):
    command = [sys.executable, str(SCRIPT), "--vae-scale", "4", "--vae-from", str(tmp_path), "--out", str(tmp_path / "x")]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--vae-scale" in result.stderr


@pytest.mark.parametrize(("flag", "value"), [("--image-batch", "-1"), ("--batch", "0"), ("--lr", "0"), ("--streams", "two")])
def test_a_size_out_of_range_is_a_usage_error_before_anything_is_written(tmp_path, flag, value):
    out = tmp_path / "x"
    result = subprocess.run([sys.executable, str(SCRIPT), flag, value, "--out", str(out)], check=False, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and flag in result.stderr and not out.exists()


def test_a_stopped_run_resumes_to_the_weights_of_an_unbroken_one_and_its_world_bounds_prompts(tmp_path):
    """``--gate-every`` saves the whole state and gates the averaged weights (a learning-curve row each);
    ``--until-step`` stops there and the same command resumes bit for bit; the checkpoint records its world,
    and a render on it refuses a prompt outside that world (exit 2 naming the count) before any work."""
    base = [sys.executable, str(SCRIPT), "--profile", "cpu", *TINY, "--transformer-steps", "4", "--gate-every", "2",
            "--prompts", "2", "--world", "single", "--curriculum", "0.5"]
    borrowed = [*base, "--vae-from", str(TOY_DIR)]  # the shipped VAE: no VAE stage
    subprocess.run([*borrowed, "--out", str(tmp_path / "b")], check=True, capture_output=True, timeout=600)
    subprocess.run([*borrowed, "--out", str(tmp_path / "c"), "--until-step", "2"], check=True, capture_output=True, timeout=600)
    curve = [json.loads(line) for line in (tmp_path / "c" / "curve.jsonl").read_text().splitlines()]
    assert [row["step"] for row in curve] == [2] and {"shape_rate", "count_rate", "cpu_seconds", "peak_rss_mib"} <= set(curve[0])
    other = subprocess.run([*borrowed, "--out", str(tmp_path / "c"), "--world", "large"], capture_output=True, text=True, timeout=600)
    assert other.returncode == 2 and "world" in other.stderr
    resumed = subprocess.run([*borrowed, "--out", str(tmp_path / "c")], check=True, capture_output=True, text=True, timeout=600)
    assert "resumed at step 2/4" in resumed.stdout
    weights = [(tmp_path / m / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes() for m in ("b", "c")]
    assert weights[0] == weights[1]
    assert [json.loads(line)["step"] for line in (tmp_path / "c" / "curve.jsonl").read_text().splitlines()] == [2, 4]
    meta = json.loads((tmp_path / "b" / "miga.json").read_text())
    assert meta["world"] == {"sizes": ["large"], "max_sprites": 1, "shapes": ["circle", "square", "triangle", "diamond"]}
    assert meta["recipe"]["curriculum"] == 0.5 and meta["recipe"]["transformer_steps"] == 4
    render = [sys.executable, "-m", "miga_ray.cli", "render", "--set", f"model.name={tmp_path / 'b'}", "--frames", "17",
              "--out", str(tmp_path / "out")]
    refused = subprocess.run([*render, "a red circle and a blue square moving over sand"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "at most 1" in refused.stderr and not (tmp_path / "out").exists()
    small = subprocess.run([*render, "a small red circle moving over sand"], capture_output=True, text=True, timeout=120)
    assert small.returncode == 2 and "'small'" in small.stderr
