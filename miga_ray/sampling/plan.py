"""How much model work a whole render takes: the engine's own schedule run dry, for honest progress.

The schedule (which windows run, at which levels) depends only on the configuration, the level
count and the number of latents, never on latent values; self-reflection only adds candidate
calls (phase ``reflect``), which no plan can foresee. So the plan replays the engine's code with a
zero-cost model on 1x1 latents and counts every call except reflection's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .denoiser import Conditioning
from .engine import StreamingEngine
from .fifo import FifoEngine
from .miga import MigaEngine
from .noise import NoiseSource
from .runner import WindowRunner
from .seed import seed_like
from .trace import Counters

UNPLANNED = ("reflect",)  # phases whose calls depend on latent values


def scheduled_calls(counters: Counters) -> int:
    """Model calls made so far that belong to the planned schedule (all but reflection candidates)."""
    return counters.total_calls - sum(counters.calls[p] for p in UNPLANNED)


def _zero_model(latents: Tensor, timesteps: Tensor, context: object) -> Tensor:
    return torch.zeros_like(latents)


def dry_engine(engine: StreamingEngine, reflect: bool = False) -> StreamingEngine:
    """A fresh engine with ``engine``'s settings over a zero-cost model on 1x1 latents (reflection off unless ``reflect``)."""
    noise = NoiseSource(engine.runner.noise.seed, (1, 1, 1, 1), torch.float32, "cpu")
    seed = seed_like(engine.runner.seed, noise.shape)  # which latents are known decides which calls run
    runner = WindowRunner(_zero_model, engine.runner.solver, Conditioning(None), noise, seed=seed)  # its grid decides the sweeps
    if isinstance(engine, MigaEngine):
        return MigaEngine(runner, engine.cfg if reflect else engine.cfg.with_(reflect=False), engine.num_latents)
    if isinstance(engine, FifoEngine):
        return FifoEngine(runner, engine.cfg, engine.num_latents)
    raise TypeError(f"no plan for {type(engine).__name__}")


def planned_calls(engine: StreamingEngine) -> int:
    """Scheduled model calls a whole render on ``engine`` makes from the start (``scheduled_calls`` at the end)."""
    dry = dry_engine(engine)
    for _ in dry:
        pass
    return scheduled_calls(dry.counters)
