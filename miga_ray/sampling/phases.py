"""Phases (the names in traces and counters) and noise purposes (part of every random draw's key), named once.

The purpose strings are frozen: they key every random tensor, so renaming a phase or a constant here
can never change a video. The fill and stage 1 step with one purpose, so where the fill ends does
not change the noise a step draws.
"""

from __future__ import annotations

BASE, FILL, STAGE1, STAGE2, REFINE, REFLECT, FIFO = "base", "fill", "stage1", "stage2", "refine", "reflect", "fifo"

BASE_NOISE = "base"  # the base clip's pure noise
INIT_NOISE = "init"  # the base clip re-noised onto the queue
ENTRY_NOISE = "entry"  # a new latent (or a candidate's) at level T
REFINE_NOISE = "refine"  # a clean latent re-noised for the refine pass
SEED_NOISE = "seed"  # a known (seed) latent noised to the level it stands at
STEP_NOISE = {  # the noise of a stochastic solver step, by the phase the step belongs to
    BASE: "step/base",
    FILL: "step/stage1",
    STAGE1: "step/stage1",
    STAGE2: "step/stage2",
    REFINE: "step/refine",
    REFLECT: "step/reflect",
    FIFO: "step/fifo",
}
