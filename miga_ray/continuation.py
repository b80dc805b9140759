"""What a continued render starts from: a user's video (encoded by the model's VAE) or a finished job's
stored clean latents (``miga extend``). Either gives the clean latents the video begins with, which
the sampler continues (``sampling.seed``) and the job's identity names (``identity``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .config import ConfigError
from .models.decode import latents_for_frames
from .models.registry import LoadedModel
from .storage import DamagedError, LatentWriter
from .storage.clips import Clip, decode_clip


@dataclass(frozen=True)
class InitVideo:
    """A user's video or image: its frames, fitted to the render, begin the output as they are, and their
    latents (through the model's VAE) are what the sampler continues."""

    clip: Clip

    def identity(self) -> dict[str, Any]:
        return {"init_video_sha256": self.clip.sha256}

    def frames(self, model: LoadedModel, height: int, width: int) -> np.ndarray:
        """The clip's frames as the video's head: decoded one at a time, each scaled to the render as it is read
        (``decode_clip``: memory holds the fitted frames, never the clip at its own size), and cut to what the VAE
        encodes whole; ConfigError when it cannot be decoded."""
        try:
            return decode_clip(self.clip, height, width, model.encode_step)
        except ValueError as exc:
            raise ConfigError(f"--init-video {exc}") from None

    def latents(self, model: LoadedModel, frames: np.ndarray, frames_total: int) -> list[Tensor]:
        """The clean latents ``[1, C, h, w]`` each of the head ``frames``; ConfigError when it is not shorter than the render."""
        if len(frames) >= frames_total:
            raise ConfigError(f"frames: must exceed the {len(frames)} frames of --init-video {self.clip.path} it continues (got {frames_total})")
        return list(model.encode_video(torch.from_numpy(frames)).unbind(dim=2))


@dataclass(frozen=True)
class Extension:
    """A finished job continued in place: ``extends`` is its identity (hash), ``from_frames`` its length."""

    extends: str
    from_frames: int

    def identity(self) -> dict[str, Any]:
        return {"extends": self.extends, "from_frames": self.from_frames}

    def count(self, temporal: int) -> int:
        """Stored latents the extension continues."""
        return latents_for_frames(self.from_frames, temporal)

    def digests(self, latents: LatentWriter, temporal: int) -> dict[int, str]:
        """The recorded sha256 of every latent it continues (from the finished job's ``latents.sha256``)."""
        if (problem := latents.load_sums(self.count(temporal))) is not None:
            raise DamagedError(f"job {latents.job.job_id}: {problem} to extend")
        return dict(latents.digests)

    def latents(self, latents: LatentWriter, depth: int, temporal: int, like: Tensor) -> list[Tensor]:
        """The last ``depth`` stored latents it continues, checked against their digests, as ``[1, C, h, w]`` like ``like``."""
        count = self.count(temporal)
        return [latents.read(i).unsqueeze(0).to(like) for i in range(max(0, count - depth), count)]


Start = InitVideo | Extension


def check_length(start: Start | None, frames_total: int) -> None:
    """ConfigError unless an extension makes the video longer."""
    if isinstance(start, Extension) and frames_total <= start.from_frames:
        raise ConfigError(f"--frames: must exceed the job's {start.from_frames} frames (got {frames_total})")
