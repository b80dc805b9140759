"""What every streaming engine shares: the base clip, ordered output, and state round-trips."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from .runner import WindowRunner
from .trace import Counters

STATE_VERSION = 1


def sample_base_clip(runner: WindowRunner, count: int) -> list[Tensor]:
    """An ordinary short clip: ``count`` latents from pure noise, all at one level, T steps to clean."""
    T = runner.solver.grid.num_levels
    ids = list(range(count))
    xs = [runner.noise.draw("base", i, T) for i in ids]
    for level in range(T, 0, -1):
        xs = runner("base", xs, [level] * count, ids, [True] * count)
    return xs


def stack_frames(frames: Sequence[Tensor], like_shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    """Latent frames ``[B, C, H, W]`` -> one ``[B, C, n, H, W]`` CPU tensor (n may be 0) for a checkpoint."""
    if not frames:
        b, c, h, w = like_shape
        return torch.empty((b, c, 0, h, w), dtype=dtype)
    return torch.stack([f.detach().cpu() for f in frames], dim=2).contiguous()


class StreamingEngine:
    """Yields clean latents ``(index, [B, C, H, W])`` in order while holding a bounded number of latents.

    Subclasses implement ``_advance`` (one unit of work that may finish latents) and the state hooks.
    """

    def __init__(self, runner: WindowRunner, num_latents: int, dtype: torch.dtype, device: torch.device | str) -> None:
        if num_latents < 1:
            raise ValueError(f"num_latents: must satisfy num_latents >= 1 (got {num_latents})")
        self.runner, self.num_latents = runner, num_latents
        self.dtype, self.device = dtype, torch.device(device)
        self.shape = runner.noise.shape
        self._out: deque[tuple[int, Tensor]] = deque()
        self.emitted = 0

    @property
    def counters(self) -> Counters:
        return self.runner.counters

    @property
    def done(self) -> bool:
        return self.emitted >= self.num_latents

    def step(self) -> tuple[int, Tensor] | None:
        """One unit of work: the next clean latent if one is ready, else advance once and return None.

        Between two steps the state is whole, so a caller may checkpoint there (e.g. on time while the
        queue fills and no latent comes out for a long while)."""
        if not self._out:
            if not self.done:
                self._advance()
            return None
        item = self._out.popleft()
        self.emitted += 1
        return item

    def pull(self) -> tuple[int, Tensor] | None:
        """The next clean latent in order, or None once all ``num_latents`` have been produced."""
        while (item := self.step()) is None:
            if self.done and not self._out:
                return None
        return item

    def __iter__(self) -> Iterator[tuple[int, Tensor]]:
        while (item := self.pull()) is not None:
            yield item

    def _emit(self, index: int, latent: Tensor) -> None:
        self._out.append((index, latent))

    def _advance(self) -> None:
        raise NotImplementedError

    def held_latents(self) -> int:
        """Latent frames currently held (queues, buffers, pending output): the constant-memory measure."""
        raise NotImplementedError

    def held_bytes(self) -> int:
        b, c, h, w = self.shape
        return self.held_latents() * b * c * h * w * torch.empty((), dtype=self.dtype).element_size()

    # state: the subclass lists its tensors and integers; the common part is handled here
    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The whole engine state as (tensors, JSON-able meta): safetensors + JSON, never pickle."""
        tensors = {"out": stack_frames([x for _, x in self._out], self.shape, self.dtype)}
        meta = {
            "version": STATE_VERSION,
            "engine": type(self).__name__,
            "num_latents": self.num_latents,
            "seed": self.runner.noise.seed,
            "emitted": self.emitted,
            "out_ids": [i for i, _ in self._out],
            "counters": self.counters.to_json(),
        }
        own_tensors, own_meta = self._state()
        tensors.update(own_tensors)
        meta.update(own_meta)
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """Restore a state from ``state_dict``; refuses one from another engine kind, length or seed."""
        expect = {"version": STATE_VERSION, "engine": type(self).__name__, "num_latents": self.num_latents, "seed": self.runner.noise.seed}
        for key, value in expect.items():
            if meta.get(key) != value:
                raise ValueError(f"state: {key} is {meta.get(key)!r} in the checkpoint but {value!r} in this engine")
        self.emitted = meta["emitted"]
        self._out = deque(zip(meta["out_ids"], self._frames(tensors["out"])))
        self.runner.counters = Counters.from_json(meta["counters"])
        self._load(tensors, meta)

    def _frames(self, stacked: Tensor) -> list[Tensor]:
        return [f.to(self.device, self.dtype) for f in stacked.unbind(dim=2)]

    def _state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        raise NotImplementedError

    def _load(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        raise NotImplementedError
