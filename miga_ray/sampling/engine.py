"""What every streaming engine shares: the base clip, ordered output, and state round-trips."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .phases import BASE, BASE_NOISE
from .runner import WindowRunner
from .state import pack, unpack
from .trace import Counters

STATE_VERSION = 3  # 2 (issue 15): the fidelity fixes, reflection scores per batch element, one generic state layout; 3 (issue 16): seeds (``first``)


def sample_base_clip(runner: WindowRunner, count: int) -> list[Tensor]:
    """An ordinary short clip: ``count`` latents from pure noise, all at one level, T steps to clean."""
    T = runner.solver.grid.num_levels
    ids = list(range(count))
    xs = [runner.noise.draw(BASE_NOISE, i, T) for i in ids]
    for level in range(T, 0, -1):
        xs = runner(BASE, xs, [level] * count, ids, [True] * count)
    return xs


@dataclass
class StreamState:
    """What every engine holds besides its queues: finished latents not yet pulled, and how many were pulled.

    Each engine's state extends it; the whole state round-trips through ``state.pack``/``unpack``.
    """

    emitted: int = 0
    first: int = 0  # the first latent id this engine outputs: a seed's latents come before it (``sampling.seed``)
    out_ids: list[int] = field(default_factory=list)
    out: list[Tensor] = field(default_factory=list)


def emit(state: StreamState, index: int, latent: Tensor) -> None:
    """A finished latent joins the output, in order, until it is pulled; one before ``state.first`` (warm-up, or known) does not."""
    if index < state.first:
        return
    state.out_ids.append(index)
    state.out.append(latent)


class StreamingEngine:
    """Yields clean latents ``(index, [B, C, H, W])`` in order while holding a bounded number of latents.

    Subclasses hold everything that changes in ``self.state`` (a ``StreamState`` dataclass), and
    implement ``_advance`` (one unit of work that may finish latents: a call of the engine's phase
    functions over runner, state and config) and ``held_latents``. With a seed on the runner
    (``sampling.seed``) the engine continues it: it outputs latents ``seed.count`` and later.
    """

    cfg: Any  # the engine's config dataclass (``to_dict()``)

    def __init__(self, runner: WindowRunner, num_latents: int, dtype: torch.dtype, device: torch.device | str, state: StreamState) -> None:
        if num_latents < 1:
            raise ValueError(f"num_latents: must satisfy num_latents >= 1 (got {num_latents})")
        known = runner.seed.count if runner.seed is not None else 0
        if known >= num_latents:
            raise ValueError(f"num_latents: must satisfy num_latents > the seed's latents ({known}) (got {num_latents})")
        self.runner, self.num_latents = runner, num_latents
        self.dtype, self.device = dtype, torch.device(device)
        self.shape = runner.noise.shape
        state.first = state.emitted = known
        self.state = state

    @property
    def emitted(self) -> int:
        """Latents pulled so far."""
        return self.state.emitted

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
        if not self.state.out:
            if not self.done:
                self._advance()
            return None
        self.state.emitted += 1
        return self.state.out_ids.pop(0), self.state.out.pop(0)

    def pull(self) -> tuple[int, Tensor] | None:
        """The next clean latent in order, or None once all ``num_latents`` have been produced."""
        while (item := self.step()) is None:
            if self.done and not self.state.out:
                return None
        return item

    def __iter__(self) -> Iterator[tuple[int, Tensor]]:
        while (item := self.pull()) is not None:
            yield item

    def _advance(self) -> None:
        raise NotImplementedError

    def held_latents(self) -> int:
        """Latent frames currently held (queues, buffers, pending output): the constant-memory measure."""
        raise NotImplementedError

    def held_bytes(self) -> int:
        b, c, h, w = self.shape
        return self.held_latents() * b * c * h * w * torch.empty((), dtype=self.dtype).element_size()

    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The whole engine state as (tensors, JSON-able meta): safetensors + JSON, never pickle."""
        return self.state_dict_of(self.state, self.counters)

    def state_dict_of(self, state: StreamState, counters: Counters) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """``state_dict`` of a state this engine was in (with the counters it had then): a deferred engine's checkpoint."""
        tensors, packed = pack(state, self.shape, self.dtype)
        meta = {**self._identity(), "config": self.cfg.to_dict(), "counters": counters.to_json(), "state": packed}
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """Restore a state from ``state_dict``; refuses one from another engine kind, length, seed or config."""
        for key, value in {**self._identity(), "config": self.cfg.to_dict()}.items():
            if meta.get(key) != value:
                raise ValueError(f"state: {key} is {meta.get(key)!r} in the checkpoint but {value!r} in this engine")
        self.state = unpack(type(self.state), tensors, meta["state"], self.device, self.dtype)
        self.runner.counters = Counters.from_json(meta["counters"])

    def _identity(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "engine": type(self).__name__, "num_latents": self.num_latents, "seed": self.runner.noise.seed,
                "first": self.state.first}  # first: the seed's latent count (0 without one)
