"""Base models behind the Denoiser protocol: adapters, the toy world and its model. Importing this package is
light (no torch): the command line checks a prompt against the shipped toy model's world before loading it."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TOY_DIR = ASSETS / "toy-wan"  # the shipped toy checkpoint: one large circle, one noise level per training clip
TOY_CHECKPOINTS: dict[str, Path] = {"toy": TOY_DIR, "toy-mixed": ASSETS / "toy-wan-mixed"}  # by model name; toy-mixed:
# the same recipe trained on FIFO's mixed-level windows, the control of the studies in docs/RESULTS.md


def toy_checkpoint(name: str) -> Path:
    """The directory of a shipped toy model by name, else ``name`` as a path."""
    return TOY_CHECKPOINTS.get(name, Path(name))
