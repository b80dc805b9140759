"""FIFO-Diffusion and MIGA as streaming, constant-memory, resumable engines: pure PyTorch.

Nothing here imports Ray, diffusers, boto3 or av; a base model enters only through ``Denoiser``.
"""

from .config import FifoConfig, MigaConfig
from .denoiser import Conditioning, Denoiser, guided_forward
from .engine import StreamingEngine, sample_base_clip
from .fifo import FifoEngine
from .grid import LevelGrid, ddpm_grid, flow_grid, flow_grid_from_sigmas
from .miga import MigaEngine
from .noise import NoiseSource
from .presets import PRESETS, Preset, get_preset
from .reflection import CandidateRequest, CandidateRunner, consistency_score, local_candidates, run_candidate
from .runner import WindowRunner
from .solvers import DDIM, FlowEuler, Solver
from .trace import CallTrace, Counters, read_trace

__all__ = [
    "CallTrace", "CandidateRequest", "CandidateRunner", "Conditioning", "Counters", "DDIM", "Denoiser",
    "FifoConfig", "FifoEngine", "FlowEuler", "LevelGrid", "MigaConfig", "MigaEngine", "NoiseSource",
    "PRESETS", "Preset", "Solver", "StreamingEngine", "WindowRunner", "consistency_score", "ddpm_grid",
    "flow_grid", "flow_grid_from_sigmas", "get_preset", "guided_forward", "local_candidates", "read_trace",
    "run_candidate", "sample_base_clip",
]
