"""Sampler hyperparameters as plain validated dataclasses (``sampling/`` needs nothing but torch).

Impossible combinations raise ``ValueError`` naming the parameter and the rule when built.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

Entry = Literal["noise", "anchor", "recent"]
ReflectDuring = Literal["fill", "always"]
Schedule = Literal["stream", "reference"]


def _require(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{name}: must satisfy {rule} (got {value!r})")


@dataclass(frozen=True)
class FifoConfig:
    """FIFO-Diffusion: a diagonal queue of T latents, one level apart, windows of ``window`` latents.

    With ``lookahead``, windows sit at stride ``window // 2`` and write only their back part, with
    ``window - window // 2`` already-clean latents in front of the head as context. T = n * f gives
    the paper's latent partitioning with n windows; any T >= f works.
    """

    window: int = 16
    lookahead: bool = True

    def validate(self, num_levels: int) -> None:
        _require(self.window >= 2, "window", "window >= 2", self.window)
        _require(num_levels >= self.window, "num_levels", f"num_levels (T) >= window ({self.window})", num_levels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MigaConfig:
    """MIGA: zigzag stage 1 with long-range guidance and self-reflection, then unified-level stage 2.

    ``window`` f: latents per model call. ``group`` L_zig: latents sharing a level in stage 1.
    ``guidance`` m_guid: slots per window filled with less-noisy latents from ahead (outputs discarded).
    ``stage2_levels`` E: latents leave stage 1 at level E and are denoised to clean at one shared level
    (on a grid whose last step is the identity, that step is not run: E - 1 sweeps, as the reference does).
    ``refine``: re-noise to level E + 1 (the reference's index 10 for E = 10) and run down to clean
    once more. ``stride``: latents written per window (default ``window // 2``). ``entry``: how a new
    latent starts (pure noise, the base clip's last latent noised to level T as in the reference, or
    the newest latent that left stage 1, noised).
    Reflection: the group ``reflect_after`` steps below pure noise is scored against the
    ``reflect_refs`` groups ahead of it; a drop of more than ``reflect_delta`` from the last score
    draws ``reflect_candidates`` candidates from the frozen references and keeps the best if better.
    ``schedule``: ``stream`` (constant memory, any length) or ``reference``: the official VideoCrafter2
    code's schedule call for call (fixed length of at most T - window/group groups; output = base clip
    + fill; fill and candidates anchored and stage 1 pure noise whatever ``entry`` says; reflection
    during the fill only).
    """

    window: int = 16
    group: int = 4
    guidance: int = 4
    stage2_levels: int = 10
    refine: bool = True
    stride: int | None = None
    entry: Entry = "noise"
    reflect: bool = False
    reflect_during: ReflectDuring = "fill"
    reflect_candidates: int = 3
    reflect_delta: float = 0.01
    reflect_after: int = 10
    reflect_refs: int = 2
    schedule: Schedule = "stream"

    @property
    def write_stride(self) -> int:
        return self.stride if self.stride is not None else self.window // 2

    @property
    def current_width(self) -> int:
        """Queue latents per stage-1 window besides the guidance slots."""
        return self.window - self.guidance

    def validate(self, num_levels: int, lowest_step: int = 1) -> None:
        """Check every rule against the level count T and the lowest real step (``LevelGrid.lowest_step``) of the grid in use."""
        T = num_levels
        _require(self.window >= 2, "window", "window >= 2", self.window)
        _require(self.group >= 1, "group", "group (L_zig) >= 1", self.group)
        _require(0 <= self.guidance < self.window, "guidance", f"0 <= guidance (m_guid) < window ({self.window})", self.guidance)
        _require(0 <= self.stage2_levels < T, "stage2_levels", f"0 <= stage2_levels < num_levels ({T})", self.stage2_levels)
        _require(not self.refine or self.stage2_levels >= lowest_step, "refine", f"refine needs stage2_levels >= {lowest_step} (a stage 2 to re-noise after)", self.refine)
        stride = self.write_stride
        _require(1 <= stride <= self.current_width, "stride", f"1 <= stride <= window - guidance ({self.current_width})", stride)
        _require(self.entry in ("noise", "anchor", "recent"), "entry", "one of noise, anchor, recent", self.entry)
        _require(self.reflect_during in ("fill", "always"), "reflect_during", "one of fill, always", self.reflect_during)
        _require(self.schedule in ("stream", "reference"), "schedule", "one of stream, reference", self.schedule)
        if self.schedule == "reference":
            _require(self.reflect_during == "fill", "reflect_during", "fill with schedule reference (the official code reflects only then)", self.reflect_during)
        if self.reflect:
            _require(self.reflect_candidates >= 1, "reflect_candidates", "reflect_candidates >= 1", self.reflect_candidates)
            _require(self.reflect_delta >= 0, "reflect_delta", "reflect_delta >= 0", self.reflect_delta)
            _require(self.reflect_refs >= 1, "reflect_refs", "reflect_refs >= 1", self.reflect_refs)
            limit = T - self.stage2_levels - self.reflect_refs - 1
            _require(
                1 <= self.reflect_after < limit,
                "reflect_after",
                f"1 <= reflect_after < num_levels - stage2_levels - reflect_refs - 1 ({limit}), so the judged group has references behind the head group in stage 1",
                self.reflect_after,
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes: Any) -> MigaConfig:
        return replace(self, **changes)
