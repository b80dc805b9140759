"""Runs one window through the model and steps the latents it keeps: the sampler's only model call site."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .denoiser import Conditioning, Denoiser, guided_forward
from .noise import NoiseSource
from .phases import REFLECT, STEP_NOISE
from .schedule import PromptSchedule, as_schedule
from .seed import Seed
from .solvers import Solver
from .trace import CallTrace, Counters


class WindowRunner:
    """Model + solver + conditioning + noise: a window of latents at their own levels in, kept latents
    one level lower out. Each window is conditioned on the latents it writes (``PromptSchedule``; a
    plain ``Conditioning`` is its one-part schedule). With a ``seed``, a kept latent that is known is the
    seed's latent at its new level (``sampling.seed``). Counts every call and writes it to the trace when
    one is attached."""

    def __init__(
        self,
        model: Denoiser,
        solver: Solver,
        cond: Conditioning | PromptSchedule,
        noise: NoiseSource,
        trace: CallTrace | None = None,
        seed: Seed | None = None,
    ) -> None:
        self.model, self.solver, self.noise, self.trace = model, solver, noise, trace
        self.schedule = as_schedule(cond)
        self.seed = seed
        self.counters = Counters()

    @torch.no_grad()
    def __call__(
        self,
        phase: str,
        latents: Sequence[Tensor],
        levels: Sequence[int],
        ids: Sequence[int],
        kept: Sequence[bool],
        guidance: Sequence[bool] | None = None,
        variant: int = 0,
    ) -> list[Tensor]:
        """Denoise a window of latent frames (each ``[B, C, H, W]``); return the kept ones, stepped."""
        guidance = guidance if guidance is not None else [False] * len(latents)
        kept_at = [j for j, k in enumerate(kept) if k]
        known = self.seed.known([ids[j] for j in kept_at]) if self.seed is not None else None
        if known and all(known):
            return [self.seed.hold(self.solver, self.noise, ids[j], levels[j] - 1) for j in kept_at]  # no call needed
        x = torch.stack(list(latents), dim=2)
        lv = torch.tensor(list(levels), dtype=torch.long)
        t = self.solver.grid.timesteps[lv].to(device=x.device, dtype=torch.float32)
        out = guided_forward(self.model, x, t, self.schedule.window(ids, kept))
        self._count(phase, ids, levels, guidance, kept, variant)
        if not any(kept):  # the official schedule runs candidate windows that write only frozen references
            return []
        first = kept.index(True)
        keep = slice(first, first + sum(bool(k) for k in kept))  # the written latents are contiguous
        step_noise = None
        if self.solver.stochastic:
            step_noise = self.noise.frames(STEP_NOISE[phase], ids[keep], levels[keep], variant)
        stepped = list(self.solver.step(x[:, :, keep], out[:, :, keep], lv[keep], step_noise).unbind(dim=2))
        if known:
            stepped = [self.seed.hold(self.solver, self.noise, ids[j], levels[j] - 1) if k else x_
                       for j, x_, k in zip(kept_at, stepped, known)]
        return stepped

    def noised(self, x0: Tensor, purpose: str, index: int, level: int, variant: int = 0) -> Tensor:
        """Latent ``x0`` noised to ``level`` with its own counter-based noise: every re-noising of a queue latent goes here,
        so a runner that defers model calls (``sampling.graph``) can defer it too."""
        eps = self.noise.draw(purpose, index, level, variant)
        return self.solver.add_noise(x0.unsqueeze(2), eps.unsqueeze(2), torch.tensor([level])).squeeze(2)

    def resolve(self, latents: Sequence[Tensor]) -> list[Tensor]:
        """The values of queue latents where a phase must read them (reflection's scores); here they already are."""
        return list(latents)

    def _count(self, phase, ids, levels, guidance, kept, variant) -> None:
        c = self.counters
        c.calls[phase] += 1
        c.slots += len(ids)
        c.written += sum(bool(k) for k in kept)
        if self.trace is not None:
            entry = {
                "call": c.total_calls - 1,
                "phase": phase,
                "latents": [int(i) for i in ids],
                "levels": [int(l) for l in levels],
                "guidance": [bool(g) for g in guidance],
                "kept": [bool(k) for k in kept],
            }
            if phase == REFLECT:
                entry["candidate"] = variant
            self.trace.record(entry)
