"""Conditioning per latent: a prompt schedule (a story) that the runner resolves for every window.

Part k of a schedule conditions latents from ``starts[k]`` on. A window is conditioned on the
latents it writes: the mean, over its written latents, of each latent's part weights (so a
window whose written block straddles a switch gets the proportional blend of the two texts).
With ``transition`` N, the N latents from a switch on blend linearly from the previous part's
text to the new one (latent ``start + j`` weighs the new text ``(j + 1) / (N + 1)``). A plain
prompt is the one-part schedule, and conditions every window exactly as that prompt does.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from .denoiser import Conditioning


@dataclass(frozen=True)
class PromptSchedule:
    """Parts (each a Conditioning sharing one negative context and scale) keyed by the latent each starts at.

    ``respect_switch``: stage-1 guidance slots do not reach across a switch and self-reflection
    does not judge a group whose references straddle one (the intended change is no anomaly).
    """

    parts: tuple[Conditioning, ...]
    starts: tuple[int, ...] = (0,)
    transition: int = 0
    respect_switch: bool = True

    def __post_init__(self) -> None:
        if len(self.parts) != len(self.starts) or not self.parts:
            raise ValueError(f"starts: must give one start per part ({len(self.parts)} parts, {len(self.starts)} starts)")
        if self.starts[0] != 0 or any(b <= a for a, b in zip(self.starts, self.starts[1:])):
            raise ValueError(f"starts: must begin at 0 and increase (got {list(self.starts)})")
        if self.transition < 0:
            raise ValueError(f"transition: must satisfy transition >= 0 (got {self.transition})")

    def part_of(self, latent: int) -> int:
        """The part latent ``latent`` belongs to (latents before 0, FIFO's warm-up, belong to the first)."""
        return max(0, bisect_right(self.starts, latent) - 1)

    def weights(self, latent: int) -> tuple[float, ...]:
        """How much each part's text conditions latent ``latent`` (they sum to 1)."""
        k = self.part_of(latent)
        w = [0.0] * len(self.parts)
        into = latent - self.starts[k]
        if k > 0 and into < self.transition:
            w[k] = (into + 1) / (self.transition + 1)
            w[k - 1] = 1.0 - w[k]
        else:
            w[k] = 1.0
        return tuple(w)

    def uniform(self, ids: Sequence[int]) -> bool:
        """Whether every latent of ``ids`` is conditioned alike (no switch or transition among them)."""
        return len({self.weights(i) for i in ids}) <= 1

    def barriers(self, ids: Sequence[int]) -> list[int]:
        """Positions in ``ids`` (ascending latent ids) where a new part begins: where guidance must not reach
        across (none when the schedule does not respect switches)."""
        if not self.respect_switch:
            return []
        parts = [self.part_of(i) for i in ids]
        return [p for p in range(1, len(parts)) if parts[p] != parts[p - 1]]

    def window(self, ids: Sequence[int], kept: Sequence[bool]) -> Conditioning:
        """The conditioning of a window over ``ids``: that of the latents it writes (all, if it writes none)."""
        written = [i for i, k in zip(ids, kept) if k] or list(ids)
        if len(self.parts) == 1:
            return self.parts[0]
        totals = [0.0] * len(self.parts)
        for i in written:
            for k, w in enumerate(self.weights(i)):
                totals[k] += w / len(written)
        mixed = [(w, part) for w, part in zip(totals, self.parts) if w > 0]
        if len(mixed) == 1:
            return mixed[0][1]
        positive = sum(w * part.positive for w, part in mixed)
        first = self.parts[0]
        return Conditioning(positive, first.negative, first.scale)


def as_schedule(cond: Conditioning | PromptSchedule) -> PromptSchedule:
    """A schedule as it is, or a plain conditioning as the one-part schedule."""
    return cond if isinstance(cond, PromptSchedule) else PromptSchedule((cond,))
