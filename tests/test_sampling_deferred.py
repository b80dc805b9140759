"""Deferred model calls (sampling.deferred) and the dry call graph (sampling.graph), without Ray.

The split render's claim is that any order of calls that respects their data dependencies gives the
one-worker latents bit for bit; here an executor runs the calls in a random valid order, far behind the
engine, and the latents, counters and checkpoints are compared with the plain engine's.
"""

from __future__ import annotations

import io
import json
import random

import pytest
import torch

from miga_ray.sampling import CallTrace, FifoConfig, FifoEngine, MigaEngine, Seed, WindowRunner
from miga_ray.sampling.deferred import Call, DeferredEngine, Pending, materialize
from miga_ray.sampling.graph import CallGraph, Node, call_graph
from miga_ray.sampling.plan import planned_calls
from test_sampling_engines import F64, MIGA_CASES, flow, make_runner
from toy_denoisers import MixingDenoiser


class ShuffledExecutor:
    """Runs deferred calls on its own runner, one random ready call per pump, as late as the engine allows."""

    def __init__(self, runner: WindowRunner, seed: int) -> None:
        self.runner, self.rng = runner, random.Random(seed)
        self.calls: dict[int, Call] = {}
        self.values: dict[tuple[int, int], torch.Tensor] = {}
        self.order: list[int] = []

    @property
    def unfinished(self) -> int:
        return len(self.calls)

    def submit(self, call: Call) -> None:
        self.calls[call.id] = call

    def finished(self, latent: Pending) -> bool:
        return latent.call not in self.calls

    def value(self, latent: Pending) -> torch.Tensor:
        return self.values[latent.call, latent.slot]

    def wait(self, latents) -> None:
        while not all(self.finished(p) for p in latents):
            self.pump(block=True)

    def pump(self, block: bool) -> None:
        ready = [c for c in self.calls.values() if all(r not in self.calls for r in c.reads())]
        if not ready:
            return
        call = self.calls.pop(self.rng.choice(ready).id)
        xs = [materialize(x, self.value, self.runner) for x in call.inputs]
        out = self.runner(call.phase, xs, call.levels, call.ids, call.kept, call.guidance, call.variant)
        self.values.update({(call.id, k): x for k, x in enumerate(out)})
        self.order.append(call.id)


def drain(engine) -> list[tuple[int, torch.Tensor]]:
    out = []
    while not engine.done:
        if (item := engine.step()) is not None:
            out.append(item)
    return out


def deferred(make, seed: int = 0, lookahead: int = 40) -> tuple[DeferredEngine, ShuffledExecutor]:
    engine = make()
    worker = make().runner  # another runner on the same settings: a replica's
    worker.seed = None  # the driver holds known latents; a worker only computes
    executor = ShuffledExecutor(worker, seed)
    return DeferredEngine(engine, executor, lookahead), executor


def trace_of(make) -> tuple[list, str]:
    sink = io.StringIO()
    engine = make(CallTrace(sink))
    return drain(engine), sink.getvalue()


def assert_same(a, b) -> None:
    assert [i for i, _ in a] == [i for i, _ in b]
    for (_, x), (_, y) in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("name", ["flow-guided-refine", "reflect-always", "reflect-fill-anchor", "recent-entry-short"])
def test_miga_calls_in_any_valid_order_give_the_same_latents(name):
    cfg, n, solver = MIGA_CASES[name]
    s = solver()

    def make(trace=None):
        return MigaEngine(make_runner(MixingDenoiser(3), s, trace=trace), cfg, max(n, 23), dtype=F64)

    plain, plain_trace = trace_of(make)
    engine, executor = deferred(lambda: make())
    sink = io.StringIO()
    engine.inner.runner.trace = CallTrace(sink)
    out = drain(engine)
    assert_same(out, plain)
    assert sink.getvalue() == plain_trace  # the same calls, counted and traced in the engine's order
    assert executor.order != sorted(executor.order)  # the calls really ran out of order


def test_fifo_and_a_seeded_engine_give_the_same_latents():
    s = flow(16)
    known = [torch.randn(1, 3, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(i)) for i in range(20)]
    for seed in (None, Seed(known, 20)):
        def make(seed=seed):
            runner = make_runner(MixingDenoiser(3), s)
            runner.seed = seed
            return FifoEngine(runner, FifoConfig(window=6, lookahead=True), 37, dtype=F64)

        engine, executor = deferred(make, seed=3)
        assert_same(drain(engine), drain(make()))
        # done means every call ran, those whose outputs no latent reads included (a render records its calls then)
        assert not executor.unfinished and len(executor.order) == engine.counters.total_calls


def test_a_deferred_checkpoint_is_the_sequential_state_and_resumes_anywhere():
    cfg, n, solver = MIGA_CASES["reflect-always"]
    s = solver()

    def make():
        return MigaEngine(make_runner(MixingDenoiser(3), s), cfg, n, dtype=F64)

    whole = drain(make())
    engine, _ = deferred(make, seed=5, lookahead=60)
    got, saved = [], None
    while saved is None:
        if (item := engine.step()) is not None:
            got.append(item)
        if engine.inner.counters.total_calls > 150:
            saved = engine.checkpoint()
    tensors, meta, emitted, calls = saved
    meta = json.loads(json.dumps(meta))  # as stored: JSON
    assert engine.inner.counters.total_calls > calls  # the engine went on while the checkpoint waited for its latents
    resumed = make()
    resumed.load_state_dict(tensors, json.loads(json.dumps(meta)))
    assert resumed.emitted == emitted and resumed.counters.total_calls == calls
    assert_same(whole[:emitted] + drain(resumed), whole)
    again, _ = deferred(make, seed=9)
    again.load_state_dict(tensors, meta)
    assert_same(whole[:emitted] + drain(again), whole)


def test_list_schedule_on_hand_made_graphs():
    chain = CallGraph([Node(i, "x", (i - 1,) if i else ()) for i in range(10)])
    assert chain.critical_path() == 10 and chain.makespan(4) == 10
    free = CallGraph([Node(i, "x", ()) for i in range(10)])
    assert free.critical_path() == 1 and free.makespan(4) == 3 and free.makespan(4, lookahead=2) == 5
    blocked = CallGraph([Node(i, "x", ()) for i in range(10)], barriers=[(5, (4,))])
    assert blocked.makespan(10) == 2  # calls 5.. are made only after call 4 has finished


def test_fifo_graph_overlaps_iterations_and_miga_stage1_chains_through_guidance():
    s = flow(16)
    fifo = FifoEngine(make_runner(MixingDenoiser(3), s), FifoConfig(window=4, lookahead=True), 60, dtype=F64)
    g = call_graph(fifo)
    assert len(g.nodes) == planned_calls(fifo) and not g.barriers
    iteration = [n for n in g.nodes if n.phase == "fifo"]
    per = 16 // 2  # windows per iteration: levels / stride
    for n in iteration[per:]:
        k = (n.id - iteration[0].id) % per
        prev = n.id - (n.id - iteration[0].id) % per - per  # first window of the previous iteration
        assert all(r < prev + per for r in n.reads)  # nothing of its own iteration: no barrier inside one
        assert {r for r in n.reads if r >= prev} <= {prev + j for j in (k - 1, k, k + 1)}  # of the last: its neighbours
    assert g.speedup(4) > 3.0 and g.critical_path() < len(g.nodes) / 4
    cfg, n, _ = MIGA_CASES["flow-guided-refine"]
    miga = MigaEngine(make_runner(MixingDenoiser(3), s), cfg, 60, dtype=F64)
    g = call_graph(miga)
    assert len(g.nodes) == planned_calls(miga)
    stage1 = [m for m in g.nodes if m.phase == "stage1"]
    chained = [m for m in stage1 if m.id - 1 in m.reads]
    assert len(chained) > len(stage1) // 2  # a stage-1 window reads the window before it (its guidance)
    assert 1.0 < g.speedup(2) <= 2.0


def test_memory_is_flat_with_length_however_far_behind_the_calls_run():
    s = flow(16)
    peaks = []
    for n in (40, 120):
        engine, executor = deferred(lambda n=n: FifoEngine(make_runner(MixingDenoiser(3), s), FifoConfig(window=6, lookahead=True), n, dtype=F64),
                                    seed=2, lookahead=24)  # fmt: skip
        peak = [0, 0]
        while not engine.done:
            engine.step()
            peak = [max(peak[0], engine.held_latents()), max(peak[1], executor.unfinished)]
        peaks.append(peak)
    assert peaks[0] == peaks[1] and peaks[0][1] <= 24 + 16 // 3  # the lookahead, overshot by at most one iteration's calls


def test_bench_split_predicts_from_the_call_graph(capsys):
    from miga_ray.benchmarks.split import main

    main(["--preset", "wan2.1-1.3b", "--sampler", "fifo", "--frames", "200", "--workers", "1,2,8", "--predict-only"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["workers"] for r in rows] == [1, 2, 8] and len({r["calls"] for r in rows}) == 1
    assert rows[0]["predicted_speedup"] == 1.0 < rows[1]["predicted_speedup"] <= 2.0 < rows[2]["predicted_speedup"] <= 8.0
    assert rows[2]["predicted_speedup"] <= rows[0]["calls"] / rows[0]["critical_path"]  # no schedule beats the critical path
    with pytest.raises(SystemExit) as bad:
        main(["--workers", "0", "--predict-only"])
    assert bad.value.code == 2
