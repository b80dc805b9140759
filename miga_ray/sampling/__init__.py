"""FIFO-Diffusion and MIGA as streaming, constant-memory, resumable engines: pure PyTorch.

Nothing here imports Ray, diffusers, boto3 or av; a base model enters only through ``Denoiser``.
Names load on first use, so the torch-free configs and presets (``miga_ray.config``, the command
line's validation) do not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, tuple[str, ...]] = {
    "config": ("FifoConfig", "MigaConfig"),
    "denoiser": ("Conditioning", "Denoiser", "guided_forward"),
    "engine": ("StreamingEngine", "sample_base_clip"),
    "fifo": ("FifoEngine",),
    "grid": ("LevelGrid", "ddpm_grid", "flow_grid", "flow_grid_from_sigmas"),
    "miga": ("MigaEngine",),
    "noise": ("NoiseSource",),
    "presets": ("PRESETS", "Preset", "get_preset"),
    "reflection": ("CandidateRequest", "CandidateRunner", "consistency_score", "local_candidates", "run_candidate"),
    "runner": ("WindowRunner",),
    "schedule": ("PromptSchedule",),
    "seed": ("Seed",),
    "solvers": ("DDIM", "FlowEuler", "Solver"),
    "trace": ("CallTrace", "Counters", "read_trace"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)  # noqa: PLE0605 - the names of _EXPORTS


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use (PEP 562)."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
