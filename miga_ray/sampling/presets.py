"""Named presets with the reference hyperparameters of the MIGA paper's two base models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import FifoConfig, MigaConfig

if TYPE_CHECKING:  # torch loads only when a grid or solver is built: configs validate without it
    from .grid import LevelGrid
    from .solvers import Solver


@dataclass(frozen=True)
class Preset:
    """Sampler settings for one base model: level count, MIGA and FIFO configs, CFG, default grid/solver."""

    name: str
    num_levels: int
    miga: MigaConfig
    fifo: FifoConfig
    cfg_scale: float
    solver_kind: str
    eta: float = 0.0
    shift: float = 1.0

    def grid(self) -> LevelGrid:
        """The preset's default grid (a loaded model may supply its own scheduler's grid instead)."""
        from .grid import ddpm_grid, flow_grid

        if self.solver_kind == "ddim":
            return ddpm_grid(self.num_levels)
        return flow_grid(self.num_levels, shift=self.shift)

    def solver(self, grid: LevelGrid | None = None) -> Solver:
        """The preset's solver on ``grid`` (default: the preset's grid)."""
        from .solvers import DDIM, FlowEuler

        grid = grid or self.grid()
        return DDIM(grid, eta=self.eta) if self.solver_kind == "ddim" else FlowEuler(grid)


PRESETS: dict[str, Preset] = {
    # VideoCrafter2 (XiaokunFeng/MIGA configs/videocrafter2.yaml and videocraft_based/): 64-step DDIM
    # (eta 1), CFG 12, window 16, 320x512 with fps condition 8 (the model's defaults); reflection off
    # in the reference config (the code's constants if turned on: judged 13 steps below noise, 3
    # reference groups, 5 candidates, and the judge's own threshold 0.001: the config's
    # resample_threshold never reaches it). A loaded VC2 steps on MIGA's DDIM spacing, not on
    # Preset.grid()'s (docs/VC2.md). New latents start anchored, as the reference's fill latents and
    # candidates do (the base clip's last latent noised to pure-noise level), so a stream gives every
    # latent what the reference gives the latents it outputs.
    "vc2": Preset(
        name="vc2",
        num_levels=64,
        miga=MigaConfig(window=16, group=4, guidance=4, stage2_levels=10, refine=True, stride=8, entry="anchor", reflect=False,
                        reflect_candidates=5, reflect_after=13, reflect_refs=3, reflect_delta=0.001),
        fifo=FifoConfig(window=16, lookahead=True),
        cfg_scale=12.0,
        solver_kind="ddim",
        eta=1.0,
    ),
    # Wan2.1-T2V-1.3B: 54 levels with shift 5, CFG 5, window 21 latents; reflection on, 3 candidates,
    # delta 0.01, judged 10 steps below noise against 2 reference groups. The reference steps with
    # multistep UniPC; miga-ray steps every latent with first-order Euler.
    "wan2.1-1.3b": Preset(
        name="wan2.1-1.3b",
        num_levels=54,
        miga=MigaConfig(window=21, group=7, guidance=4, stage2_levels=10, refine=True, stride=10, reflect=True,
                        reflect_candidates=3, reflect_after=10, reflect_refs=2, reflect_delta=0.01),
        fifo=FifoConfig(window=21, lookahead=True),
        cfg_scale=5.0,
        solver_kind="euler",
        shift=5.0,
    ),
    # The shipped toy model and every model of its recipe (jobs/train_toy.py: Wan architecture, 16-latent
    # windows at 64x64): VideoCrafter2's proportions (window 16, L_zig 4, m_guid 4, T/f about 3) on 50
    # levels, Wan's reflection settings, so a CPU renders it while the sampler runs at a real model's shape.
    "toy": Preset(
        name="toy",
        num_levels=50,
        miga=MigaConfig(window=16, group=4, guidance=4, stage2_levels=8, refine=True, stride=8, reflect=True,
                        reflect_candidates=3, reflect_after=10, reflect_refs=2, reflect_delta=0.01),
        fifo=FifoConfig(window=16, lookahead=True),
        cfg_scale=5.0,
        solver_kind="euler",
        shift=3.0,
    ),
}


def get_preset(name: str) -> Preset:
    """Look up a preset by name; ``ValueError`` lists the known ones."""
    if name not in PRESETS:
        raise ValueError(f"preset: unknown name {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
