"""A deterministic analyzer that measures toy-world videos from pixels.

It knows the generator: sprite colours, shape templates, expected areas and background
statistics all come from the renderer. A pixel shows sprite colour c when it is nearer c than
the frame's background colour and lies near the blend line between the two, i.e. inside the
50% coverage contour of a blurred sprite, which tolerates blur, noise and mild colour shifts.

Beside recognition rates (colour, shape, size, count, background) it scores consistency the way
VBench does, but on what the toy world knows is subject and background: each sprite's own pixels,
and the static pixels with every sprite masked out. ToyReport.summary turns every per-frame series
into a curve over bins of frames and a drift figure (last quarter minus first).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ..models.toy_world.render import (
    SHAPE_AREA,
    SHAPE_CENTROID_Y,
    SIZE_RADIUS,
    _background_float,
    shape_alpha,
    sprite_radius,
)
from ..models.toy_world.world import BACKGROUNDS, COLOR_RGB, COLORS, SHAPES, Scene, Sprite, parse_prompt
from .bins import DriftAccumulator, RangeMeans, json_number
from .vbench import frame_consistency

MIN_AREA = 0.25  # a colour blob counts as present from this fraction of the prompted sprite's area
BLEND_TUBE = 0.5  # sprite pixels lie within this fraction of |colour - background| of the blend line
MIN_CONTRAST = 48.0  # a sprite colour this close (RGB distance) to the frame background is not visible
KEEPOUT = 0.03  # static pixels stay this fraction of min(h, w) away from any sprite-coloured pixel
SMOOTH_SCALE = 0.05  # a linear-prediction error of this fraction of min(h, w) scores 0 smoothness
SMOOTH_FLOOR = 0.5  # pixels of prediction error forgiven as centroid quantisation jitter
TEXTURE_WEIGHT = 0.5  # weight of the luminance std against the mean colour in background distance
MAX_SIDE = 128  # frames are block-averaged until their short side is at most this
MIN_SIDE = 32  # smaller frames leave too few pixels per sprite to judge a shape
GREY = 127.5  # consistency features are colours relative to mid-grey, so hue and brightness changes both turn them
APPEARANCE_SPAN = 1.5  # a sprite's appearance crop reaches this many prompted radii from its centroid
LUT_BITS = 6  # colour quantisation of the nearest-sprite-colour table (error <= 2 levels per channel)
# Half the log-area gap between neighbouring sizes: an area nearer the prompted size than any other.
_SIZE_TOLERANCE = min(math.log(b / a) for a, b in itertools.pairwise(sorted(SIZE_RADIUS.values())))
_COLOR_ARRAY = np.array([COLOR_RGB[c] for c in COLORS], np.float32)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _series_mean(name: str, doc: str) -> property:
    """A ToyReport summary: the mean over frames of its series `name` (NaN where it is nowhere defined)."""

    def mean(report: ToyReport) -> float:
        """The summary, as its accumulated mean (the number every report of it shows)."""
        means = RangeMeans([0], report.present.shape[0])
        means.add(0, {name: report.series[name]})
        return means.means(name)[0]

    return property(mean, doc=doc)


@dataclass
class ToyReport:
    """Per-frame measurements of a toy-world video against its prompt, and their summaries."""

    prompt: str
    chunk: int
    present: np.ndarray  # bool [F, S]: a blob of the sprite's colour is present
    shape_ok: np.ndarray  # bool [F, S]: ... and the prompted shape is its best-fitting template
    size_ok: np.ndarray  # bool [F, S]: ... and its area is nearest the prompted size (any, if the prompt names none)
    count_ok: np.ndarray  # bool [F]: the number of sprite-coloured blobs of at least MIN_AREA equals the prompted number
    size_named: np.ndarray  # bool [S]: the prompt names this sprite's size (size_rate judges only those)
    area_ratio: np.ndarray  # float [F, S]: blob area / expected area (0 where absent)
    centroids: np.ndarray  # float [F, S, 2]: blob centroid (x, y) in input pixels, NaN where absent
    background_ok: np.ndarray  # bool [F]: the background statistics are nearest the prompted background
    background_distance: np.ndarray  # float [F]: feature distance to the prompted background / 255
    flicker_pairs: np.ndarray  # float [F-1]: VBench-form score of frames t, t+1 on static pixels
    smoothness_frames: np.ndarray  # float [F, S]: centroid linear-prediction score, NaN where undefined
    subject_frames: np.ndarray  # float [F, S]: VBench-form consistency of each sprite's appearance crop, NaN at frame 0
    background_frames: np.ndarray  # float [F]: VBench-form consistency of the static background pixels, NaN at frame 0
    motion_frames: np.ndarray  # float [F]: mean sprite centroid displacement from frame t-1 / frame width, NaN at 0

    color_rate = _series_mean("color_rate", "Share of frames x sprites where a blob of the sprite's colour is present.")
    shape_rate = _series_mean("shape_rate", "Share of frames x sprites present with the prompted shape.")
    size_rate = _series_mean("size_rate", "Share of frames x sprites whose size the prompt names, present with that size; NaN if it names none.")
    count_rate = _series_mean("count_rate", "Share of frames showing exactly the prompted number of sprites.")
    background_rate = _series_mean("background_rate", "Share of frames whose background is nearest the prompted one.")
    subject_consistency = _series_mean("subject_consistency", "VBench-form consistency of the sprites only.")
    background_consistency = _series_mean("background_consistency", "VBench-form consistency of the static background.")
    flicker = _series_mean("flicker", "VBench-form temporal flickering on static pixels.")
    smoothness = _series_mean("smoothness", "Sprite trajectory smoothness in [0, 1].")
    motion = _series_mean("motion", "Mean sprite centroid displacement per frame as a fraction of the frame width.")

    @property
    def series(self) -> dict[str, np.ndarray]:
        """Per-frame float [F] curve behind each summary, and the background distance (NaN where undefined)."""
        return {
            "color_rate": self.present.mean(axis=1),
            "shape_rate": self.shape_ok.mean(axis=1),
            "size_rate": self.size_ok[:, self.size_named].mean(axis=1) if self.size_named.any() else np.full(len(self.present), math.nan),
            "count_rate": self.count_ok.astype(float),
            "background_rate": self.background_ok.astype(float),
            "subject_consistency": _row_nanmean(self.subject_frames),
            "background_consistency": self.background_frames,
            "background_distance": self.background_distance,
            "flicker": np.concatenate([[math.nan], self.flicker_pairs]),
            "smoothness": _row_nanmean(self.smoothness_frames),
            "motion": self.motion_frames,
        }

    def _accumulated(self, bins: int) -> DriftAccumulator:
        """Its series in the accumulator that a streamed video fills (one definition of every summary)."""
        acc = DriftAccumulator(self.present.shape[0], bins, self.chunk)
        acc.add(0, self.series)
        return acc

    @property
    def drift(self) -> dict[str, list[float]]:
        """Each series' mean per chunk of frames."""
        acc = self._accumulated(1)
        return {name: acc.chunk_means(name) for name in acc.names}

    def summary(self, bins: int) -> dict[str, Any]:
        """JSON-able drift summary: per series its mean, curve over `bins` equal bins of frames, and drift figure.

        The drift figure is the series' mean over the last quarter of the frames minus its mean over the first.
        """
        return self._accumulated(bins).summary(self.prompt)

    def to_dict(self, per_frame: bool = True) -> dict[str, Any]:
        """JSON-able summary (NaN becomes None), with the per-frame arrays when per_frame is set."""
        out = overview(self.prompt, self._accumulated(1))
        if per_frame:
            out["frames"] = {name: json_number(getattr(self, name)) for name in _PER_FRAME}
        return out


def overview(prompt: str, acc: DriftAccumulator) -> dict[str, Any]:
    """``ToyReport.to_dict(per_frame=False)`` from accumulated series: every series' mean and its means per chunk."""
    return {
        "prompt": prompt,
        "num_frames": acc.frames,
        "chunk": acc.chunk,
        **{name: json_number(acc.mean(name)) for name in acc.names},
        "drift": {name: json_number(acc.chunk_means(name)) for name in acc.names},
    }


_PER_FRAME = (
    "present", "shape_ok", "size_ok", "count_ok", "area_ratio", "centroids", "background_ok",
    "background_distance", "flicker_pairs", "smoothness_frames", "subject_frames", "background_frames", "motion_frames",
)


def _row_nanmean(values: np.ndarray) -> np.ndarray:
    """Mean of the finite entries of each row of [F, S]; NaN, without a warning, where a row has none."""
    finite = np.isfinite(values)
    total = np.where(finite, values, 0).sum(axis=1)
    count = finite.sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), math.nan)


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


@dataclass(frozen=True)
class _Blobs:
    """The sprite pixels of [F, h, w] labels grouped into 4-connected blobs of one colour each."""

    shape: tuple[int, int, int]  # the labels' [F, h, w]
    pos: np.ndarray  # flat position of every sprite pixel
    color: np.ndarray  # its index into COLORS
    root: np.ndarray  # index into pos of its blob's root pixel
    area: np.ndarray  # per index into pos: the area of the blob rooted there (0 where no blob is)


def _blobs(labels: np.ndarray) -> _Blobs:
    """Group sprite pixels into blobs by min-label propagation over the edges between 4-neighbours of one colour.

    Pointer jumping keeps the iterations few; the cost grows with the number of sprite pixels
    rather than with the frame size.
    """
    _, height, width = labels.shape
    flat = np.concatenate([labels.ravel(), np.full(width, len(COLORS), labels.dtype)])  # 'down' never overflows
    pos = np.flatnonzero(flat < len(COLORS))
    index = np.full(flat.size, -1, np.int64)
    index[pos] = np.arange(pos.size)
    last_col = pos % width == width - 1
    last_row = pos // width % height == height - 1
    right = np.where(last_col | (flat[pos + 1] != flat[pos]), -1, index[pos + 1])
    down = np.where(last_row | (flat[pos + width] != flat[pos]), -1, index[pos + width])
    ends = np.concatenate([right, down])
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
            break
        label = updated
    return _Blobs(labels.shape, pos, flat[pos], label, np.bincount(label, minlength=pos.size))


def _top_blobs(blobs: _Blobs, color: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Stats [3 + len(SHAPES), F, k] and roots [F, k] (-1 if missing) of the k largest blobs of one colour per frame.

    Largest first. Rows: area, centroid x, centroid y, then per shape the mean coverage of the
    blob's pixels by that shape's template of equal area placed at the blob's centroid (1 = perfect
    fit). Missing blobs have area 0 and NaN elsewhere.
    """
    num, height, width = blobs.shape
    roots = np.flatnonzero((blobs.area > 0) & (blobs.color == color))
    frame = blobs.pos[roots] // (height * width)
    order = np.lexsort((-blobs.area[roots], frame))
    roots, frame = roots[order], frame[order]
    rank = np.arange(roots.size) - np.searchsorted(frame, frame)
    keep = rank < k
    slots = np.full(blobs.pos.size, -1)
    slots[roots[keep]] = frame[keep] * k + rank[keep]
    top_roots = np.full(num * k, -1)
    top_roots[slots[roots[keep]]] = roots[keep]
    slot = slots[blobs.root]
    pos, slot = blobs.pos[slot >= 0], slot[slot >= 0]
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
    return np.stack([count, cx, cy, *fits]).reshape(-1, num, k), top_roots.reshape(num, k)


def _expected_area(sprite: Sprite, height: int, width: int) -> float:
    """Area in pixels of the sprite as the renderer draws it at this resolution."""
    return SHAPE_AREA[sprite.shape] * sprite_radius(sprite.size, height, width) ** 2


def _count_ok(blobs: _Blobs, scene: Scene) -> np.ndarray:
    """Per frame [F]: the blobs of any sprite colour that are large enough to count number the prompted sprites.

    Large enough: MIN_AREA of the smallest prompted sprite's expected area.
    """
    num, height, width = blobs.shape
    smallest = min(_expected_area(s, height, width) for s in scene.sprites)
    roots = np.flatnonzero(blobs.area >= MIN_AREA * smallest)
    return np.bincount(blobs.pos[roots] // (height * width), minlength=num) == len(scene.sprites)


def _judge(blob: np.ndarray, sprite: Sprite, height: int, width: int) -> np.ndarray:
    """Judge blobs [3 + len(SHAPES), F] as the sprite: [F, 6] present, shape_ok, size_ok, area ratio, x, y.

    The shape is right when the prompted shape's template fits the blob best; the size is right
    when the area is nearer the prompted size's area than any other size's, or, when the prompt
    names no size, whenever the sprite is present.
    """
    ratio = blob[0] / _expected_area(sprite, height, width)
    present = ratio >= MIN_AREA
    shape_ok = present & (np.nan_to_num(blob[3:], nan=-1.0).argmax(axis=0) == SHAPES.index(sprite.shape))
    size_ok = present & (np.abs(np.log(np.maximum(ratio, 1e-9))) < _SIZE_TOLERANCE) if sprite.size_named else present
    return np.stack([present, shape_ok, size_ok, ratio, blob[1], blob[2]], axis=1)


def _sprite_measures(blobs: _Blobs, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Per frame and prompted sprite: [F, S, 6] present, shape_ok, size_ok, area ratio, centroid x, y; [F, S] blob root.

    Sprites sharing a colour take that colour's largest blobs in the pairing that passes most
    checks. The root (index into blobs.pos, -1 where none) names the blob a sprite was given.
    """
    num, height, width = blobs.shape
    out = np.zeros((num, len(scene.sprites), 6))
    sprite_roots = np.full((num, len(scene.sprites)), -1)
    for color in dict.fromkeys(s.color for s in scene.sprites):
        members = [i for i, s in enumerate(scene.sprites) if s.color == color]
        top, top_roots = _top_blobs(blobs, COLORS.index(color), len(members))
        perms = np.array(list(itertools.permutations(range(len(members)))))  # [pairings, members]
        judged = [[_judge(top[:, :, p], scene.sprites[i], height, width) for p, i in zip(perm, members)] for perm in perms]
        pairings = np.stack([np.stack(row, axis=1) for row in judged])  # [pairings, F, members, 6]
        best = pairings[..., :3].sum(axis=(2, 3)).argmax(axis=0)
        out[:, members] = pairings[best, np.arange(num)]
        sprite_roots[:, members] = np.take_along_axis(top_roots, perms[best], axis=1)
    return out, sprite_roots


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


def _cosine(dot: np.ndarray, norm_a: np.ndarray, norm_b: np.ndarray) -> np.ndarray:
    """Cosine from a dot product and two norms, clipped to [-1, 1] against float32 rounding; 0 where a vector is zero."""
    norms = norm_a * norm_b
    return np.where(norms > 0, np.clip(dot / np.where(norms > 0, norms, 1), -1, 1), 0.0)


def _vbench_form(prev: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Per-frame score [F] from the cosines [F - 1] of frames 1.. to their previous and to the first frame."""
    return np.concatenate([[math.nan], frame_consistency(prev, first)])


def _feature_consistency(features: np.ndarray) -> np.ndarray:
    """VBench-form score [F] of per-frame features [F, D] (zero vectors score 0), NaN at frame 0."""
    norms = np.linalg.norm(features, axis=1)
    prev = _cosine((features[1:] * features[:-1]).sum(axis=1), norms[1:], norms[:-1])
    return _vbench_form(prev, _cosine(features[1:] @ features[0], norms[1:], norms[0]))


def _subject_consistency(
    work: np.ndarray, blobs: _Blobs, roots: np.ndarray, centroids: np.ndarray, scene: Scene
) -> np.ndarray:
    """Per frame and sprite [F, S]: VBench-form consistency of the sprite's appearance, NaN at frame 0.

    The appearance is the colour (relative to GREY) of the sprite's own blob pixels in a crop of
    APPEARANCE_SPAN prompted radii around its centroid, resampled bilinearly so that the crop is
    centred to a fraction of a pixel; everything else in the crop, and the whole crop when the
    sprite is absent (NaN centroid), is zero.
    """
    num, height, width, _ = work.shape
    blob_of = np.full(num * height * width, -1, np.int32)
    blob_of[blobs.pos] = blobs.root
    pixels = work.reshape(-1, 3) - GREY
    out = np.empty((num, len(scene.sprites)))
    for i, sprite in enumerate(scene.sprites):
        reach = math.ceil(APPEARANCE_SPAN * sprite_radius(sprite.size, height, width))
        offsets = np.arange(-reach, reach + 2)
        corner = np.nan_to_num(centroids[:, i] - 0.5, nan=0.0)  # pixel centres sit at integer + 0.5
        base = np.floor(corner).astype(int)
        ys = base[:, 1, None, None] + offsets[None, :, None]
        xs = base[:, 0, None, None] + offsets[None, None, :]
        flat = np.arange(num)[:, None, None] * height * width + np.clip(ys, 0, height - 1) * width + np.clip(xs, 0, width - 1)
        own = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width) & (blob_of[flat] == roots[:, i, None, None])
        own &= np.isfinite(centroids[:, i, 0])[:, None, None]
        crop = np.where(own[..., None], pixels[flat], 0.0)  # [F, K + 1, K + 1, 3]
        fx, fy = (corner - base)[:, 0, None, None, None], (corner - base)[:, 1, None, None, None]
        crop = (1 - fx) * crop[:, :, :-1] + fx * crop[:, :, 1:]
        crop = (1 - fy) * crop[:, :-1] + fy * crop[:, 1:]
        out[:, i] = _feature_consistency(crop.reshape(num, -1))
    return out


def _background_consistency(work: np.ndarray, static: np.ndarray) -> np.ndarray:
    """VBench-form consistency [F] of the static pixels' colours (relative to GREY), NaN at frame 0.

    Each pair of frames is compared on the pixels static in both, so moving sprites never count.
    """
    keep = static.astype(np.float32)
    pixels = (work - GREY) * keep[..., None]
    energy = np.einsum("fhwc,fhwc->fhw", pixels, pixels)
    prev = _cosine(
        np.einsum("fhwc,fhwc->f", pixels[1:], pixels[:-1]),
        np.sqrt(np.einsum("fhw,fhw->f", energy[1:], keep[:-1])),
        np.sqrt(np.einsum("fhw,fhw->f", energy[:-1], keep[1:])),
    )
    first = _cosine(
        np.einsum("fhwc,hwc->f", pixels[1:], pixels[0]),
        np.sqrt(np.einsum("fhw,hw->f", energy[1:], keep[0])),
        np.sqrt(np.einsum("fhw,hw->f", keep[1:], energy[0])),
    )
    return _vbench_form(prev, first)


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
    blobs = _blobs(labels)
    sprites, sprite_roots = _sprite_measures(blobs, scene)
    count_ok = _count_ok(blobs, scene)
    present, shape_ok, size_ok = (sprites[..., i] > 0.5 for i in range(3))
    named = np.array([s.size_named for s in scene.sprites])  # sprites whose size is judged
    centroids = np.where(present[..., None], sprites[..., 4:6], np.nan)
    static = ~_dilate(labels < len(COLORS), max(1, round(KEEPOUT * min(height, width))))
    background_ok, background_distance = _background_measures(work, static, scene.background)
    flicker = _flicker(work, static)
    smooth = _smoothness(centroids, SMOOTH_SCALE * min(height, width))
    step = np.linalg.norm(np.diff(centroids, axis=0), axis=-1) / width
    subject = _subject_consistency(work, blobs, sprite_roots, centroids, scene)
    background = _background_consistency(work, static)
    return ToyReport(
        prompt=prompt if isinstance(prompt, str) else scene.prompt,
        chunk=chunk,
        present=present,
        shape_ok=shape_ok,
        size_ok=size_ok,
        count_ok=count_ok,
        area_ratio=sprites[..., 3],
        centroids=centroids * factor,
        background_ok=background_ok,
        background_distance=background_distance,
        flicker_pairs=flicker,
        smoothness_frames=smooth,
        size_named=named,
        subject_frames=subject,
        background_frames=background,
        motion_frames=np.concatenate([[math.nan], _row_nanmean(step)]),
    )


def drift_summary(frames: np.ndarray, prompt: str | Scene, bins: int = 10) -> dict[str, Any]:
    """Measure a uint8 [F, H, W, 3] toy-world video and return ToyReport.summary(bins): means, curves, drift figures."""
    return analyze(frames, prompt).summary(bins)


class ToyStream:
    """``analyze`` over a video that streams past in chunks, into a DriftAccumulator: each frame is measured
    once, and only the first frame and the last two are held between chunks.

    Every per-frame measure looks back at most to the previous frame and the first (consistency, flicker,
    motion) or one frame on each side (smoothness), so a chunk is analysed behind the frames it refers
    to, and a chunk's last frame is added once the next frame has given it its smoothness.
    """

    def __init__(self, prompt: str | Scene, frames: int, bins: int, chunk: int = 16) -> None:
        self.scene = parse_prompt(prompt) if isinstance(prompt, str) else prompt
        self.prompt = prompt if isinstance(prompt, str) else prompt.prompt
        self.acc = DriftAccumulator(frames, bins, chunk)
        self.seen = 0
        self._context: dict[int, np.ndarray] = {}  # frame index -> frame: the first and the last two
        self._held: dict[str, np.ndarray] = {}  # the series of the last frame seen, but for its smoothness

    def push(self, frames: np.ndarray) -> None:
        """Measure the next frames, uint8 ``[n, H, W, 3]``."""
        if len(frames) == 0:
            return
        context = sorted(self._context.items())
        report = analyze(np.concatenate([np.stack([f for _, f in context]), frames]) if context else frames, self.scene)
        series, at = report.series, len(context)
        if self._held:
            self._held["smoothness"] = series["smoothness"][at - 1 : at]
        rows = {name: np.concatenate([self._held.get(name, []), values[at : at + len(frames) - 1]]) for name, values in series.items()}
        self.acc.add(self.seen - bool(self._held), rows)
        self._held = {name: values[at + len(frames) - 1 :] for name, values in series.items()}
        self.seen += len(frames)
        arrived = zip(range(self.seen - len(frames), self.seen), frames)
        self._context = {i: f.copy() for i, f in [*context, *arrived] if i == 0 or i >= self.seen - 2}  # copies: a view holds its chunk

    def finish(self) -> dict[str, Any]:
        """``toy_world`` (as ``ToyReport.to_dict(per_frame=False)``) and ``drift`` (as ``ToyReport.summary``) sections."""
        if self.seen != self.acc.frames:
            raise ValueError(f"the video holds {self.seen} frames, not the {self.acc.frames} announced")
        if self._held:
            self.acc.add(self.seen - 1, self._held)
            self._held = {}
        return {"toy_world": overview(self.prompt, self.acc), "drift": self.acc.summary(self.prompt)}
