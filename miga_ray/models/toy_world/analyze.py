"""A deterministic analyzer that measures toy-world videos from pixels.

It knows the generator: sprite colours, shape templates, expected areas and background
statistics all come from the renderer. A pixel shows sprite colour c when it is nearer c than
the frame's background colour and lies near the blend line between the two, i.e. inside the
50% coverage contour of a blurred sprite, which tolerates blur, noise and mild colour shifts.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from .render import SHAPE_AREA, SHAPE_CENTROID_Y, SIZE_RADIUS, _background_float, shape_alpha, sprite_radius
from .world import BACKGROUNDS, COLOR_RGB, COLORS, SHAPES, Scene, Sprite, parse_prompt

MIN_AREA = 0.25  # a colour blob counts as present from this fraction of the prompted sprite's area
BLEND_TUBE = 0.5  # sprite pixels lie within this fraction of |colour - background| of the blend line
MIN_CONTRAST = 48.0  # a sprite colour this close (RGB distance) to the frame background is not visible
KEEPOUT = 0.03  # static pixels stay this fraction of min(h, w) away from any sprite-coloured pixel
SMOOTH_SCALE = 0.05  # a linear-prediction error of this fraction of min(h, w) scores 0 smoothness
SMOOTH_FLOOR = 0.5  # pixels of prediction error forgiven as centroid quantisation jitter
TEXTURE_WEIGHT = 0.5  # weight of the luminance std against the mean colour in background distance
MAX_SIDE = 128  # frames are block-averaged until their short side is at most this
MIN_SIDE = 32  # smaller frames leave too few pixels per sprite to judge a shape
LUT_BITS = 6  # colour quantisation of the nearest-sprite-colour table (error <= 2 levels per channel)
# Half the log-area gap between neighbouring sizes: an area nearer the prompted size than any other.
_SIZE_TOLERANCE = min(math.log(b / a) for a, b in itertools.pairwise(sorted(SIZE_RADIUS.values())))
_COLOR_ARRAY = np.array([COLOR_RGB[c] for c in COLORS], np.float32)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass
class ToyReport:
    """Per-frame measurements of a toy-world video against its prompt, and their summaries."""

    prompt: str
    chunk: int
    present: np.ndarray  # bool [F, S]: a blob of the sprite's colour is present
    shape_ok: np.ndarray  # bool [F, S]: ... and the prompted shape is its best-fitting template
    size_ok: np.ndarray  # bool [F, S]: ... and its area is nearest the prompted size (any, if the prompt names none)
    area_ratio: np.ndarray  # float [F, S]: blob area / expected area (0 where absent)
    centroids: np.ndarray  # float [F, S, 2]: blob centroid (x, y) in input pixels, NaN where absent
    background_ok: np.ndarray  # bool [F]: the background statistics are nearest the prompted background
    background_distance: np.ndarray  # float [F]: feature distance to the prompted background / 255
    flicker_pairs: np.ndarray  # float [F-1]: VBench-form score of frames t, t+1 on static pixels
    smoothness_frames: np.ndarray  # float [F, S]: centroid linear-prediction score, NaN where undefined
    color_rate: float
    shape_rate: float
    size_rate: float  # over the sprites whose size the prompt names; NaN when it names none
    background_rate: float
    flicker: float
    smoothness: float
    motion: float  # mean centroid displacement per frame as a fraction of the frame width
    drift: dict[str, list[float]] = field(default_factory=dict)  # per chunk of frames, named as the summaries

    def to_dict(self, per_frame: bool = True) -> dict[str, Any]:
        """JSON-able summary (NaN becomes None), with the per-frame arrays when per_frame is set."""
        out: dict[str, Any] = {
            "prompt": self.prompt,
            "num_frames": int(self.present.shape[0]),
            "chunk": self.chunk,
            **{name: _json(getattr(self, name)) for name in _SUMMARY},
            "background_distance": _json(_nanmean(self.background_distance)),
            "drift": {name: _json(values) for name, values in self.drift.items()},
        }
        if per_frame:
            out["frames"] = {name: _json(getattr(self, name)) for name in _PER_FRAME}
        return out


_SUMMARY = ("color_rate", "shape_rate", "size_rate", "background_rate", "flicker", "smoothness", "motion")
_PER_FRAME = (
    "present", "shape_ok", "size_ok", "area_ratio", "centroids",
    "background_ok", "background_distance", "flicker_pairs", "smoothness_frames",
)


def _json(value: Any) -> Any:
    """Numbers and arrays as plain Python values, NaN replaced by None."""
    array = np.asarray(value)
    if array.dtype == bool:
        return array.tolist()
    return np.where(np.isnan(array), None, array.astype(float)).tolist()


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite entries; NaN, without a warning, when there are none."""
    finite = np.isfinite(values)
    return float(values[finite].mean()) if finite.any() else math.nan


def _working_frames(frames: np.ndarray) -> tuple[np.ndarray, int]:
    """Validate frames and block-average them to a short side <= MAX_SIDE; return float32 and the factor."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] < 1:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    num, height, width, _ = frames.shape
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"frames must be at least {MIN_SIDE}x{MIN_SIDE}, got {height}x{width}")
    factor = max(1, min(height, width) // MAX_SIDE)
    h, w = height // factor, width // factor
    cropped = frames[:, : h * factor, : w * factor].astype(np.float32)
    return cropped.reshape(num, h, factor, w, factor, 3).mean(axis=(2, 4)), factor


@lru_cache(maxsize=1)
def _nearest_color_table() -> np.ndarray:
    """Nearest sprite colour of every colour quantised to LUT_BITS per channel, flat [2 ** (3 * LUT_BITS)]."""
    levels = (np.arange(2**LUT_BITS) + 0.5) * 2 ** (8 - LUT_BITS)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    return ((_COLOR_ARRAY**2).sum(axis=1) - 2 * grid @ _COLOR_ARRAY.T).argmin(axis=1).astype(np.uint8)


def _nearest_color(frames: np.ndarray) -> np.ndarray:
    """Index into COLORS of the nearest sprite colour of every pixel, [F, h, w]."""
    q = np.clip(frames, 0, 255).astype(np.int32) >> (8 - LUT_BITS)
    return _nearest_color_table()[(q[..., 0] << 2 * LUT_BITS) | (q[..., 1] << LUT_BITS) | q[..., 2]]


def _sprite_labels(frames: np.ndarray) -> np.ndarray:
    """Index into COLORS of the sprite colour each pixel shows, len(COLORS) for background; [F, h, w].

    The background colour of a frame is the per-channel median of a pixel subsample (sprites
    cover far less than half a frame).
    """
    num, height, width, _ = frames.shape
    stride = max(1, min(height, width) // 32)
    background = np.median(frames[:, ::stride, ::stride].reshape(num, -1, 3), axis=1)
    nearest = _nearest_color(frames)
    spans = _COLOR_ARRAY[None] - background[:, None]  # c - b for every frame and colour
    span = spans[np.arange(num)[:, None, None], nearest]  # ... for every pixel's nearest colour
    offset = frames - background[:, None, None]  # p - b
    span2 = np.einsum("fhwc,fhwc->fhw", span, span)
    along = np.einsum("fhwc,fhwc->fhw", offset, span)
    visible = span2 >= MIN_CONTRAST**2
    residual2 = np.einsum("fhwc,fhwc->fhw", offset, offset) - along**2 / np.maximum(span2, MIN_CONTRAST**2)
    member = visible & (along >= 0.5 * span2) & (residual2 <= BLEND_TUBE**2 * span2)
    return np.where(member, nearest, len(COLORS))


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4-connected components of a [F, h, w] mask, frames apart: flat positions and root per masked pixel.

    Min-label propagation over the edges between masked pixels with pointer jumping, so the
    cost grows with the number of masked pixels rather than with the frame size.
    """
    _, height, width = mask.shape
    pos = np.flatnonzero(mask)
    index = np.full(mask.size + width, -1, np.int64)  # padded so a 'down' neighbour never overflows
    index[pos] = np.arange(pos.size)
    last_col = pos % width == width - 1
    last_row = pos // width % height == height - 1
    right = np.where(last_col, -1, index[pos + 1])
    ends = np.concatenate([right, np.where(last_row, -1, index[pos + width])])
    starts = np.tile(np.arange(pos.size), 2)[ends >= 0]
    ends = ends[ends >= 0]
    label = np.arange(pos.size)
    while True:
        lowest = np.minimum(label[starts], label[ends])
        updated = label.copy()
        np.minimum.at(updated, starts, lowest)
        np.minimum.at(updated, ends, lowest)
        updated = updated[updated[updated]]
        if np.array_equal(updated, label):
            return pos, label
        label = updated


def _top_blobs(mask: np.ndarray, k: int) -> np.ndarray:
    """Stats [3 + len(SHAPES), F, k] of the k largest blobs per frame, largest first.

    Rows: area, centroid x, centroid y, then per shape the mean coverage of the blob's pixels by
    that shape's template of equal area placed at the blob's centroid (1 = perfect fit). Missing
    blobs have area 0 and NaN elsewhere.
    """
    num, height, width = mask.shape
    pos, label = _components(mask)
    area = np.bincount(label, minlength=pos.size)
    roots = np.flatnonzero(area)
    frame = pos[roots] // (height * width)
    order = np.lexsort((-area[roots], frame))
    roots, frame = roots[order], frame[order]
    rank = np.arange(roots.size) - np.searchsorted(frame, frame)
    keep = rank < k
    slots = np.full(pos.size, -1)
    slots[roots[keep]] = frame[keep] * k + rank[keep]
    slot = slots[label]
    pos, slot = pos[slot >= 0], slot[slot >= 0]
    ys, xs = pos // width % height + 0.5, pos % width + 0.5
    count = np.bincount(slot, minlength=num * k).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx, cy = np.bincount(slot, xs, num * k) / count, np.bincount(slot, ys, num * k) / count
        fits = []
        for shape in SHAPES:
            radius = np.sqrt(count / SHAPE_AREA[shape])
            dy = ys - cy[slot] + SHAPE_CENTROID_Y[shape] * radius[slot]
            cover = shape_alpha(shape, xs - cx[slot], dy, radius[slot])
            fits.append(np.bincount(slot, cover, num * k) / count)
    return np.stack([count, cx, cy, *fits]).reshape(-1, num, k)


def _judge(blob: np.ndarray, sprite: Sprite, height: int, width: int) -> np.ndarray:
    """Judge blobs [3 + len(SHAPES), F] as the sprite: [F, 6] present, shape_ok, size_ok, area ratio, x, y.

    The shape is right when the prompted shape's template fits the blob best; the size is right
    when the area is nearer the prompted size's area than any other size's, or, when the prompt
    names no size, whenever the sprite is present.
    """
    ratio = blob[0] / (SHAPE_AREA[sprite.shape] * sprite_radius(sprite.size, height, width) ** 2)
    present = ratio >= MIN_AREA
    shape_ok = present & (np.nan_to_num(blob[3:], nan=-1.0).argmax(axis=0) == SHAPES.index(sprite.shape))
    size_ok = present & (np.abs(np.log(np.maximum(ratio, 1e-9))) < _SIZE_TOLERANCE) if sprite.size_named else present
    return np.stack([present, shape_ok, size_ok, ratio, blob[1], blob[2]], axis=1)


def _sprite_measures(labels: np.ndarray, scene: Scene) -> np.ndarray:
    """Per frame and prompted sprite [F, S, 6]: present, shape_ok, size_ok, area ratio, centroid x, y.

    Sprites sharing a colour take that colour's largest blobs in the pairing that passes most checks.
    """
    num, height, width = labels.shape
    out = np.zeros((num, len(scene.sprites), 6))
    for color in dict.fromkeys(s.color for s in scene.sprites):
        members = [i for i, s in enumerate(scene.sprites) if s.color == color]
        blobs = _top_blobs(labels == COLORS.index(color), len(members))
        judged = [
            [_judge(blobs[:, :, p], scene.sprites[i], height, width) for p, i in zip(perm, members)]
            for perm in itertools.permutations(range(len(members)))
        ]
        pairings = np.stack([np.stack(row, axis=1) for row in judged])  # [pairings, F, members, 6]
        best = pairings[..., :3].sum(axis=(2, 3)).argmax(axis=0)
        out[:, members] = pairings[best, np.arange(num)]
    return out


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a [F, h, w] mask by radius pixels with a square structuring element."""
    out = mask
    for axis in (1, 2):
        grown = out.copy()
        n = out.shape[axis]
        for shift in range(1, radius + 1):
            low, high = [slice(None)] * 3, [slice(None)] * 3
            low[axis], high[axis] = slice(0, n - shift), slice(shift, n)
            grown[tuple(low)] |= out[tuple(high)]
            grown[tuple(high)] |= out[tuple(low)]
        out = grown
    return out


def _background_features(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per frame [F, 4]: mean RGB and TEXTURE_WEIGHT * luminance std over masked pixels (NaN if none)."""
    count = mask.sum(axis=(1, 2))
    weights = mask / np.maximum(count, 1)[:, None, None].astype(np.float32)
    mean = np.einsum("fhwc,fhw->fc", frames, weights)
    luma = frames @ _LUMA
    variance = np.einsum("fhw,fhw->f", luma**2, weights) - np.einsum("fhw,fhw->f", luma, weights) ** 2
    features = np.concatenate([mean, TEXTURE_WEIGHT * np.sqrt(np.maximum(variance, 0))[:, None]], axis=1)
    return np.where(count[:, None] > 0, features, np.nan)


@lru_cache(maxsize=16)
def _reference_backgrounds(height: int, width: int) -> np.ndarray:
    """Background features [len(BACKGROUNDS), 4] of the world's own textures at this resolution."""
    textures = np.stack([_background_float(name, height, width) for name in BACKGROUNDS])
    return _background_features(textures, np.ones(textures.shape[:3], bool))


def _flicker(frames: np.ndarray, static: np.ndarray) -> np.ndarray:
    """VBench temporal flickering (255 - mean |f_t - f_t+1|) / 255 per frame pair, on static pixels."""
    both = static[:-1] & static[1:]
    diff = np.abs(frames[1:] - frames[:-1]) @ np.full(3, 1 / 3, np.float32)
    count = both.sum(axis=(1, 2))
    mad = (diff * both).sum(axis=(1, 2)) / np.maximum(count, 1)
    return np.where(count > 0, (255 - mad) / 255, np.nan)


def _smoothness(centroids: np.ndarray, scale: float) -> np.ndarray:
    """Per frame and sprite: 1 - (|p_t - (p_t-1 + p_t+1) / 2| - SMOOTH_FLOOR) / scale in [0, 1], else NaN."""
    out = np.full(centroids.shape[:2], np.nan)
    error = np.linalg.norm(centroids[:-2] - 2 * centroids[1:-1] + centroids[2:], axis=-1) / 2
    out[1:-1] = np.clip(1 - np.maximum(error - SMOOTH_FLOOR, 0) / scale, 0, 1)
    out[1:-1][np.isnan(error)] = np.nan
    return out


def _background_measures(
    frames: np.ndarray, static: np.ndarray, background: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: is the static-pixel background nearest the prompted one, and its distance to it / 255."""
    features = _background_features(frames, static)
    distances = np.linalg.norm(features[:, None] - _reference_backgrounds(*frames.shape[1:3])[None], axis=-1)
    prompted = BACKGROUNDS.index(background)
    nearest = np.nan_to_num(distances, nan=np.inf).argmin(axis=1)
    return np.isfinite(distances[:, prompted]) & (nearest == prompted), distances[:, prompted] / 255


def _chunk_means(values: np.ndarray, chunk: int) -> list[float]:
    """Mean of the finite values in each window of `chunk` rows."""
    values = np.asarray(values, np.float64)
    return [_nanmean(values[i : i + chunk]) for i in range(0, values.shape[0], chunk)]


def analyze(frames: np.ndarray, prompt: str | Scene, chunk: int = 16) -> ToyReport:
    """Measure a uint8 [F, H, W, 3] video against a toy-world prompt; drift is reported per `chunk` frames.

    Frames with a short side above MAX_SIDE are block-averaged first, so flicker is measured on
    the averaged pixels; centroids are reported in input pixels.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    scene = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    work, factor = _working_frames(np.asarray(frames))
    _, height, width, _ = work.shape
    labels = _sprite_labels(work)
    sprites = _sprite_measures(labels, scene)
    present, shape_ok, size_ok = (sprites[..., i] > 0.5 for i in range(3))
    named = np.array([s.size_named for s in scene.sprites])  # sprites whose size is judged
    centroids = np.where(present[..., None], sprites[..., 4:6], np.nan)
    static = ~_dilate(labels < len(COLORS), max(1, round(KEEPOUT * min(height, width))))
    background_ok, background_distance = _background_measures(work, static, scene.background)
    flicker = _flicker(work, static)
    smooth = _smoothness(centroids, SMOOTH_SCALE * min(height, width))
    series = {
        "color_rate": present, "shape_rate": shape_ok, "size_rate": size_ok[:, named], "background_rate": background_ok,
        "background_distance": background_distance, "flicker": flicker, "smoothness": smooth,
    }
    return ToyReport(
        prompt=prompt if isinstance(prompt, str) else scene.prompt,
        chunk=chunk,
        present=present,
        shape_ok=shape_ok,
        size_ok=size_ok,
        area_ratio=sprites[..., 3],
        centroids=centroids * factor,
        background_ok=background_ok,
        background_distance=background_distance,
        flicker_pairs=flicker,
        smoothness_frames=smooth,
        color_rate=float(present.mean()),
        shape_rate=float(shape_ok.mean()),
        size_rate=float(size_ok[:, named].mean()) if named.any() else math.nan,
        background_rate=float(background_ok.mean()),
        flicker=_nanmean(flicker),
        smoothness=_nanmean(smooth),
        motion=_nanmean(np.linalg.norm(np.diff(centroids, axis=0), axis=-1) / width),
        drift={name: _chunk_means(values, chunk) for name, values in series.items()},
    )
