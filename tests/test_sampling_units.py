"""Grids, solvers, noise, window placement, CFG, configs and the import boundary of ``sampling/``."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from miga_ray.sampling import (
    DDIM,
    Conditioning,
    FifoConfig,
    FlowEuler,
    LevelGrid,
    MigaConfig,
    NoiseSource,
    consistency_score,
    ddpm_grid,
    flow_grid,
    get_preset,
    guided_forward,
)
from miga_ray.sampling.noise import noise_key
from miga_ray.sampling.windows import guidance_positions, sweep_blocks


def test_grids_run_from_clean_to_noise():
    g = flow_grid(54, shift=5.0)
    assert g.num_levels == 54 and g.sigmas[0] == 0 and g.sigmas[-1] == 1
    assert bool((g.sigmas[1:] > g.sigmas[:-1]).all())
    assert g.sigmas[27] > 0.5 * (1 + 1 / 54)  # the shift spends more levels at high noise
    d = ddpm_grid(64)
    assert d.timesteps[1] == 1 and d.timesteps[-1] == 63 * 15 + 1 and d.timesteps[0] == 0
    assert bool((d.signal[1:] < d.signal[:-1]).all()) and torch.allclose(d.signal**2 + d.sigmas**2, torch.ones(65, dtype=torch.float64))


def test_lowest_step_is_2_only_where_the_last_step_is_the_identity():
    assert ddpm_grid(64).lowest_step == 1 and flow_grid(54, shift=5.0).lowest_step == 1
    g = ddpm_grid(16)
    same = LevelGrid("ddpm", torch.cat([g.timesteps[:1], g.timesteps[:1], g.timesteps[2:]]),
                     torch.cat([g.signal[:1], g.signal[:1], g.signal[2:]]), torch.cat([g.sigmas[:1], g.sigmas[:1], g.sigmas[2:]]))
    assert same.lowest_step == 2


def test_solver_steps_follow_their_formulas():
    g = flow_grid(10)
    x, v = torch.randn(1, 2, 3, 2, 2), torch.randn(1, 2, 3, 2, 2)
    levels = torch.tensor([10, 4, 1])
    out = FlowEuler(g).step(x, v, levels)
    for k, lv in enumerate(levels):
        torch.testing.assert_close(out[:, :, k], x[:, :, k] + float(g.sigmas[lv - 1] - g.sigmas[lv]) * v[:, :, k])
    d = ddpm_grid(20)
    x0, eps = torch.randn(1, 2, 3, 2, 2, dtype=torch.float64), torch.randn(1, 2, 3, 2, 2, dtype=torch.float64)
    solver = DDIM(d, eta=0.0)
    xt = solver.add_noise(x0, eps, levels)
    prev = solver.step(xt, eps, levels)  # the exact eps lands on the exact lower level
    torch.testing.assert_close(prev, solver.add_noise(x0, eps, levels - 1))
    a = d.signal.view(1, 1, -1, 1, 1)[:, :, levels] ** 2
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    torch.testing.assert_close(DDIM(d, eta=0.0, prediction="v").step(xt, v, levels), prev)
    with pytest.raises(ValueError, match="step noise"):
        DDIM(d, eta=1.0).step(xt, eps, levels)


def test_noise_purposes_are_frozen_strings_apart_from_phase_names():
    """A step's noise key comes from this table, not from the phase's spelling: renaming a phase changes no video."""
    from miga_ray.sampling import phases

    assert phases.STEP_NOISE == {"base": "step/base", "fill": "step/stage1", "stage1": "step/stage1", "stage2": "step/stage2",
                                 "refine": "step/refine", "reflect": "step/reflect", "fifo": "step/fifo"}  # fmt: skip
    assert (phases.BASE_NOISE, phases.INIT_NOISE, phases.ENTRY_NOISE, phases.REFINE_NOISE) == ("base", "init", "entry", "refine")


def test_noise_is_a_pure_function_of_its_coordinates():
    a = NoiseSource(3, (1, 2, 4, 4), torch.float32, "cpu")
    b = NoiseSource(3, (1, 2, 4, 4), torch.float64, "cpu")
    assert torch.equal(a.draw("entry", 5, 10), a.draw("entry", 5, 10))
    assert torch.equal(a.draw("entry", 5, 10).double(), b.draw("entry", 5, 10))
    keys = {noise_key(3, p, i, l, v) for p in ("entry", "init") for i in range(4) for l in range(3) for v in range(2)}
    assert len(keys) == 2 * 4 * 3 * 2
    assert not torch.equal(a.draw("entry", 5, 10), NoiseSource(4, (1, 2, 4, 4), torch.float32, "cpu").draw("entry", 5, 10))


@pytest.mark.parametrize("n,width,stride,offset", [(40, 12, 8, 0), (40, 12, 8, 5), (13, 12, 8, 3), (12, 12, 8, 2), (5, 12, 8, 1), (100, 17, 10, 9)])
def test_sweep_blocks_partition_the_queue(n, width, stride, offset):
    blocks = sweep_blocks(n, width, stride, offset)
    assert blocks[0][0] == 0 and blocks[-1][1] == n
    assert all(b1[1] == b2[0] for b1, b2 in zip(blocks, blocks[1:]))
    assert all(b - a <= max(stride, width) and a + width <= max(n, width) for a, b in blocks)
    if n > width:
        assert blocks[-1] == (n - width, n)
        if n - offset >= width and offset:
            assert blocks[0] == (0, offset)


def test_guidance_reaches_one_latent_per_preceding_group():
    assert guidance_positions(40, 4, 4) == [26, 30, 34, 38]  # 14, 10, 6, 2 ahead, as in the VC2 reference
    assert guidance_positions(9, 4, 4) == [1, 3, 5, 7]  # spread over what is ahead when it is short
    assert guidance_positions(4, 4, 7) == [0, 1, 2, 3]


def test_cfg_lives_in_one_place():
    calls = []

    def model(x, t, ctx):
        calls.append(x.shape[0])
        return x * ctx.view(-1, 1, 1, 1, 1)

    x, t = torch.ones(1, 1, 2, 1, 1), torch.zeros(2)
    out = guided_forward(model, x, t, Conditioning(torch.tensor([3.0]), torch.tensor([1.0]), scale=5.0))
    assert calls == [2] and torch.allclose(out, torch.full_like(x, 1 + 5 * (3 - 1)))
    assert torch.equal(guided_forward(model, x, t, Conditioning(torch.tensor([3.0]))), 3 * x)


def test_consistency_score_ranks_similar_above_dissimilar():
    g = torch.Generator().manual_seed(0)
    scene = torch.randn(1, 4, 1, 8, 8, generator=g)
    refs = scene.repeat(1, 1, 3, 1, 1) + 0.1 * torch.randn(1, 4, 3, 8, 8, generator=g)
    assert consistency_score(scene.repeat(1, 1, 2, 1, 1), refs) > 0.95
    assert consistency_score(-scene.repeat(1, 1, 2, 1, 1), refs) < -0.9
    both = consistency_score(torch.cat([scene, -scene]).repeat(1, 1, 2, 1, 1), refs.repeat(2, 1, 1, 1, 1))
    assert both.shape == (2,) and both[0] > 0.95 and both[1] < -0.9  # each batch element scored on its own


@pytest.mark.parametrize(
    "changes,param",
    [
        (dict(window=16, guidance=16), "guidance"),
        (dict(window=16, guidance=17), "guidance"),
        (dict(stage2_levels=64), "stage2_levels"),
        (dict(group=0), "group"),
        (dict(stride=13), "stride"),
        (dict(stage2_levels=0, refine=True), "refine"),
        (dict(entry="zeros"), "entry"),
        (dict(reflect=True, reflect_after=60), "reflect_after"),
        (dict(reflect=True, reflect_candidates=0), "reflect_candidates"),
        (dict(reflect=True, reflect_delta=-1.0), "reflect_delta"),
    ],
)
def test_impossible_miga_configs_name_the_parameter(changes, param):
    from miga_ray.sampling import MigaEngine, WindowRunner

    cfg = MigaConfig(**changes)
    with pytest.raises(ValueError, match=rf"^{param}: must satisfy"):
        cfg.validate(64)
    runner = WindowRunner(lambda x, t, c: x, FlowEuler(flow_grid(64)), Conditioning(None), NoiseSource(0, (1, 1, 1, 1), torch.float32, "cpu"))
    with pytest.raises(ValueError, match=param):
        MigaEngine(runner, cfg, 10)


def test_refine_needs_a_real_stage2_step_to_renoise_after():
    MigaConfig(stage2_levels=1).validate(64, lowest_step=1)
    with pytest.raises(ValueError, match=r"^refine: must satisfy refine needs stage2_levels >= 2"):
        MigaConfig(stage2_levels=1).validate(64, lowest_step=2)


def test_impossible_fifo_configs_name_the_parameter():
    with pytest.raises(ValueError, match="^num_levels: must satisfy"):
        FifoConfig(window=16).validate(10)
    with pytest.raises(ValueError, match="^window: must satisfy"):
        FifoConfig(window=1).validate(10)


def test_presets_carry_the_reference_hyperparameters():
    vc2, wan = get_preset("vc2"), get_preset("wan2.1-1.3b")
    assert (vc2.num_levels, vc2.miga.group, vc2.miga.guidance, vc2.miga.stage2_levels, vc2.miga.reflect) == (64, 4, 4, 10, False)
    assert vc2.miga.entry == "anchor"  # the reference starts fill latents and candidates from the base clip's last latent
    assert (wan.num_levels, wan.miga.group, wan.miga.guidance, wan.miga.stage2_levels) == (54, 7, 4, 10)
    assert (wan.miga.reflect, wan.miga.reflect_candidates, wan.miga.reflect_delta, wan.miga.window) == (True, 3, 0.01, 21)
    toy = get_preset("toy")  # the shipped toy model and its recipe's models at VideoCrafter2's proportions
    assert (toy.num_levels, toy.miga.window, toy.miga.group, toy.miga.guidance, toy.fifo.window) == (50, 16, 4, 4, 16)
    for p in (vc2, wan, toy):
        p.miga.validate(p.num_levels)
        p.fifo.validate(p.num_levels)
    with pytest.raises(ValueError, match="known: toy, vc2, wan2.1-1.3b"):
        get_preset("sdxl")


def test_sampling_imports_nothing_but_torch():
    code = (
        "import sys, miga_ray.sampling; "
        "bad = [m for m in ('ray', 'diffusers', 'boto3', 'av', 'transformers', 'pyarrow') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("grid", ["flow", "vc2"])
@pytest.mark.parametrize("kind", ["miga", "fifo"])
def test_planned_calls_are_the_calls_a_whole_run_schedules(grid, kind):
    """The progress plan dry-runs the engine on its own grid: MIGA's VC2 grid has one stage-2 sweep fewer."""
    from miga_ray.models.vc2.model import vc2_grid
    from miga_ray.sampling import (
        DDIM,
        Conditioning,
        FifoEngine,
        FlowEuler,
        MigaEngine,
        NoiseSource,
        WindowRunner,
        flow_grid,
    )
    from miga_ray.sampling.plan import planned_calls, scheduled_calls

    solver = FlowEuler(flow_grid(20, shift=3.0)) if grid == "flow" else DDIM(vc2_grid(20), eta=1.0)
    runner = WindowRunner(lambda x, t, c: torch.zeros_like(x), solver, Conditioning(None), NoiseSource(0, (1, 2, 2, 2), torch.float32, "cpu"))
    engine = (MigaEngine(runner, MigaConfig(window=8, group=2, guidance=2, stage2_levels=4), 40) if kind == "miga"
              else FifoEngine(runner, FifoConfig(window=8), 40))
    planned = planned_calls(engine)
    for _ in engine:
        pass
    assert planned == scheduled_calls(engine.counters) > 0
