"""Procedural rendering of toy-world clips: static textured backgrounds and smoothly moving sprites.

Everything is a closed-form function of (scene, seed, absolute frame index), so a clip cut at
``start`` is exactly the matching slice of a longer clip.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from .world import COLOR_RGB, Scene

BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "sand": (200, 180, 130),
    "grass": (70, 120, 50),
    "water": (40, 100, 150),
    "night": (20, 22, 45),
    "brick": (135, 65, 50),
    "snow": (225, 228, 235),
}
# Area in units of radius**2, and how far the centroid lies below the bounding-box centre in radii.
SHAPE_AREA: dict[str, float] = {"circle": np.pi, "square": 4.0, "triangle": 2.0, "diamond": 2.0}
SHAPE_CENTROID_Y: dict[str, float] = {"circle": 0.0, "square": 0.0, "triangle": 1 / 3, "diamond": 0.0}
SIZE_RADIUS: dict[str, float] = {"small": 0.08, "large": 0.13}  # half extent / min(height, width)
OMEGA_RANGE = (0.025, 0.07)  # radians per frame: per-axis speed <= 0.035 * min(height, width)
_BORDER = 2.0  # pixels between a sprite's bounding box and the frame edge (anti-aliasing spills ~1.1)
_TAU = 2.0 * np.pi

Pattern = Callable[[np.ndarray, np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def _sand(u: np.ndarray, v: np.ndarray, grain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Wind ripples plus fine grain."""
    ripple = np.sin(_TAU * (7 * v + 0.8 * np.sin(_TAU * 1.5 * u)))
    return 12 * ripple[..., None] * np.array([1.0, 1.0, 0.8]) + 5 * grain


def _grass(u: np.ndarray, v: np.ndarray, grain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Slanted blades, mostly in the green channel."""
    blades = np.sin(_TAU * (31 * u + 3 * v)) * np.sin(_TAU * (17 * u - 2 * v))
    return (14 * blades[..., None] + 8 * grain) * np.array([0.6, 1.0, 0.5])


def _water(u: np.ndarray, v: np.ndarray, grain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Diagonal waves in the green and blue channels."""
    waves = np.sin(_TAU * (3 * u + 5 * v + 0.4 * np.sin(_TAU * 2 * u)))
    return 14 * waves[..., None] * np.array([0.3, 0.8, 1.0]) + 4 * grain


def _night(u: np.ndarray, v: np.ndarray, grain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A sky brightening towards the top, with sparse grey stars."""
    stars = (rng.random(u.shape) < 0.012) * rng.uniform(80, 150, u.shape)
    return 10 * (1 - v)[..., None] * np.array([0.5, 0.5, 1.0]) + stars[..., None] + 2 * grain


def _brick(u: np.ndarray, v: np.ndarray, grain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Running-bond bricks (8 courses, 4 bricks wide) with light mortar and per-brick tint."""
    rows, cols = 8, 4
    row = np.floor(v * rows).astype(int)
    along = u * cols + 0.5 * (row % 2)
    col = np.floor(along).astype(int)
    tint = rng.uniform(-12, 12, size=(rows, cols + 1))[row, col]
    mortar = (v * rows % 1 < 0.12) | (along % 1 < 0.06)
    brick = tint[..., None] + 5 * grain
    mortar_offset = np.array([30.0, 90.0, 95.0])  # mortar colour (165, 155, 145)
    return np.where(mortar[..., None], mortar_offset, brick)


def _snow(u: np.ndarray, v: np.ndarray, grain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Soft drifts with a faint sparkle."""
    bumps = np.sin(_TAU * (2 * u + 1.3 * v)) * np.sin(_TAU * (3 * v - u))
    return 8 * bumps[..., None] + 3 * grain


_PATTERNS: dict[str, Pattern] = {
    "sand": _sand, "grass": _grass, "water": _water, "night": _night, "brick": _brick, "snow": _snow,
}


@lru_cache(maxsize=32)
def _background_float(name: str, height: int, width: int) -> np.ndarray:
    """Cached float32 [H, W, 3] texture; the pattern lives in normalised coordinates, the grain per pixel."""
    v, u = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij")
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    grain = rng.standard_normal((height, width, 1))
    texture = np.clip(np.array(BACKGROUND_RGB[name]) + _PATTERNS[name](u, v, grain, rng), 0, 255)
    texture = np.round(texture).astype(np.float32)
    texture.flags.writeable = False
    return texture


def render_background(name: str, height: int, width: int) -> np.ndarray:
    """The static background texture as uint8 [H, W, 3] (the same pixels every clip shows)."""
    return _background_float(name, height, width).astype(np.uint8)


def sprite_radius(size: str, height: int, width: int) -> float:
    """Half extent in pixels of a sprite's bounding box (all shapes fill a 2r x 2r box)."""
    return SIZE_RADIUS[size] * min(height, width)


def shape_alpha(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float | np.ndarray) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a shape whose bounding box is centred at the origin.

    Every shape fills a 2r x 2r box; its area is SHAPE_AREA[shape] * r**2 and its centroid lies
    SHAPE_CENTROID_Y[shape] * r below the box centre (y grows downwards).
    """
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        sdf = np.hypot(dx, dy) - radius
    elif shape == "square":
        sdf = np.maximum(ax, ay) - radius
    elif shape == "diamond":
        sdf = (ax + ay - radius) / np.sqrt(2)
    elif shape == "triangle":  # apex up at (0, -r), base along y = +r
        sdf = np.maximum(dy - radius, (2 * ax - dy - radius) / np.sqrt(5))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.clip(0.5 - sdf, 0.0, 1.0)


def sprite_centers(
    scene: Scene, num_frames: int, height: int, width: int, seed: int, start: int = 0
) -> np.ndarray:
    """Sprite centres [F, S, 2] as (x, y) pixels on smooth sinusoidal paths that never overlap.

    The frame is cut into one band per sprite along a random axis (the other one if the sprites
    only fit that way); each sprite moves over the whole other axis and within its band, so
    sprites never occlude each other.
    """
    rng = np.random.default_rng([seed % 2**63, zlib.crc32(scene.prompt.encode())])
    count = len(scene.sprites)
    band_axis = int(rng.integers(2))
    bands = rng.permutation(count)
    omega = rng.uniform(*OMEGA_RANGE, size=(count, 2))
    phase = rng.uniform(0, _TAU, size=(count, 2))
    amplitude = rng.uniform(0.7, 1.0, size=(count, 2))
    lengths = (width, height)
    band_need = count * max(2 * (sprite_radius(s.size, height, width) + _BORDER) for s in scene.sprites)
    if band_need > lengths[band_axis]:
        band_axis = 1 - band_axis
    t = np.arange(start, start + num_frames, dtype=np.float64)
    centers = np.empty((num_frames, count, 2))
    for i, sprite in enumerate(scene.sprites):
        radius = sprite_radius(sprite.size, height, width)
        for axis, length in enumerate(lengths):
            lo, hi = 0.0, float(length)
            if axis == band_axis:
                lo, hi = bands[i] * length / count, (bands[i] + 1) * length / count
            lo, hi = lo + radius + _BORDER, hi - radius - _BORDER
            if hi < lo:
                raise ValueError(f"{count} {sprite.size} sprites do not fit in {height}x{width}")
            w = omega[i, axis] * min(1.0, min(height, width) / length)
            wave = 0.5 + 0.5 * amplitude[i, axis] * np.sin(w * t + phase[i, axis])
            centers[:, i, axis] = lo + (hi - lo) * wave
    return centers


def render_clip(
    scene: Scene, num_frames: int, height: int, width: int, seed: int, start: int = 0
) -> np.ndarray:
    """Render frames start..start+num_frames-1 of the scene's trajectory as uint8 [F, H, W, 3]."""
    centers = sprite_centers(scene, num_frames, height, width, seed, start)
    background = _background_float(scene.background, height, width)
    frames = np.broadcast_to(background, (num_frames, height, width, 3)).copy()
    ys = np.arange(height, dtype=np.float32) + 0.5
    xs = np.arange(width, dtype=np.float32) + 0.5
    for i, sprite in enumerate(scene.sprites):
        dx = xs[None, None, :] - centers[:, i, 0, None, None].astype(np.float32)
        dy = ys[None, :, None] - centers[:, i, 1, None, None].astype(np.float32)
        alpha = shape_alpha(sprite.shape, dx, dy, sprite_radius(sprite.size, height, width))[..., None]
        frames += alpha * (np.array(COLOR_RGB[sprite.color], np.float32) - frames)
    return np.round(frames).astype(np.uint8)
