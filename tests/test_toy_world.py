"""The toy world: prompt grammar, deterministic rendering, and an analyzer that sees what is rendered."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from miga_ray.models.toy_world import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    SIZES,
    Scene,
    Sprite,
    analyze,
    parse_prompt,
    render_background,
    render_clip,
    sample_scene,
    shape_alpha,
    sprite_centers,
    sprite_radius,
)
from miga_ray.models.toy_world.render import SHAPE_AREA, SHAPE_CENTROID_Y

RED_CIRCLE = Scene((Sprite("circle", "red", "large"),), "sand")
# Every shape, colour and background at least once, two-sprite scenes and one with a shared colour.
GROUND_TRUTH_SCENES = [
    RED_CIRCLE,
    Scene((Sprite("square", "green", "small"),), "grass"),
    Scene((Sprite("triangle", "cyan", "large"), Sprite("diamond", "yellow", "small")), "water"),
    Scene((Sprite("diamond", "blue", "large"), Sprite("circle", "magenta", "small")), "night"),
    Scene((Sprite("triangle", "red", "small"), Sprite("square", "blue", "large")), "brick"),
    Scene((Sprite("square", "magenta", "large"), Sprite("circle", "magenta", "small")), "snow"),
]


def gaussian_blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over height and width, float32 out."""
    radius = int(3 * sigma)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    out = frames.astype(np.float32)
    for axis in (1, 2):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        out = sum(w * padded.take(np.arange(i, i + n), axis=axis) for i, w in enumerate(kernel))
    return out


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Round and clip float frames to uint8."""
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


# --- prompts ---------------------------------------------------------------------------------


def test_canonical_prompts_round_trip() -> None:
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, max_sprites=3) for _ in range(300)]
    assert all(parse_prompt(s.prompt) == s for s in scenes)
    assert {s.background for s in scenes} == set(BACKGROUNDS)
    assert {sp.shape for s in scenes for sp in s.sprites} == set(SHAPES)
    assert {sp.color for s in scenes for sp in s.sprites} == set(COLORS)
    assert {sp.size for s in scenes for sp in s.sprites} == set(SIZES)
    assert {len(s.sprites) for s in scenes} == {1, 2, 3}
    assert all(len({sp.color for sp in s.sprites}) == len(s.sprites) for s in scenes)


def test_parse_is_case_and_whitespace_tolerant() -> None:
    assert parse_prompt("  A Red   CIRCLE moving over SAND. ") == RED_CIRCLE
    assert parse_prompt("a small blue square and an large green diamond on the grass") == Scene(
        (Sprite("square", "blue", "small"), Sprite("diamond", "green", "large")), "grass"
    )
    assert RED_CIRCLE.prompt == "a large red circle moving over sand"


@pytest.mark.parametrize(
    ("text", "word", "allowed"),
    [
        ("a purple circle moving over sand", "purple", "magenta"),
        ("a red hexagon moving over sand", "hexagon", "triangle"),
        ("a red circle moving over desert", "desert", "brick"),
        ("a red circle moving under sand", "under", "over"),
        ("a huge red circle moving over sand", "huge", "small"),
        ("a red circle moving over sand quickly", "quickly", "end"),
    ],
)
def test_unknown_words_are_named(text: str, word: str, allowed: str) -> None:
    with pytest.raises(ValueError, match=word) as info:
        parse_prompt(text)
    assert allowed in str(info.value)


def test_truncated_prompt_and_bad_names_raise() -> None:
    with pytest.raises(ValueError, match="background"):
        parse_prompt("a red circle moving over")
    with pytest.raises(ValueError, match="teal"):
        Sprite("circle", "teal")


# --- rendering -------------------------------------------------------------------------------


def test_render_is_deterministic_and_start_slices_one_trajectory() -> None:
    scene = GROUND_TRUTH_SCENES[2]
    long = render_clip(scene, 20, 64, 48, seed=7)
    assert long.shape == (20, 64, 48, 3) and long.dtype == np.uint8
    np.testing.assert_array_equal(long, render_clip(scene, 20, 64, 48, seed=7))
    np.testing.assert_array_equal(render_clip(scene, 10, 64, 48, seed=7, start=5), long[5:15])
    assert not np.array_equal(long, render_clip(scene, 20, 64, 48, seed=8))
    assert not np.array_equal(long[0], long[-1])  # it moves


def test_sprites_stay_inside_and_move_slowly() -> None:
    rng = np.random.default_rng(1)
    for seed in range(40):
        scene = sample_scene(rng, max_sprites=3)
        height, width = (64, 64) if seed % 2 else (48, 80)
        centers = sprite_centers(scene, 300, height, width, seed)
        radii = np.array([sprite_radius(s.size, height, width) for s in scene.sprites])[None, :, None]
        assert (centers - radii >= 0).all() and (centers + radii <= [width, height]).all()
        step = np.linalg.norm(np.diff(centers, axis=0), axis=-1)
        assert step.max() <= width / 20
        assert step.mean() > width / 1000  # but they do move


def test_frame_border_shows_only_background() -> None:
    rng = np.random.default_rng(2)
    for seed in range(10):
        scene = sample_scene(rng)
        clip = render_clip(scene, 100, 32, 32, seed).astype(int)
        background = render_background(scene.background, 32, 32).astype(int)
        for border in (np.s_[:, 0], np.s_[:, -1], np.s_[:, :, 0], np.s_[:, :, -1]):
            expected = np.broadcast_to(background[border[1:]], clip[border].shape)
            np.testing.assert_array_equal(clip[border], expected)


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_area_and_centroid_match_the_renderer(shape: str) -> None:
    grid = np.arange(-40, 40) + 0.5
    alpha = shape_alpha(shape, grid[None, :], grid[:, None], 25.0)
    assert alpha.sum() == pytest.approx(SHAPE_AREA[shape] * 25.0**2, rel=0.01)
    assert (alpha.sum(axis=1) @ grid) / alpha.sum() == pytest.approx(SHAPE_CENTROID_Y[shape] * 25.0, abs=0.1)


# --- analysis of ground truth ----------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("scene", GROUND_TRUTH_SCENES, ids=lambda s: s.background)
def test_ground_truth_scores_high(scene: Scene, size: int) -> None:
    report = analyze(render_clip(scene, 32, size, size, seed=3), scene.prompt)
    assert report.color_rate >= 0.95
    assert report.shape_rate >= 0.95
    assert report.size_rate >= 0.95
    assert report.background_rate >= 0.95
    assert report.smoothness >= 0.9
    assert report.flicker >= 0.99
    assert 0 < report.motion < 1 / 20


def test_centroids_follow_the_rendered_trajectory() -> None:
    scene = GROUND_TRUTH_SCENES[4]
    for size in (64, 256):  # 256 is block-averaged to 128 inside the analyzer
        report = analyze(render_clip(scene, 16, size, size, seed=5), scene)
        truth = sprite_centers(scene, 16, size, size, seed=5)
        for i, sprite in enumerate(scene.sprites):
            truth[:, i, 1] += SHAPE_CENTROID_Y[sprite.shape] * sprite_radius(sprite.size, size, size)
        assert np.abs(report.centroids - truth).max() < 0.02 * size


def test_report_is_json_able() -> None:
    clip = render_clip(RED_CIRCLE, 20, 64, 64, seed=0)
    clip[10:] = render_background("sand", 64, 64)  # sprite gone: its centroids and smoothness are undefined
    out = json.loads(json.dumps(analyze(clip, RED_CIRCLE.prompt, chunk=10).to_dict()))
    assert out["drift"]["color_rate"] == [1.0, 0.0]
    assert out["drift"]["smoothness"][1] is None
    assert out["frames"]["centroids"][15] == [[None, None]]
    assert len(out["frames"]["flicker_pairs"]) == 19


def test_bad_frames_are_rejected() -> None:
    with pytest.raises(ValueError, match="at least"):
        analyze(np.zeros((4, 16, 16, 3), np.uint8), RED_CIRCLE)
    with pytest.raises(ValueError, match="uint8"):
        analyze(np.zeros((4, 64, 64, 3), np.float32), RED_CIRCLE)


# --- analysis detects what is wrong ----------------------------------------------------------


def test_wrong_prompt_scores_low() -> None:
    clip = render_clip(RED_CIRCLE, 32, 64, 64, seed=0)
    wrong = analyze(clip, "a blue square over grass")
    assert wrong.color_rate <= 0.05 and wrong.background_rate <= 0.05
    wrong_shape = analyze(clip, "a large red square over sand")
    assert wrong_shape.color_rate >= 0.95 and wrong_shape.shape_rate <= 0.05
    wrong_size = analyze(clip, "a small red circle over sand")
    assert wrong_size.color_rate >= 0.95 and wrong_size.size_rate <= 0.05


def test_shuffled_frames_are_not_smooth() -> None:
    clip = render_clip(GROUND_TRUTH_SCENES[2], 48, 64, 64, seed=1)
    shuffled = clip[np.random.default_rng(0).permutation(48)]
    assert analyze(clip, GROUND_TRUTH_SCENES[2]).smoothness >= 0.9
    assert analyze(shuffled, GROUND_TRUTH_SCENES[2]).smoothness <= 0.5


def test_background_brightness_noise_flickers() -> None:
    scene = GROUND_TRUTH_SCENES[1]
    clip = render_clip(scene, 32, 64, 64, seed=2)
    background = np.all(clip == render_background(scene.background, 64, 64), axis=-1, keepdims=True)
    offsets = np.random.default_rng(0).normal(0, 10, size=(32, 1, 1, 1))
    noisy = to_uint8(clip + background * offsets)
    steady, flickering = analyze(clip, scene), analyze(noisy, scene)
    assert steady.flicker >= 0.99
    assert flickering.flicker < steady.flicker - 0.02
    assert flickering.background_rate >= 0.9  # brightness jitter is not a different background


def test_vanishing_sprite_shows_in_drift() -> None:
    clip = render_clip(RED_CIRCLE, 64, 64, 64, seed=4)
    clip[32:] = render_background("sand", 64, 64)
    report = analyze(clip, RED_CIRCLE, chunk=16)
    assert report.drift["color_rate"][:2] == [1.0, 1.0]
    assert max(report.drift["color_rate"][2:]) <= 0.05
    assert report.drift["background_rate"] == [1.0] * 4
    assert report.color_rate == pytest.approx(0.5, abs=0.05)


# --- robustness ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 128])
def test_blur_and_noise_keep_colour_and_background(size: int) -> None:
    rng = np.random.default_rng(size)
    for scene in GROUND_TRUTH_SCENES:
        clip = render_clip(scene, 24, size, size, seed=6)
        degraded = to_uint8(gaussian_blur(clip, sigma=size / 64) + rng.normal(0, 8, clip.shape))
        report = analyze(degraded, scene)
        assert report.color_rate >= 0.9, scene.prompt
        assert report.background_rate >= 0.9, scene.prompt


def test_a_prompt_that_names_no_size_is_not_judged_on_size() -> None:
    """'a red circle' draws the default size but does not ask for it: any size passes, size_rate is None."""
    small = render_clip(parse_prompt("a small red circle over sand"), 16, 64, 64, seed=0)
    unsized = analyze(small, "a red circle over sand")
    assert parse_prompt("a red circle over sand").sprites[0].size_named is False
    assert unsized.color_rate >= 0.95 and unsized.size_ok.all() and math.isnan(unsized.size_rate)
    assert unsized.to_dict(per_frame=False)["size_rate"] is None and unsized.prompt == "a red circle over sand"
    assert analyze(small, "a large red circle over sand").size_rate <= 0.05, "a named size is still judged"
