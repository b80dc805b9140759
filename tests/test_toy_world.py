"""The toy world: prompt grammar, deterministic rendering, and an analyzer that sees what is rendered."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from miga_ray.evaluation.toy_world import analyze, drift_summary
from miga_ray.models.toy_world import (
    BACKGROUNDS,
    COLOR_RGB,
    COLORS,
    SHAPES,
    SIZES,
    Scene,
    Sprite,
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


def paint(frame: np.ndarray, sprite: Sprite, center: np.ndarray, keep: str = "all") -> None:
    """Paint the sprite (only its left or right half when keep says so) centred at (x, y), in place."""
    height, width, _ = frame.shape
    radius = sprite_radius(sprite.size, height, width)
    dx = np.arange(width)[None, :] + 0.5 - center[0]
    dy = np.arange(height)[:, None] + 0.5 - center[1]
    alpha = shape_alpha(sprite.shape, dx, dy, radius) * {"all": 1, "left": dx < 0, "right": dx >= 0}[keep]
    frame[:] = to_uint8(frame + alpha[..., None] * (np.array(COLOR_RGB[sprite.color]) - frame))


def far_corners(frame: np.ndarray, radius: float, avoid: np.ndarray) -> list[np.ndarray]:
    """Sprite centres in the frame's corners, farthest from every point in avoid [N, 2] first."""
    height, width, _ = frame.shape
    margin = radius + 3
    corners = [np.array([x, y]) for x in (margin, width - margin) for y in (margin, height - margin)]
    return sorted(corners, key=lambda c: -np.linalg.norm(avoid - c, axis=1).min())


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
    assert report.count_rate == 1.0
    assert report.subject_consistency >= 0.98
    assert report.background_consistency >= 0.999


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


def test_count_sees_an_extra_blob_and_a_split_sprite() -> None:
    scene = GROUND_TRUTH_SCENES[2]  # cyan triangle, yellow diamond over water
    clip = render_clip(scene, 24, 64, 64, seed=3)
    assert analyze(clip, scene).count_rate == 1.0
    centers = sprite_centers(scene, 24, 64, 64, seed=3)
    extra, split = clip.copy(), clip.copy()
    stranger = Sprite("circle", "red", "small")  # a colour the prompt does not name
    background = render_background(scene.background, 64, 64)
    large = scene.sprites[0]
    for t in range(8, 16):
        paint(extra[t], stranger, far_corners(clip[t], sprite_radius("small", 64, 64), centers[t])[0])
        # the large triangle leaves; its two halves appear in the two corners farthest from the diamond
        radius = sprite_radius(large.size, 64, 64)
        box = np.s_[
            int(centers[t, 0, 1] - radius) - 2 : int(centers[t, 0, 1] + radius) + 3,
            int(centers[t, 0, 0] - radius) - 2 : int(centers[t, 0, 0] + radius) + 3,
        ]
        split[t][box] = background[box]
        left, right = far_corners(clip[t], radius, centers[t, 1:])[:2]
        paint(split[t], large, left, keep="left")
        paint(split[t], large, right, keep="right")
    for video in (extra, split):
        report = analyze(video, scene)
        assert not report.count_ok[8:16].any()
        assert report.count_ok[:8].all() and report.count_ok[16:].all()
        assert report.count_rate == pytest.approx(16 / 24)
    extra_report = analyze(extra, scene)
    assert extra_report.color_rate == 1.0  # the colour rate cannot see an extra blob
    assert extra_report.drift["count_rate"] == [0.5, 1.0]  # frames 0-15 (8 wrong), 16-23
    assert extra_report.to_dict()["count_rate"] == pytest.approx(16 / 24)


# --- drift: curves over the video and last quarter against the first ---------------------------


def halfway(first: str, second: str, frames: int = 64) -> np.ndarray:
    """A clip of the first prompt whose second half is the second prompt's clip (same seed, size 64)."""
    clip = render_clip(parse_prompt(first), frames, 64, 64, seed=0)
    clip[frames // 2 :] = render_clip(parse_prompt(second), frames, 64, 64, seed=0)[frames // 2 :]
    return clip


def test_sprite_changing_colour_halfway_drifts_in_subject_not_background() -> None:
    prompt = "a large red circle moving over sand"
    truth = drift_summary(render_clip(parse_prompt(prompt), 64, 64, 64, seed=0), prompt, bins=4)
    changed = drift_summary(halfway(prompt, "a large blue circle moving over sand"), prompt, bins=4)
    assert changed["drift"]["color_rate"] == -1.0 and truth["drift"]["color_rate"] == 0.0
    assert changed["curves"]["color_rate"] == [1.0, 1.0, 0.0, 0.0]
    assert changed["drift"]["subject_consistency"] < -0.9 and abs(truth["drift"]["subject_consistency"]) < 0.01
    assert changed["mean"]["subject_consistency"] < 0.6 and truth["mean"]["subject_consistency"] > 0.98
    assert changed["mean"]["background_consistency"] == pytest.approx(truth["mean"]["background_consistency"], abs=1e-3)
    assert abs(changed["drift"]["background_consistency"]) < 1e-3
    assert changed["drift"]["count_rate"] == 0.0  # still one sprite, just the wrong colour


def test_background_changing_halfway_drifts_in_background_not_subject() -> None:
    prompt = "a large red circle moving over sand"
    report = analyze(halfway(prompt, "a large red circle moving over night"), prompt)
    summary = report.summary(bins=8)
    assert summary["drift"]["background_consistency"] < -0.3
    assert summary["mean"]["background_consistency"] < 0.8
    assert summary["curves"]["background_consistency"][:4] == pytest.approx([1.0] * 4, abs=1e-3)
    assert abs(summary["drift"]["subject_consistency"]) < 0.01
    assert summary["mean"]["subject_consistency"] > 0.98
    assert report.subject_consistency == summary["mean"]["subject_consistency"]  # one number, two views


def test_gradual_drift_the_rates_cannot_see_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sprite dims from red (220, 40, 40) to (160, 40, 40): still red to every rate, not to the subject."""
    scene = RED_CIRCLE
    frames = []
    for t in range(64):
        monkeypatch.setitem(COLOR_RGB, "red", (220 - 60 * t // 63, 40, 40))
        frames.append(render_clip(scene, 1, 64, 64, seed=0, start=t)[0])
    dimming = drift_summary(np.stack(frames), scene.prompt, bins=4)
    steady = drift_summary(render_clip(scene, 64, 64, 64, seed=0), scene.prompt, bins=4)
    assert dimming["drift"]["color_rate"] == 0.0 and dimming["drift"]["shape_rate"] == 0.0
    assert dimming["drift"]["subject_consistency"] < -0.02 < steady["drift"]["subject_consistency"]
    assert abs(dimming["drift"]["background_consistency"]) < 1e-3


def test_consistency_stays_within_zero_and_one_on_large_frames() -> None:
    scene = GROUND_TRUTH_SCENES[5]
    report = analyze(render_clip(scene, 12, 300, 200, seed=0), scene)  # float32 sums over many pixels
    for values in (report.subject_frames, report.background_frames):
        assert np.nanmax(values) <= 1.0 and np.nanmin(values) >= 0.98


def test_summary_is_json_able_with_one_curve_point_per_bin() -> None:
    clip = render_clip(GROUND_TRUTH_SCENES[2], 50, 64, 64, seed=1)
    summary = json.loads(json.dumps(drift_summary(clip, GROUND_TRUTH_SCENES[2].prompt, bins=7)))
    assert summary["num_frames"] == 50 and summary["bin_starts"] == [0, 7, 14, 21, 28, 35, 42]
    assert set(summary["curves"]) == set(summary["mean"]) == set(summary["drift"]) >= {
        "subject_consistency", "background_consistency", "color_rate", "shape_rate", "size_rate", "count_rate",
    }
    assert all(len(curve) == 7 for curve in summary["curves"].values())
    with pytest.raises(ValueError, match="bins"):
        drift_summary(clip, GROUND_TRUTH_SCENES[2].prompt, bins=51)


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
        assert report.count_rate >= 0.9, scene.prompt
        assert report.subject_consistency >= 0.95, scene.prompt
        assert report.background_consistency >= 0.95, scene.prompt


def test_a_prompt_that_names_no_size_is_not_judged_on_size() -> None:
    """'a red circle' draws the default size but does not ask for it: any size passes, size_rate is None."""
    small = render_clip(parse_prompt("a small red circle over sand"), 16, 64, 64, seed=0)
    unsized = analyze(small, "a red circle over sand")
    assert parse_prompt("a red circle over sand").sprites[0].size_named is False
    assert unsized.color_rate >= 0.95 and unsized.size_ok.all() and math.isnan(unsized.size_rate)
    assert unsized.to_dict(per_frame=False)["size_rate"] is None and unsized.prompt == "a red circle over sand"
    assert analyze(small, "a large red circle over sand").size_rate <= 0.05, "a named size is still judged"


def test_a_world_draws_only_its_own_scenes_and_refuses_prompts_outside_it(tmp_path):
    from miga_ray.models.toy_world import WORLDS, World

    rng = np.random.default_rng(0)
    single = WORLDS["single"]
    scenes = [single.sample_scene(rng) for _ in range(50)]
    assert all(len(s.sprites) == 1 and s.sprites[0].size == "large" for s in scenes)
    assert len({s.sprites[0].shape for s in scenes}) == 4
    assert single.parse("a red circle moving over sand").sprites[0].shape == "circle"
    for prompt, word in [("a small red circle moving over sand", "'small'"),
                         ("a red circle and a blue square moving over sand", "at most 1")]:
        with pytest.raises(ValueError, match=word):
            single.parse(prompt)
    with pytest.raises(ValueError, match="'triangle'"):
        World(shapes=("circle", "square")).parse("a red triangle moving over sand")
    (tmp_path / "miga.json").write_text(json.dumps({"world": single.as_json()}))
    assert World.recorded(tmp_path) == single
    assert World.recorded(tmp_path / "nowhere") is None  # a checkpoint from before worlds: no world check
