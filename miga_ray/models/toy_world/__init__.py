"""The toy world: a procedural video world of coloured sprites over textured backgrounds.

It trains the tiny text-to-video model; ``miga_ray.evaluation.toy_world`` measures generated videos
from pixels with an analyzer that knows the generator. No learned weights.
"""

from .render import BACKGROUND_RGB, render_background, render_clip, shape_alpha, sprite_centers, sprite_radius
from .world import (
    BACKGROUNDS,
    COLOR_RGB,
    COLORS,
    MAX_SPRITES,
    SHAPES,
    SIZES,
    WORLDS,
    Scene,
    Sprite,
    World,
    parse_prompt,
    sample_scene,
)

__all__ = [
    "BACKGROUNDS", "BACKGROUND_RGB", "COLORS", "COLOR_RGB", "MAX_SPRITES", "SHAPES", "SIZES", "WORLDS",
    "Scene", "Sprite", "World", "parse_prompt", "render_background", "render_clip", "sample_scene",
    "shape_alpha", "sprite_centers", "sprite_radius",
]
