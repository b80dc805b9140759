"""VideoCrafter2 as a base model: a port of its UNet, VAE decoder and OpenCLIP text encoder that loads the released checkpoint."""

from .model import VC2Config, VC2Model, load_vc2, random_vc2, vc2_grid

__all__ = ["VC2Config", "VC2Model", "load_vc2", "random_vc2", "vc2_grid"]
