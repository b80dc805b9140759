"""Plain batch versions of MIGA and FIFO-Diffusion that hold the whole video, in the reference code's order.

MIGA: fill and stage 1 over the whole list of latents, then stage 2 over the whole video, then the
refine pass over the whole video. These are the specification the streaming engines must equal.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from miga_ray.sampling import FifoConfig, MigaConfig, WindowRunner, consistency_score, sample_base_clip
from miga_ray.sampling.windows import guidance_positions, sweep_blocks


def _noised(runner: WindowRunner, x0: Tensor, purpose: str, index: int, level: int, variant: int = 0) -> Tensor:
    eps = runner.noise.draw(purpose, index, level, variant)
    return runner.solver.add_noise(x0.unsqueeze(2), eps.unsqueeze(2), torch.tensor([level])).squeeze(2)


def _fresh(runner: WindowRunner, index: int, anchor: Tensor | None, variant: int = 0) -> Tensor:
    T = runner.solver.grid.num_levels
    if anchor is None:
        return runner.noise.draw("entry", index, T, variant)
    return _noised(runner, anchor, "entry", index, T, variant)


def _denoise(runner, phase, X, lev, slots, kept_ids, guide_ids=(), variant=0):
    """One window over latent ids ``slots``; step those in ``kept_ids`` in place in X/lev."""
    out = runner(phase, [X[i] for i in slots], [lev[i] for i in slots], list(slots),
                 [i in kept_ids for i in slots], guidance=[i in guide_ids for i in slots], variant=variant)
    for i, x in zip([i for i in slots if i in kept_ids], out):
        X[i], lev[i] = x, lev[i] - 1


def _candidate(runner, cfg, refs_ids, X, lev, group_ids, anchor, variant):
    """Regrow the groups behind the references from fresh noise; references stay frozen."""
    T = runner.solver.grid.num_levels
    CX = {i: X[i] for i in refs_ids}
    CL = {i: lev[i] for i in refs_ids}
    order = list(refs_ids)
    for step in range(cfg.reflect_after):
        if step < len(group_ids):
            for i in group_ids[step]:
                CX[i], CL[i] = _fresh(runner, i, anchor, variant), T
                order.append(i)
        frozen = len(refs_ids)
        for a, b in sweep_blocks(len(order), cfg.window, cfg.write_stride, step % cfg.write_stride):
            if b <= frozen:
                continue
            slots = order[a : min(len(order), a + cfg.window)]
            _denoise(runner, "reflect", CX, CL, slots, set(order[max(a, frozen) : b]), set(refs_ids), variant)
    return [CX[i] for i in order[len(refs_ids) :]]


def miga_batch(runner: WindowRunner, cfg: MigaConfig, N: int) -> list[Tensor]:
    """The whole video through MIGA, every latent kept in memory until the end."""
    T = runner.solver.grid.num_levels
    f, L, m, E, s = cfg.window, cfg.group, cfg.guidance, cfg.stage2_levels, cfg.write_stride
    base = sample_base_clip(runner, f)
    X: dict[int, Tensor] = {}
    lev: dict[int, int] = {}
    for i in range(min(N, (f // L) * L)):
        lev[i] = T - f // L + i // L
        X[i] = _noised(runner, base[i], "init", i, lev[i])
    head, tail, sweep, last, recent = 0, len(X), 0, None, None

    def anchor():
        return None if cfg.entry == "noise" else (recent if cfg.entry == "recent" and recent is not None else base[-1])

    while head < N:
        if tail < N:
            for i in range(tail, min(tail + L, N)):
                X[i], lev[i] = _fresh(runner, i, anchor()), T
            tail = min(tail + L, N)
        n, phase = tail - head, "fill" if head == 0 else "stage1"
        w = f - m
        for a, b in sweep_blocks(n, w, s, sweep % s):
            if m and a < m:  # head window: everything ahead is guidance
                guide = list(range(a))
                cur = list(range(a, min(n, f, (a // L + math.ceil(w / L) + 1) * L)))
            else:
                guide = guidance_positions(a, m, L) if m else []
                cur = list(range(a, min(n, a + w)))
            _denoise(runner, phase, X, lev, [head + j for j in guide + cur], {head + j for j in range(a, b)}, {head + j for j in guide})
        sweep += 1
        while head < tail and lev[head] == E:
            size = min(L, tail - head)
            recent = X[head + size - 1]
            head += size
        if cfg.reflect and (cfg.reflect_during == "always" or head == 0):
            judged = [i for i in range(head, tail) if lev[i] == T - cfg.reflect_after]
            if judged and judged[0] - cfg.reflect_refs * L >= head + L:  # references behind the head group
                j = judged[0]
                refs_ids = list(range(j - cfg.reflect_refs * L, j))
                refs = torch.stack([X[i] for i in refs_ids], 2)
                score = consistency_score(torch.stack([X[i] for i in judged], 2), refs).tolist()  # per batch element
                previous, last = last, score
                drops = [e for e in range(len(score)) if previous is not None and previous[e] - score[e] > cfg.reflect_delta]
                if drops:
                    behind = list(range(j, tail))
                    groups = [behind[k : k + L] for k in range(0, len(behind), L)]
                    cands = [_candidate(runner, cfg, refs_ids, X, lev, groups, anchor(), c + 1) for c in range(cfg.reflect_candidates)]
                    scores = [consistency_score(torch.stack(c[: len(groups[0])], 2), refs).tolist() for c in cands]
                    last = list(score)
                    for e in drops:  # each element keeps its own groups unless its own best candidate beats them
                        best = max(range(len(scores)), key=lambda k: scores[k][e])
                        if scores[best][e] > score[e]:
                            for i, x in zip(behind, cands[best]):
                                X[i] = X[i].clone()
                                X[i][e] = x[e]
                            last[e] = scores[best][e]
    low = runner.solver.grid.lowest_step  # a grid whose last step is the identity stops one level early
    phases = [("stage2", E)] + ([("refine", E + 1)] if cfg.refine else [])  # refine: one level above the stage-2 entry
    for phase, entry in phases:
        if phase == "refine":
            for i in range(N):
                X[i], lev[i] = _noised(runner, X[i], "refine", i, entry), entry
        for p in range(entry - low + 1):
            for a, b in sweep_blocks(N, f, s, p % s):
                _denoise(runner, phase, X, lev, list(range(a, min(N, a + f))), set(range(a, b)))
    assert all(lev[i] == low - 1 for i in range(N))
    return [X[i] for i in range(N)]


def fifo_batch(runner: WindowRunner, cfg: FifoConfig, N: int) -> list[Tensor]:
    """The whole video through FIFO-Diffusion, every latent kept in memory until the end."""
    T, f = runner.solver.grid.num_levels, cfg.window
    s = f // 2 if cfg.lookahead else f
    p = f - s if cfg.lookahead else 0
    base = sample_base_clip(runner, f)
    first = -(T - f)
    X: dict[int, Tensor] = {}
    for q in range(-p, T):  # diagonal position q (prefix below 0) holds latent first + q at level q + 1
        i = first + q
        x0 = base[min(f - 1, max(0, i))]
        X[i] = x0 if q < 0 else _noised(runner, x0, "init", i, q + 1)
    outputs = []
    for it in range(N + T - f):
        head = first + it
        lev = {head + q: max(q + 1, 0) for q in range(-p, T)}
        old = dict(X)
        for a in reversed(range(0, T, s)):
            b = min(a + s, T)
            slots = list(range(head + b - f, head + b))
            out = runner("fifo", [old[i] for i in slots], [lev[i] for i in slots], slots, [i >= head + a for i in slots])
            for i, x in zip(range(head + a, head + b), out):
                X[i] = x
        if head >= 0:
            outputs.append(X[head])
        X[head + T] = runner.noise.draw("entry", head + T, T)
    return outputs
