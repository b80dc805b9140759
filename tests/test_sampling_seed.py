"""Seeded engines (``sampling.seed``): continuing given clean latents with FIFO and MIGA."""

from __future__ import annotations

import io
import json

import pytest
import torch
from safetensors.torch import load, save

from miga_ray.sampling import (
    DDIM,
    CallTrace,
    Conditioning,
    FifoConfig,
    FifoEngine,
    FlowEuler,
    MigaConfig,
    MigaEngine,
    NoiseSource,
    Seed,
    WindowRunner,
    ddpm_grid,
    flow_grid,
)
from miga_ray.sampling.plan import planned_calls, scheduled_calls
from toy_denoisers import MixingDenoiser

SHAPE = (1, 3, 4, 4)
F64 = torch.float64
MIGA = MigaConfig(window=8, group=3, guidance=2, stage2_levels=4, refine=True, stride=3, reflect=True, reflect_during="always",
                  reflect_delta=0.0, reflect_after=4, reflect_refs=2, reflect_candidates=2)
FIFO = FifoConfig(window=4)


def clip(count: int, value_seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(value_seed)
    return [torch.randn(SHAPE, generator=g, dtype=F64) for _ in range(count)]


def engine(kind: str, seed: Seed | None, total: int, trace=None):
    solver = FlowEuler(flow_grid(16, shift=3.0)) if kind == "miga" else DDIM(ddpm_grid(12), eta=1.0)
    runner = WindowRunner(MixingDenoiser(SHAPE[1]), solver, Conditioning(1.0, 0.0, 2.5), NoiseSource(7, SHAPE, F64, "cpu"),
                          CallTrace(trace) if trace else None, seed=seed)
    if kind == "miga":
        return MigaEngine(runner, MIGA, total, dtype=F64)
    return FifoEngine(runner, FIFO, total, dtype=F64)


def depth(kind: str) -> int:
    return MigaEngine.seed_depth(MIGA, 16) if kind == "miga" else FifoEngine.seed_depth(FIFO, 12)


@pytest.mark.parametrize("kind", ["miga", "fifo"])
@pytest.mark.parametrize("known", [1, 5, 40])  # one latent (an image), a short clip, a clip longer than the queue
def test_a_seeded_engine_outputs_only_the_continuation_and_calls_no_window_of_known_latents(kind, known):
    latents = clip(known)
    trace = io.StringIO()
    seeded = engine(kind, Seed(latents[-depth(kind):], known), known + 14, trace)
    out = list(seeded)
    assert [i for i, _ in out] == list(range(known, known + 14))
    calls = [json.loads(line) for line in trace.getvalue().splitlines()]
    assert calls and all(any(i >= known for i, k in zip(c["latents"], c["kept"]) if k) for c in calls)
    assert "base" not in {c["phase"] for c in calls}  # the seed replaces the base clip
    # the continuation depends on the seed: another clip, another continuation
    other = list(engine(kind, Seed(clip(known, 2)[-depth(kind):], known), known + 14))
    assert not torch.equal(out[0][1], other[0][1])


@pytest.mark.parametrize("kind", ["miga", "fifo"])
def test_only_the_last_seed_depth_latents_matter(kind):
    """A seed holding just its last ``seed_depth`` latents (an upper bound) continues exactly as the whole clip."""
    latents = clip(40)
    whole = [x for _, x in engine(kind, Seed(latents, 40), 52)]
    tail = [x for _, x in engine(kind, Seed(latents[-depth(kind):], 40), 52)]
    assert all(torch.equal(a, b) for a, b in zip(whole, tail))
    changed = latents[:-depth(kind) - 1] + [latents[-depth(kind) - 1] + 1] + latents[-depth(kind):]
    assert all(torch.equal(a, b) for a, b in zip(whole, [x for _, x in engine(kind, Seed(changed, 40), 52)]))
    changed[-1] = changed[-1] + 1  # the last known latent: the continuation moves
    assert not torch.equal(whole[-1], [x for _, x in engine(kind, Seed(changed, 40), 52)][-1])


@pytest.mark.parametrize("kind", ["miga", "fifo"])
def test_a_seeded_engine_resumes_exactly_and_its_plan_is_its_schedule(kind):
    seed = Seed(clip(7), 7)
    full_engine = engine(kind, seed, 30)
    full = [x for _, x in full_engine]
    assert planned_calls(engine(kind, seed, 30)) == scheduled_calls(full_engine.counters)
    for k in (0, 4, 22):
        first = engine(kind, seed, 30)
        head = [first.pull()[1] for _ in range(k)]
        tensors, meta = first.state_dict()
        tensors = load(save(tensors))
        second = engine(kind, seed, 30)
        second.load_state_dict(tensors, json.loads(json.dumps(meta)))
        rest = [x for _, x in second]
        assert all(torch.equal(a, b) for a, b in zip(head + rest, full)), f"resume after {k} differs"
    unseeded = engine(kind, None, 30)
    unseeded.pull()
    with pytest.raises(ValueError, match="first"):
        engine(kind, seed, 30).load_state_dict(*unseeded.state_dict())


def test_a_known_latent_is_the_given_one_at_level_0_and_noised_on_its_own_elsewhere():
    solver = FlowEuler(flow_grid(16, shift=3.0))
    noise = NoiseSource(7, SHAPE, F64, "cpu")
    latents = clip(3)
    seed = Seed(latents[1:], 3)
    assert torch.equal(seed.hold(solver, noise, 2, 0), latents[2])
    assert torch.equal(seed.hold(solver, noise, -4, 0), latents[1])  # before the held ones: the first held
    a, b = seed.hold(solver, noise, 2, 8), seed.hold(solver, noise, 1, 8)
    expected = solver.grid.signal[8] * latents[2] + solver.grid.sigmas[8] * noise.draw("seed", 2, 8)
    assert torch.allclose(a, expected) and not torch.allclose(a - latents[2], b - latents[1])


def test_seed_rules():
    with pytest.raises(ValueError, match="num_latents"):
        engine("fifo", Seed(clip(3), 5), 5)
    with pytest.raises(ValueError, match="seed"):
        Seed(clip(3), 2)
    runner = WindowRunner(MixingDenoiser(3), FlowEuler(flow_grid(16)), Conditioning(1.0), NoiseSource(0, SHAPE, F64, "cpu"), seed=Seed(clip(8), 8))
    with pytest.raises(ValueError, match="schedule"):
        MigaEngine(runner, MigaConfig(window=8, group=2, guidance=2, stage2_levels=3, stride=4, schedule="reference"), 16, dtype=F64)
