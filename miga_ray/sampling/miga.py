"""MIGA as a streaming engine: a zigzag stage-1 queue with long-range guidance and self-reflection,
feeding a unified-level stage 2 (and refine) with bounded lag.

Stage 1, one step: a new group of ``group`` latents enters at level T; one sweep moves every queue
latent one level down in windows written head to tail (guidance slots see latents already stepped
in this sweep); the head group leaves once it reaches level E; then reflection may judge and
replace the group ``reflect_after`` steps below noise. The queue holds about (T - E) x group latents.

``schedule="reference"`` runs the official VideoCrafter2 code's schedule instead, call for call: a
fixed-length video whose output is the base clip and the fill latents (see ``advance_reference``).

The phases are functions over (runner, state, config); ``MigaEngine`` only holds them together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .config import MigaConfig
from .engine import StreamingEngine, StreamState, emit, sample_base_clip
from .phases import FILL, INIT_NOISE, STAGE1
from .queue import Queue
from .reflection import CandidateRequest, CandidateRunner, consistency_score, entry_latent, local_candidates
from .runner import WindowRunner
from .unified import UnifiedState, unified_enter, unified_run, unified_state
from .windows import reference_offset, stage1_windows


@dataclass
class MigaState(StreamState):
    """MIGA's stage-1 queue (latents, their levels, where it stands), its entry anchors and reflection score, and stage 2."""

    started: bool = False
    queue: Queue = field(default_factory=Queue)  # stage 1, head first
    head: int = 0  # latents that have left stage 1: the id of the queue's head
    pushed: int = 0  # latents that have entered stage 1
    sweeps: int = 0
    fill_iters: int = 0  # schedule reference: fill iterations done
    anchor: Tensor | None = None  # the base clip's last latent (clean)
    recent: Tensor | None = None  # newest latent that left stage 1
    last_score: list[float] | None = None  # per batch element
    unified: UnifiedState = field(default_factory=UnifiedState)


def start(runner: WindowRunner, state: MigaState, cfg: MigaConfig, total: int) -> None:
    """Base clip, re-noised onto the top of the staircase in whole groups (the first enters just below T);
    with a seed, the seeded start instead."""
    if runner.seed is not None:
        start_seeded(runner, state, cfg, total)
        return
    T, f, L = runner.solver.grid.num_levels, cfg.window, cfg.group
    base = sample_base_clip(runner, f)
    state.anchor = base[-1]
    count = min(total, (f // L) * L)
    groups = f // L
    for i in range(count):
        level = T - groups + i // L
        state.queue.push(runner.noised(base[i], INIT_NOISE, i, level), level, i)
    state.pushed = count
    state.started = True


def seed_depth(cfg: MigaConfig, num_levels: int) -> int:
    """Known latents a seeded start places: a full staircase, levels E + 1 to T - 1 (at least one, the anchor)."""
    return max(1, (num_levels - cfg.stage2_levels - 1) * cfg.group)


def start_seeded(runner: WindowRunner, state: MigaState, cfg: MigaConfig, total: int) -> None:
    """The seed's latents stand on a full staircase as a steady queue holds its own, in whole groups
    (group k of G = T - E - 1 at level E + 1 + k; ids before the seed are its first latent, as in FIFO's
    start); new latents in the last known latent's group start as that latent noised to the group's
    level. The seed's last latent is the anchor."""
    assert runner.seed is not None
    seed, T, L = runner.seed, runner.solver.grid.num_levels, cfg.group
    top = -(-seed.count // L) * L  # end of the group holding the last known latent
    groups = T - cfg.stage2_levels - 1
    first = top - groups * L
    state.anchor = last = seed.latent(seed.count - 1)
    for i in range(first, min(top, total)):
        level = T - groups + (i - first) // L
        if i < seed.count:
            x = seed.hold(runner.solver, runner.noise, i, level)
        else:
            x = runner.noised(last, INIT_NOISE, i, level)
        state.queue.push(x, level, i)
    state.head, state.pushed = first, min(top, total)
    u = state.unified
    u.arrived = u.base = first
    u.frontier = [first] * len(u.frontier)
    state.started = True


def entry_anchor(state: MigaState, cfg: MigaConfig) -> Tensor | None:
    """What a new stage-1 latent is noised from: None (pure noise), the newest latent out of stage 1, or the base clip's last."""
    if cfg.entry == "noise":
        return None
    if cfg.entry == "recent" and state.recent is not None:
        return state.recent
    return state.anchor


def push_group(runner: WindowRunner, state: MigaState, cfg: MigaConfig, anchor: Tensor | None, limit: int | None) -> None:
    """The next group enters at level T (up to latent id ``limit``): ``anchor`` noised, or pure noise."""
    T = runner.solver.grid.num_levels
    stop = state.pushed + cfg.group if limit is None else min(state.pushed + cfg.group, limit)
    for i in range(state.pushed, stop):
        state.queue.push(entry_latent(runner, anchor, i, 0), T, i)
    state.pushed = stop


def sweep(runner: WindowRunner, state: MigaState, cfg: MigaConfig, phase: str, offset: int) -> None:
    """Every queue latent one level down, in windows written head to tail from block offset ``offset``."""
    barriers = runner.schedule.barriers(state.queue.ids)
    windows = stage1_windows(
        len(state.queue), cfg.window, cfg.guidance, cfg.group, cfg.write_stride, offset, cfg.schedule == "reference", barriers
    )
    for window in windows:
        state.queue.step(runner, phase, window)
    state.sweeps += 1


def pop(state: MigaState, cfg: MigaConfig, total: int) -> None:
    """Head latents at level E leave stage 1 for stage 2, a group (or its rest) at a time, up to ``total``."""
    L, E = cfg.group, cfg.stage2_levels
    queue = state.queue
    while len(queue) and queue.levels[0] == E and state.head < total:
        leaving = queue.pop(min(L - state.head % L, len(queue)))
        state.head += len(leaving)
        state.recent = leaving[-1]
        unified_enter(state.unified, cfg, leaving)


def filling(state: MigaState) -> bool:
    """Whether the queue is still filling: no latent has left stage 1 yet (a seeded queue starts full)."""
    return state.first == 0 and state.head == 0


def reflect_now(state: MigaState, cfg: MigaConfig) -> bool:
    """Whether the streaming schedule judges after this sweep (always, or during the fill only)."""
    return cfg.reflect and (cfg.reflect_during == "always" or filling(state))


def reflect(runner: WindowRunner, state: MigaState, cfg: MigaConfig, candidates: CandidateRunner) -> None:
    """Judge the group ``reflect_after`` steps below noise; on a drop, try candidates and keep the best.

    Each batch element is judged, triggered and replaced on its own: an element keeps its groups
    unless its own best candidate scores above its own current group. Where the judged group and its
    references straddle a story's switch, a schedule that respects switches does not judge (the change
    is intended, not an anomaly) and the next judgement starts a new baseline; otherwise such a
    replacement is counted as ``accepted_at_switch``.
    """
    c, L, queue = cfg, cfg.group, state.queue
    level = runner.solver.grid.num_levels - c.reflect_after
    if level not in queue.levels:
        return
    j = queue.levels.index(level)
    r = j - c.reflect_refs * L
    if queue.ids[j] < state.first:  # a seed's latent: known, not judged
        return
    if r < L:  # references behind the head group: the official code judges index 50 once the head is below 47
        return
    at_switch = not runner.schedule.uniform(queue.ids[r : j + L])
    if at_switch and runner.schedule.respect_switch:
        runner.counters.reflections["paused_at_switch"] += 1
        state.last_score = None
        return
    refs = torch.stack(runner.resolve(queue.xs[r:j]), dim=2)  # a barrier where calls run elsewhere: scores need values
    judged = torch.stack(runner.resolve(queue.xs[j : j + L]), dim=2)
    scores = consistency_score(judged, refs).tolist()
    counts = runner.counters.reflections
    counts["judged"] += 1
    previous, state.last_score = state.last_score, scores
    if previous is None:
        return
    triggered = [b for b, (p, s) in enumerate(zip(previous, scores)) if p - s > c.reflect_delta]
    if not triggered:
        return
    counts["triggered"] += len(triggered)
    behind = queue.ids[j:]
    groups = [behind[k : k + L] for k in range(0, len(behind), L)]
    reference = c.schedule == "reference"
    anchor = state.anchor if reference else entry_anchor(state, c)  # the official candidates start anchored
    requests = [
        CandidateRequest(
            candidate=k + 1,
            refs=refs,
            ref_levels=queue.levels[r:j],
            ref_ids=queue.ids[r:j],
            groups=groups,
            steps=c.reflect_after,
            window=c.window,
            stride=c.write_stride,
            anchor=anchor,
            official_layout=reference,
        )
        for k in range(c.reflect_candidates)
    ]
    results = candidates(requests)
    found = [consistency_score(res[:, :, : len(groups[0])], refs).tolist() for res in results]  # [candidate][element]
    best = {b: max(range(len(found)), key=lambda k: found[k][b]) for b in triggered}
    accepted = [b for b in triggered if found[best[b]][b] > scores[b]]
    if not accepted:
        return
    counts["accepted"] += len(accepted)
    if at_switch:
        counts["accepted_at_switch"] += len(accepted)
    replaced = torch.stack(runner.resolve(queue.xs[j:]), dim=2)
    for b in accepted:
        replaced[b] = results[best[b]][b].to(replaced.device, replaced.dtype)
        state.last_score[b] = found[best[b]][b]
    queue.xs[j:] = list(replaced.unbind(dim=2))


def advance_stream(runner: WindowRunner, state: MigaState, cfg: MigaConfig, total: int, candidates: CandidateRunner) -> None:
    """One stage-1 step of the streaming schedule: a group enters, one sweep, the head leaves at E, reflection may judge."""
    if state.pushed < total:
        push_group(runner, state, cfg, entry_anchor(state, cfg), total)
    sweep(runner, state, cfg, FILL if filling(state) else STAGE1, state.sweeps % cfg.write_stride)
    pop(state, cfg, total)
    if reflect_now(state, cfg):
        reflect(runner, state, cfg, candidates)


def advance_reference(runner: WindowRunner, state: MigaState, cfg: MigaConfig, total: int, candidates: CandidateRunner) -> None:
    """One iteration of the official VideoCrafter2 schedule.

    Fill: a group made from the base clip's last latent noised to T enters, the queue is swept
    with the written blocks aligned to the tail (remainder block first), then reflection may
    judge; the fill stops after ``total / group`` iterations or when the head reaches
    E + 2, which it reaches without a sweep. Stage 1: sweep (offset = stage-1 iteration mod
    stride), pop at E, and a pure-noise group enters after every sweep but the last fill's
    (hence a two-level jump in the staircase); it stops once ``total`` have left. Stage 2
    and refine then run over all of them, sweep after sweep.
    """
    c, T = cfg, runner.solver.grid.num_levels
    groups = total // c.group
    fill_sweeps = max(0, min(groups, T - c.window // c.group - c.stage2_levels - 2))
    if state.fill_iters < min(groups, fill_sweeps + 1):
        push_group(runner, state, c, state.anchor, None)
        state.fill_iters += 1
        if state.fill_iters <= fill_sweeps:
            sweep(runner, state, c, FILL, reference_offset(len(state.queue), c.current_width, c.write_stride))
            if c.reflect:
                reflect(runner, state, c, candidates)
        return
    if state.head >= total:
        return
    stage1 = state.sweeps - fill_sweeps
    if stage1:
        push_group(runner, state, c, None, None)
    sweep(runner, state, c, STAGE1, stage1 % c.write_stride)
    pop(state, c, total)


def advance(runner: WindowRunner, state: MigaState, cfg: MigaConfig, total: int, candidates: CandidateRunner) -> None:
    """One unit of work: the start, or a stage-1 step of the configured schedule; then stage 2 emits what became final."""
    if not state.started:
        start(runner, state, cfg, total)
        return
    (advance_reference if cfg.schedule == "reference" else advance_stream)(runner, state, cfg, total, candidates)
    if cfg.schedule == "stream" or state.head >= total:  # the reference: stage 2 after stage 1
        for index, latent in unified_run(runner, state.unified, cfg, total):
            emit(state, index, latent)


class MigaEngine(StreamingEngine):
    """Streams ``num_latents`` clean latents of one video through MIGA."""

    state: MigaState

    def __init__(
        self,
        runner: WindowRunner,
        config: MigaConfig,
        num_latents: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        candidates: CandidateRunner | None = None,
    ) -> None:
        T = runner.solver.grid.num_levels
        config.validate(T, runner.solver.grid.lowest_step)
        if config.schedule == "reference" and runner.seed is not None:
            raise ValueError("schedule: must be stream to continue a seed (the reference schedule starts from its own base clip)")
        if config.schedule == "reference":
            fill_max = T - config.window // config.group
            fits = num_latents % config.group == 0 and config.window <= num_latents <= fill_max * config.group
            if not fits:
                raise ValueError(
                    f"num_latents: must satisfy, with schedule reference, a multiple of group ({config.group}) from window "
                    f"({config.window}) to {fill_max} groups ({fill_max * config.group}), as the official code caps it (got {num_latents})"
                )
        super().__init__(runner, num_latents, dtype, device, MigaState(unified=unified_state(runner, config)))
        self.cfg = config
        self.candidates = candidates or local_candidates(runner)

    def _advance(self) -> None:
        """One unit of work (``advance``)."""
        advance(self.runner, self.state, self.cfg, self.num_latents, self.candidates)

    @staticmethod
    def seed_depth(config: MigaConfig, num_levels: int) -> int:
        """How many of a seed's last latents the engine reads (``seed_depth``)."""
        return seed_depth(config, num_levels)

    def held_latents(self) -> int:
        fixed = sum(x is not None for x in (self.state.anchor, self.state.recent))
        return len(self.state.queue) + len(self.state.unified.queue) + len(self.state.out) + fixed
