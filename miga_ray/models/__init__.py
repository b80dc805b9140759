"""Base models behind the Denoiser protocol: adapters, the toy world and its model. Importing this package is
light (no torch): the command line checks a prompt against the shipped toy model's world before loading it."""

from pathlib import Path

TOY_DIR = Path(__file__).resolve().parent.parent / "assets" / "toy-wan"  # the shipped toy checkpoint
