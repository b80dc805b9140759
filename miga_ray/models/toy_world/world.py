"""Vocabulary, scenes and the prompt grammar of the toy world.

Grammar (``GRAMMAR``; case and whitespace tolerant, a trailing full stop is ignored)::

    prompt := sprite ("and" sprite)* ["moving"] ("over" | "on") ["the"] background
    sprite := ("a" | "an") [size] colour shape

The canonical prompt (``Scene.prompt``) always names the size and says "moving over".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
SIZES: tuple[str, ...] = ("small", "large")
DEFAULT_SIZE = "large"
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 220, 230),
}
COLORS: tuple[str, ...] = tuple(COLOR_RGB)
BACKGROUNDS: tuple[str, ...] = ("sand", "grass", "water", "night", "brick", "snow")
MAX_SPRITES = 3
GRAMMAR = (
    'prompt := sprite ("and" sprite)* ["moving"] ("over" | "on") ["the"] background; '
    'sprite := ("a" | "an") [size] colour shape'
)

_ARTICLES = ("a", "an")
_FILLERS = ("moving",)
_PREPOSITIONS = ("over", "on")


def _check(kind: str, word: str, allowed: tuple[str, ...]) -> None:
    """Raise ValueError naming an unknown word and what is allowed in its place."""
    if word not in allowed:
        raise ValueError(f"unknown {kind} {word!r}; allowed: {', '.join(allowed)}")


@dataclass(frozen=True)
class Sprite:
    """One coloured shape of a given size (DEFAULT_SIZE is drawn when a prompt names none)."""

    shape: str
    color: str
    size: str = DEFAULT_SIZE
    size_named: bool = field(default=True, compare=False)  # the prompt named the size: only then is it judged

    def __post_init__(self) -> None:
        """Reject names outside the vocabulary so a typo fails where it is made."""
        _check("shape", self.shape, SHAPES)
        _check("colour", self.color, COLORS)
        _check("size", self.size, SIZES)

    @property
    def phrase(self) -> str:
        """Canonical noun phrase, e.g. 'a small red circle'."""
        return f"a {self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """One to MAX_SPRITES sprites moving over one background."""

    sprites: tuple[Sprite, ...]
    background: str

    def __post_init__(self) -> None:
        """Validate the sprite count and background name."""
        if not 1 <= len(self.sprites) <= MAX_SPRITES:
            raise ValueError(f"a scene has 1 to {MAX_SPRITES} sprites, got {len(self.sprites)}")
        _check("background", self.background, BACKGROUNDS)

    @property
    def prompt(self) -> str:
        """Canonical prompt text, which parse_prompt maps back to this scene."""
        return " and ".join(s.phrase for s in self.sprites) + f" moving over {self.background}"


def _word(words: list[str], i: int, expected: str) -> str:
    """Return words[i], or raise ValueError saying what was expected at the end of the prompt."""
    if i >= len(words):
        raise ValueError(f"prompt ends where {expected} was expected")
    return words[i]


def _parse_sprite(words: list[str], i: int) -> tuple[Sprite, int]:
    """Parse 'a [size] colour shape' starting at words[i]; return the sprite and next index."""
    _check("article", _word(words, i, "an article"), _ARTICLES)
    i += 1
    size, named = DEFAULT_SIZE, False
    word = _word(words, i, "a size or colour")
    if word in SIZES:
        size, named, i = word, True, i + 1
    elif word not in COLORS:
        raise ValueError(
            f"unknown size or colour {word!r}; allowed sizes: {', '.join(SIZES)}; "
            f"colours: {', '.join(COLORS)}"
        )
    color = _word(words, i, "a colour")
    _check("colour", color, COLORS)
    shape = _word(words, i + 1, "a shape")
    _check("shape", shape, SHAPES)
    return Sprite(shape, color, size, named), i + 2


def parse_prompt(text: str) -> Scene:
    """Parse a toy-world prompt into a Scene; ValueError names any unknown word."""
    words = re.sub(r"[.,!]", " ", text).lower().split()
    sprites = []
    sprite, i = _parse_sprite(words, 0)
    sprites.append(sprite)
    while _word(words, i, "'and', 'moving' or 'over'") == "and":
        sprite, i = _parse_sprite(words, i + 1)
        sprites.append(sprite)
    if words[i] in _FILLERS:
        i += 1
    _check("word", _word(words, i, "'over'"), _PREPOSITIONS)
    i += 1
    if _word(words, i, "a background") == "the":
        i += 1
    background = _word(words, i, "a background")
    _check("background", background, BACKGROUNDS)
    if i + 1 < len(words):
        raise ValueError(f"unknown word {words[i + 1]!r} after the background; the prompt must end there")
    return Scene(tuple(sprites), background)


def sample_scene(
    rng: np.random.Generator, max_sprites: int = 2, sizes: tuple[str, ...] = SIZES, shapes: tuple[str, ...] = SHAPES
) -> Scene:
    """Draw a random scene with 1..max_sprites sprites of distinct colours, sizes from ``sizes``, shapes from ``shapes``."""
    count = int(rng.integers(1, min(max_sprites, MAX_SPRITES) + 1))
    colors = rng.choice(len(COLORS), size=count, replace=False)
    sprites = tuple(
        Sprite(shapes[rng.integers(len(shapes))], COLORS[c], sizes[rng.integers(len(sizes))])
        for c in colors
    )
    return Scene(sprites, BACKGROUNDS[rng.integers(len(BACKGROUNDS))])


@dataclass(frozen=True)
class World:
    """The part of the grammar a toy model was trained on: its sprite sizes, shapes and most sprites per scene.

    A model knows nothing outside it, so a prompt outside it is refused like an unknown word."""

    sizes: tuple[str, ...] = SIZES
    max_sprites: int = 2
    shapes: tuple[str, ...] = SHAPES

    def __post_init__(self) -> None:
        """Reject sizes and shapes outside the vocabulary and counts outside 1..MAX_SPRITES."""
        for size in self.sizes:
            _check("size", size, SIZES)
        for shape in self.shapes:
            _check("shape", shape, SHAPES)
        if not 1 <= self.max_sprites <= MAX_SPRITES:
            raise ValueError(f"max_sprites must be 1 to {MAX_SPRITES}, got {self.max_sprites}")

    def sample_scene(self, rng: np.random.Generator) -> Scene:
        """A random scene of this world."""
        return sample_scene(rng, self.max_sprites, self.sizes, self.shapes)

    def parse(self, text: str) -> Scene:
        """Parse a prompt and check it lies in this world; ValueError names the word or count outside it."""
        scene = parse_prompt(text)
        if len(scene.sprites) > self.max_sprites:
            raise ValueError(f"{len(scene.sprites)} sprites; this model's world has at most {self.max_sprites}")
        for sprite in scene.sprites:
            if sprite.size not in self.sizes:
                word = sprite.size if sprite.size_named else f"(default size) {sprite.size}"
                raise ValueError(f"size {word!r} is outside this model's world; its sizes: {', '.join(self.sizes)}")
            if sprite.shape not in self.shapes:
                raise ValueError(f"shape {sprite.shape!r} is outside this model's world; its shapes: {', '.join(self.shapes)}")
        return scene

    def as_json(self) -> dict[str, object]:
        """The world as ``miga.json`` records it."""
        return {"sizes": list(self.sizes), "max_sprites": self.max_sprites, "shapes": list(self.shapes)}

    @classmethod
    def recorded(cls, folder: Path) -> World | None:
        """The world a toy checkpoint directory records in its ``miga.json``, or None (checkpoints made before
        worlds were recorded were trained on ``WORLDS["full"]``)."""
        meta = folder / "miga.json"
        data = json.loads(meta.read_text()).get("world") if meta.is_file() else None
        if not data:
            return None
        return cls(tuple(data["sizes"]), int(data["max_sprites"]), tuple(data["shapes"]))

    @classmethod
    def trained(cls, folder: Path) -> World:
        """The world a toy checkpoint was trained on, whose scenes its studies and gate draw: the recorded one,
        else ``WORLDS["full"]`` (what the recipe drew before worlds were recorded)."""
        return cls.recorded(folder) or WORLDS["full"]


WORLDS: dict[str, World] = {
    "full": World(),  # every size, one or two sprites: what sample_scene draws
    "large": World(sizes=("large",)),  # large sprites only, one or two
    "single": World(sizes=("large",), max_sprites=1),  # one large sprite
    "circle": World(sizes=("large",), max_sprites=1, shapes=("circle",)),  # one large circle: colour x background
}
