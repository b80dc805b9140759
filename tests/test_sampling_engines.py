"""Streaming engines against the batch references: equality, trace shape, memory, resume, reflection."""

from __future__ import annotations

import io
import json
import math

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
    LevelGrid,
    MigaConfig,
    MigaEngine,
    NoiseSource,
    WindowRunner,
    ddpm_grid,
    flow_grid,
    get_preset,
)
from reference_samplers import fifo_batch, miga_batch
from toy_denoisers import MixingDenoiser, PatternDenoiser, TwoSceneDenoiser, ZeroDenoiser

SHAPE = (1, 3, 4, 4)
F64 = torch.float64


def make_runner(model, solver, seed=7, trace=None, shape=SHAPE, dtype=F64, cond=None):
    cond = cond or Conditioning(1.0, 0.0, 2.5)
    return WindowRunner(model, solver, cond, NoiseSource(seed, shape, dtype, "cpu"), trace)


def flow(T=24, shift=3.0):
    return FlowEuler(flow_grid(T, shift=shift))


def identity_last(T=20, eta=1.0):
    """DDIM on a grid whose level 1 is training step 0, like MIGA's VideoCrafter2 grid: its last step is the identity."""
    g = ddpm_grid(T)
    same = [g.timesteps.clone(), g.signal.clone(), g.sigmas.clone()]
    for v in same:
        v[1] = v[0]
    return DDIM(LevelGrid("ddpm", *same), eta=eta)


def run_miga(cfg, N, solver, model=None, **kw):
    runner = make_runner(model or MixingDenoiser(SHAPE[1]), solver, **kw)
    engine = MigaEngine(runner, cfg, N, dtype=F64)
    return engine, [x for _, x in engine]


MIGA_CASES = {
    # lengths not multiples of the group; guidance on and off; stochastic DDIM; reflection always on
    "flow-guided-refine": (MigaConfig(window=8, group=3, guidance=2, stage2_levels=4, refine=True, stride=3), 23, lambda: flow()),
    "ddim-eta1-noguide": (MigaConfig(window=6, group=2, guidance=0, stage2_levels=3, refine=False), 17, lambda: DDIM(ddpm_grid(20), eta=1.0)),
    "reflect-always": (
        MigaConfig(window=8, group=2, guidance=2, stage2_levels=3, stride=3, reflect=True, reflect_during="always",
                   reflect_delta=0.0, reflect_after=4, reflect_refs=2, reflect_candidates=3),
        31, lambda: flow(20)),
    "reflect-fill-anchor": (
        MigaConfig(window=8, group=3, guidance=3, stage2_levels=2, stride=4, entry="anchor", reflect=True,
                   reflect_delta=0.0, reflect_after=3, reflect_refs=1, reflect_candidates=2),
        20, lambda: DDIM(ddpm_grid(16), eta=0.5, prediction="v")),
    "recent-entry-short": (MigaConfig(window=10, group=4, guidance=4, stage2_levels=5, entry="recent"), 7, lambda: flow(18)),
    "identity-last-step": (MigaConfig(window=8, group=2, guidance=2, stage2_levels=4, stride=4), 19, lambda: identity_last()),
}


@pytest.mark.parametrize("name", list(MIGA_CASES))
def test_miga_stream_equals_batch(name):
    cfg, N, solver = MIGA_CASES[name]
    engine, stream = run_miga(cfg, N, solver())
    batch = miga_batch(make_runner(MixingDenoiser(SHAPE[1]), solver()), cfg, N)
    assert len(stream) == len(batch) == N
    for i, (a, b) in enumerate(zip(stream, batch)):
        assert torch.equal(a, b), f"latent {i} differs"
    if cfg.reflect:
        assert engine.counters.reflections["triggered"] > 0
        assert engine.counters.reflections["accepted"] > 0


@pytest.mark.parametrize("lookahead", [True, False])
@pytest.mark.parametrize("T,f", [(12, 4), (13, 5)])
def test_fifo_stream_equals_batch(lookahead, T, f):
    cfg, N = FifoConfig(window=f, lookahead=lookahead), 11
    runner = make_runner(MixingDenoiser(SHAPE[1]), flow(T))
    stream = [x for _, x in FifoEngine(runner, cfg, N, dtype=F64)]
    batch = fifo_batch(make_runner(MixingDenoiser(SHAPE[1]), flow(T)), cfg, N)
    assert len(stream) == N
    assert all(torch.equal(a, b) for a, b in zip(stream, batch))


@pytest.mark.parametrize("solver,lowest", [(identity_last, 2), (lambda: DDIM(ddpm_grid(20), eta=1.0), 1), (flow, 1)])
def test_stage2_and_refine_levels(solver, lowest):
    """Stage 2 and refine stop at the grid's lowest real step (official VC2: stage 2 at index 9..1, refine 10..1)."""
    cfg = MigaConfig(window=6, group=2, guidance=2, stage2_levels=5, stride=3)
    _, calls = traced(lambda tr: MigaEngine(make_runner(MixingDenoiser(3), solver(), trace=tr), cfg, 30, dtype=F64))
    for phase, top in (("stage2", 5), ("refine", 6)):  # refine re-noises one level above the stage-2 entry (official: index 10)
        assert {c["levels"][0] for c in calls if c["phase"] == phase} == set(range(lowest, top + 1))


def test_analytic_model_lands_on_its_data():
    """With the exact velocity field of one clean pattern, every output latent is that pattern."""
    grid = flow_grid(20, shift=2.0)
    pattern = torch.randn(SHAPE[1:], generator=torch.Generator().manual_seed(3), dtype=F64)
    model = PatternDenoiser(pattern, grid.sigmas)
    for engine in (
        MigaEngine(make_runner(model, FlowEuler(grid), cond=Conditioning(None)), MigaConfig(window=6, group=2, guidance=2, stage2_levels=4), 15, dtype=F64),
        FifoEngine(make_runner(model, FlowEuler(grid), cond=Conditioning(None)), FifoConfig(window=5), 15, dtype=F64),
    ):
        outs = [x for _, x in engine]
        assert len(outs) == 15
        for x in outs:
            torch.testing.assert_close(x[0], pattern, atol=1e-6, rtol=0)  # timesteps travel as float32


def traced(engine_factory):
    sink = io.StringIO()
    engine = engine_factory(CallTrace(sink))
    for _ in engine:
        pass
    return engine, [json.loads(line) for line in sink.getvalue().splitlines()]


def test_trace_records_every_call_with_its_fields():
    cfg = MIGA_CASES["reflect-always"][0]
    engine, calls = traced(lambda tr: MigaEngine(make_runner(MixingDenoiser(3), flow(20), trace=tr), cfg, 31, dtype=F64))
    assert [c["call"] for c in calls] == list(range(engine.counters.total_calls))
    assert {c["phase"] for c in calls} == {"base", "fill", "stage1", "stage2", "refine", "reflect"}
    for c in calls:
        assert len(c["latents"]) == len(c["levels"]) == len(c["guidance"]) == len(c["kept"]) <= cfg.window
        assert not any(g and k for g, k in zip(c["guidance"], c["kept"])), "guidance outputs are discarded"
    assert sum(sum(c["kept"]) for c in calls) == engine.counters.written


@pytest.mark.parametrize("preset", ["vc2", "wan2.1-1.3b"])
def test_what_the_model_sees_per_window(preset):
    p = get_preset(preset)
    f, m, L = p.miga.window, p.miga.guidance, p.miga.group
    zero = ZeroDenoiser()
    cfg = p.miga.with_(reflect=False)
    _, calls = traced(lambda tr: MigaEngine(make_runner(zero, p.solver(), trace=tr, shape=(1, 1, 1, 1), dtype=torch.float32), cfg, 150, dtype=torch.float32))
    bound = math.ceil((f - m) / L) + 1
    stage1 = [c for c in calls if c["phase"] in ("fill", "stage1")]
    spans = [len({l for l, g in zip(c["levels"], c["guidance"]) if not g}) for c in stage1]
    assert max(spans) <= bound and max(spans) == bound
    guides = [sum(c["guidance"]) for c in stage1]
    assert max(guides) == m and guides.count(m) > len(guides) / 2
    for c in stage1:  # guidance comes from ahead: never noisier than the window's current latents
        cur = [l for l, g in zip(c["levels"], c["guidance"]) if not g]
        assert all(l <= min(cur) for l, g in zip(c["levels"], c["guidance"]) if g)
    for c in (c for c in calls if c["phase"] in ("stage2", "refine")):
        assert len(set(c["levels"])) == 1 and len(c["levels"]) == f
    fifo_cfg = p.fifo
    _, fcalls = traced(lambda tr: FifoEngine(make_runner(zero, p.solver(), trace=tr, shape=(1, 1, 1, 1), dtype=torch.float32), fifo_cfg, 40, dtype=torch.float32))
    fspans = [len(set(c["levels"])) for c in fcalls if c["phase"] == "fifo"]
    assert max(fspans) == f


def held_profile(engine, stops):
    """Held bytes right after each count in ``stops`` latents have been pulled."""
    held, pulled = {}, 0
    for _ in engine:
        pulled += 1
        if pulled in stops:
            held[pulled] = engine.held_bytes()
        if pulled == max(stops):
            break
    return held


@pytest.mark.parametrize("kind", ["miga", "fifo"])
def test_constant_memory(kind):
    p = get_preset("vc2")
    runner = make_runner(ZeroDenoiser(), p.solver(), shape=(1, 4, 2, 2), dtype=torch.float32)
    cfg = p.miga
    if kind == "miga":
        engine = MigaEngine(runner, cfg, 5000, dtype=torch.float32)
        # the pipeline is periodic in the latent index with period lcm(group, stride)
        period = math.lcm(cfg.group, cfg.write_stride)
    else:
        engine = FifoEngine(runner, p.fifo, 5000, dtype=torch.float32)
        period = 1
    a, b = 100, 100 + period * ((2000 - 100) // period)
    held = held_profile(engine, {a, b})
    assert held[a] == held[b] > 0


def _roundtrip(tensors, meta):
    """Through bytes exactly as a checkpoint would go: safetensors + JSON."""
    return load(save(tensors)), json.loads(json.dumps(meta))


@pytest.mark.parametrize("name", ["flow-guided-refine", "reflect-always", "ddim-eta1-noguide"])
def test_resume_equals_uninterrupted(name):
    cfg, N, solver = MIGA_CASES[name]
    _, full = run_miga(cfg, N, solver())
    for k in (0, 1, 5, 13, N - 1):
        first = MigaEngine(make_runner(MixingDenoiser(3), solver()), cfg, N, dtype=F64)
        head = [first.pull()[1] for _ in range(k)]
        tensors, meta = _roundtrip(*first.state_dict())
        second = MigaEngine(make_runner(MixingDenoiser(3), solver()), cfg, N, dtype=F64)
        second.load_state_dict(tensors, meta)
        rest = [x for _, x in second]
        assert len(head) + len(rest) == N
        assert all(torch.equal(a, b) for a, b in zip(head + rest, full)), f"resume after {k} differs"
        assert second.counters.total_calls == first.counters.total_calls + (second.counters.total_calls - first.counters.total_calls)


def test_fifo_resume_equals_uninterrupted():
    cfg, N = FifoConfig(window=4), 9
    full = [x for _, x in FifoEngine(make_runner(MixingDenoiser(3), DDIM(ddpm_grid(12), eta=1.0)), cfg, N, dtype=F64)]
    for k in (0, 3, 8):
        first = FifoEngine(make_runner(MixingDenoiser(3), DDIM(ddpm_grid(12), eta=1.0)), cfg, N, dtype=F64)
        head = [first.pull()[1] for _ in range(k)]
        second = FifoEngine(make_runner(MixingDenoiser(3), DDIM(ddpm_grid(12), eta=1.0)), cfg, N, dtype=F64)
        second.load_state_dict(*_roundtrip(*first.state_dict()))
        assert all(torch.equal(a, b) for a, b in zip(head + [x for _, x in second], full))


def test_state_refuses_another_config():
    cfg, N, solver = MIGA_CASES["flow-guided-refine"]
    first = MigaEngine(make_runner(MixingDenoiser(3), solver()), cfg, N, dtype=F64)
    first.pull()
    other = MigaEngine(make_runner(MixingDenoiser(3), solver()), cfg.with_(group=2), N, dtype=F64)
    with pytest.raises(ValueError, match="config"):
        other.load_state_dict(*first.state_dict())
    longer = MigaEngine(make_runner(MixingDenoiser(3), solver()), cfg, N + 1, dtype=F64)
    with pytest.raises(ValueError, match="num_latents"):
        longer.load_state_dict(*first.state_dict())


# -- self-reflection on a planted inconsistent group ---------------------------------------------
def _planted_engine(delta, reflect=True, batch=1, planted_in=(0,)):
    """A world of one scene; the newest group is planted as its negative (in the batch elements
    ``planted_in``), which the model keeps."""
    grid = flow_grid(16, shift=1.0)
    pattern = 4.0 * torch.randn(SHAPE[1:], generator=torch.Generator().manual_seed(5), dtype=F64)
    cfg = MigaConfig(window=6, group=2, guidance=2, stage2_levels=3, stride=2, reflect=reflect, reflect_during="always",
                     reflect_delta=delta, reflect_after=3, reflect_refs=2, reflect_candidates=3)
    runner = make_runner(TwoSceneDenoiser(pattern), FlowEuler(grid), cond=Conditioning(None), shape=(batch, *SHAPE[1:]))
    engine = MigaEngine(runner, cfg, 24, dtype=F64)
    while engine.state.pushed < 14:
        engine._advance()
    n = len(engine.state.queue.xs)
    planted = [engine.state.head + j for j in range(n - 2, n)]
    for j in range(n - 2, n):
        engine.state.queue.xs[j] = engine.state.queue.xs[j].clone()
        engine.state.queue.xs[j][list(planted_in)] = -pattern
    return engine, pattern, planted


def _planted_run(delta, reflect=True, batch=1, planted_in=(0,)):
    engine, pattern, planted = _planted_engine(delta, reflect, batch, planted_in)
    return engine, pattern, planted, dict(iter(engine))


def test_reflection_replaces_a_planted_inconsistent_group():
    engine, pattern, planted, outs = _planted_run(delta=0.2)
    r = engine.counters.reflections
    assert r["triggered"] >= 1 and r["accepted"] >= 1
    assert all(torch.allclose(outs[i][0], pattern, atol=1e-3) for i in planted)
    _, _, planted0, kept = _planted_run(delta=0.2, reflect=False)
    assert all(torch.allclose(kept[i][0], -pattern, atol=1e-3) for i in planted0), "unreflected, the plant stays"


def test_reflection_judges_once_the_head_is_below_the_references():
    """As the reference (judged index 50, 3 reference groups, judging once the head is below 47): no judgment
    while the head group would be one of the references; the first judgment only records its score."""
    cfg = MigaConfig(window=8, group=2, guidance=2, stage2_levels=3, stride=4, reflect=True, reflect_delta=0.0,
                     reflect_after=4, reflect_refs=3, reflect_candidates=1)
    engine = MigaEngine(make_runner(MixingDenoiser(3), flow(24)), cfg, 60, dtype=F64)
    judged_level, expected = 24 - cfg.reflect_after, 0
    while engine.state.head == 0:
        engine._advance()
        expected += engine.state.head == 0 and engine.state.queue.levels[0] < judged_level - cfg.reflect_refs
        r = engine.counters.reflections
        assert r["judged"] == expected and r["triggered"] <= max(0, expected - 1)  # the first score is only recorded
    assert expected > 1 and engine.counters.reflections["triggered"] > 0


def test_batch_elements_are_reflected_on_their_own():
    """A B=2 run: element 0 draws the noise a B=1 run draws (counter-based, first half of the batch), so it
    gets the B=1 run's judgments, triggers, accepts and latents, whatever element 1 does."""
    cfg, N, solver = MIGA_CASES["reflect-always"]
    single, one = run_miga(cfg, N, solver())
    double, two = run_miga(cfg, N, solver(), shape=(2, *SHAPE[1:]))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(one, two))
    r1, r2 = single.counters.reflections, double.counters.reflections
    assert r1["accepted"] > 0 and r2["judged"] == r1["judged"]
    assert r2["triggered"] > r1["triggered"] and r2["accepted"] > r1["accepted"]  # element 1 has events of its own
    batch = miga_batch(make_runner(MixingDenoiser(SHAPE[1]), solver(), shape=(2, *SHAPE[1:])), cfg, N)
    assert all(torch.equal(a, b) for a, b in zip(two, batch))


def test_only_the_inconsistent_batch_element_is_replaced():
    engine, pattern, planted, outs = _planted_run(delta=0.2, batch=2, planted_in=(1,))
    r = engine.counters.reflections
    assert r["triggered"] == r["accepted"] == 1  # element 1 once; element 0 never drops
    assert all(torch.allclose(outs[i][1], pattern, atol=1e-3) for i in planted)
    reflected, _, _ = _planted_engine(delta=0.2, batch=2, planted_in=(1,))
    plain, _, _ = _planted_engine(delta=0.2, reflect=False, batch=2, planted_in=(1,))
    while not reflected.counters.reflections["accepted"]:
        reflected._advance()
        plain._advance()
    assert all(torch.equal(a[0], b[0]) for a, b in zip(reflected.state.queue.xs, plain.state.queue.xs)), "element 0 keeps its own groups"
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(reflected.state.queue.xs, plain.state.queue.xs))


def test_reflection_with_infinite_threshold_changes_nothing():
    engine, _, _, outs = _planted_run(delta=float("inf"))
    assert engine.counters.reflections["judged"] > 0 and engine.counters.reflections["triggered"] == 0
    _, _, _, plain = _planted_run(delta=0.2, reflect=False)
    assert all(torch.equal(outs[i], plain[i]) for i in plain)


def test_candidate_hook_sees_self_contained_requests():
    cfg, N, solver = MIGA_CASES["reflect-always"]
    seen = []

    def hook(requests):
        seen.extend(requests)
        other = make_runner(MixingDenoiser(3), solver())  # a different process's model: same weights, own runner
        from miga_ray.sampling import run_candidate
        return [run_candidate(other, r) for r in requests]

    runner = make_runner(MixingDenoiser(3), solver())
    outs = [x for _, x in MigaEngine(runner, cfg, N, dtype=F64, candidates=hook)]
    _, plain = run_miga(cfg, N, solver())
    assert seen and {r.candidate for r in seen} == {1, 2, 3}
    assert all(torch.equal(a, b) for a, b in zip(outs, plain))


# -- schedule: reference (the official VideoCrafter2 code, call for call) ---------------------------
def _reference_run(groups, cfg=None, model=None, solver=None, trace=None, shape=(1, 1, 1, 1), dtype=torch.float32):
    cfg = cfg or get_preset("vc2").miga.with_(schedule="reference")
    runner = make_runner(model or ZeroDenoiser(), solver or identity_last(64), trace=trace, shape=shape, dtype=dtype)
    engine = MigaEngine(runner, cfg, groups * cfg.group, dtype=dtype)
    return engine, [i for i, _ in engine]


def test_reference_schedule_costs_what_the_official_code_costs():
    """30 groups at the VC2 settings: 1852 calls for 120 latents, 15.4 per latent as the official code."""
    engine, ids = _reference_run(30)
    assert ids == list(range(120))
    assert dict(engine.counters.calls) == {"base": 64, "fill": 285, "stage1": 1222, "stage2": 133, "refine": 148}


def test_reference_schedule_windows_are_the_official_ones():
    _, calls = traced(lambda tr: _reference_run(30, trace=tr)[0])
    fill = [c for c in calls if c["phase"] == "fill"]
    for c in fill:
        written = [i for i, k in zip(c["latents"], c["kept"]) if k]
        guide = [i for i, g in zip(c["latents"], c["guidance"]) if g]
        assert len(c["latents"]) == 16 and len(written) in (4, 8, 12)
        assert not guide or [written[0] - i for i in guide] == [14, 10, 6, 2] or written[0] < 16
    assert all(sum(c["kept"]) == 12 for c in fill if c["kept"][-1])  # the tail block is 12 wide
    stage1 = [c for c in calls if c["phase"] == "stage1"]
    entered = {i: l for c in stage1 for i, l in zip(c["latents"], c["levels"]) if i >= 16 + 4 * 30}
    assert min(entered) == 136 and max(entered.values()) == 64  # stage-1 latents: pure noise from level T, ids after the fill
    first = next(c for c in stage1 if 136 in c["latents"])
    levels = dict(zip(first["latents"], first["levels"]))
    assert levels[136] - levels[135] == 2  # the two-level jump where stage 1 takes over from the fill
    for phase, top in (("stage2", 10), ("refine", 11)):
        ps = [c for c in calls if c["phase"] == phase]
        assert {c["levels"][0] for c in ps} == set(range(2, top + 1))
        assert {i for c in ps for i in c["latents"]} == set(range(120))


def test_reference_schedule_with_reflection_judges_only_in_the_fill():
    cfg = MigaConfig(window=8, group=2, guidance=2, stage2_levels=3, stride=4, schedule="reference", reflect=True,
                     reflect_delta=0.0, reflect_after=4, reflect_refs=2, reflect_candidates=3)
    engine, calls = traced(lambda tr: _reference_run(8, cfg, MixingDenoiser(3), identity_last(16), tr, SHAPE, F64)[0])
    r = engine.counters.reflections
    assert r["triggered"] > 0
    order = [c["phase"] for c in calls]
    assert "reflect" not in order[order.index("stage1"):]
    assert any(not any(c["kept"]) for c in calls if c["phase"] == "reflect")  # the official candidates run windows of references only


def test_reference_schedule_resumes_exactly():
    cfg = MigaConfig(window=8, group=2, guidance=2, stage2_levels=3, stride=4, schedule="reference", reflect=True,
                     reflect_delta=0.0, reflect_after=4, reflect_refs=2, reflect_candidates=2)
    args = (cfg, 8 * cfg.group)
    full = [x for _, x in MigaEngine(make_runner(MixingDenoiser(3), identity_last(16)), *args, dtype=F64)]
    for k in (0, 1, 15):
        first = MigaEngine(make_runner(MixingDenoiser(3), identity_last(16)), *args, dtype=F64)
        steps = 0
        while not first.state.out and steps < 12:  # stop inside the fill and stage 1 too
            first._advance()
            steps += 1
        head = [first.pull()[1] for _ in range(k)]
        second = MigaEngine(make_runner(MixingDenoiser(3), identity_last(16)), *args, dtype=F64)
        second.load_state_dict(*_roundtrip(*first.state_dict()))
        assert all(torch.equal(a, b) for a, b in zip(head + [x for _, x in second], full))


@pytest.mark.parametrize("N", [15, 6, 4 * 61])
def test_reference_schedule_has_a_fixed_length(N):
    with pytest.raises(ValueError, match="^num_latents: must satisfy"):
        MigaEngine(make_runner(ZeroDenoiser(), identity_last(64)), get_preset("vc2").miga.with_(schedule="reference"), N)
