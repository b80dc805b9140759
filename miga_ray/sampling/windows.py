"""Where windows go, for every phase: which queue positions a model call reads (guidance slots and
current latents) and which block of them it writes. Positions are indices into a ``Queue``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """One model call: ``guide`` positions (read, outputs discarded), then ``cur`` positions, of which
    those in ``write`` are stepped one level down. Positions ascend across ``guide + cur``."""

    guide: list[int]
    cur: list[int]
    write: range

    def moved(self, by: int) -> Window:
        """The same window with every position shifted by ``by`` (latent ids to queue positions)."""
        return Window([j + by for j in self.guide], [j + by for j in self.cur], range(self.write.start + by, self.write.stop + by))


def block_at(start: int, n: int | None, width: int, stride: int, offset: int) -> tuple[int, int]:
    """The written block of a sweep that begins at ``start`` (see ``sweep_blocks``).

    ``n=None`` is an unbounded stream. Blocks: ``[0, offset)``, then ``stride`` blocks, then a
    remainder block, then the tail ``[n - width, n)`` that its window writes whole.
    """
    if n is not None and n <= width:
        return (0, n)
    if n is not None and n - offset < width:
        offset = 0
    if start == 0 and offset > 0:
        return (0, offset)
    if n is None or start + stride <= n - width:
        return (start, start + stride)
    if start < n - width:
        return (start, n - width)
    return (n - width, n)


def sweep_blocks(n: int, width: int, stride: int, offset: int) -> list[tuple[int, int]]:
    """Partition ``[0, n)`` into the blocks one sweep writes, head to tail.

    A block ``[a, b)`` is written by a window of ``width`` latents starting at ``a``, so every
    window reads only latents this sweep has not written yet (plus guidance ahead of it).
    The offset changes from sweep to sweep so window boundaries do not sit at fixed places.
    """
    blocks, a = [], 0
    while a < n:
        blocks.append(block_at(a, n, width, stride, offset))
        a = blocks[-1][1]
    return blocks


def reference_offset(n: int, width: int, stride: int) -> int:
    """The block offset that aligns a sweep's stride blocks to the tail, the remainder block first:
    the official code's layout in the fill and in reflection candidates."""
    return (n - width) % stride if n > width else 0


def guidance_positions(start: int, count: int, group: int) -> list[int]:
    """Queue positions of ``count`` guidance latents ahead of a window starting at ``start``.

    One from the middle of each preceding group where there is room, else spread evenly over
    ``[0, start)``; ascending. Needs ``start >= count``.
    """
    if start >= count * group:
        centre = group // 2
        return [start - (centre + j * group) for j in reversed(range(count))]
    spread = start // count
    return [start - (j + 1) * spread for j in reversed(range(count))]


def stage1_windows(
    n: int, window: int, guidance: int, group: int, stride: int, offset: int, reference: bool, barriers: Sequence[int] = ()
) -> list[Window]:
    """A MIGA stage-1 sweep over ``n`` queue latents, head to tail: ``window - guidance`` current latents
    per call, written in ``stride`` blocks from ``offset``, behind ``guidance`` slots from ahead.

    Windows near the head (block start < guidance) use the latents ahead of them as guidance and fill
    up to ``window`` slots with queue latents, capped so they span no more levels than other windows;
    under the reference schedule they are ``window`` queue latents, as the official code has them.
    ``barriers`` (queue positions where a story's next part begins) act as heads: guidance never
    reaches across one, so the latents of an earlier prompt do not steer a later prompt's windows.
    """
    width, out = window - guidance, []
    for a, b in sweep_blocks(n, width, stride, offset):
        h = max((p for p in barriers if p <= a), default=0)  # the head of this block's part
        if not guidance or a - h >= guidance:
            guide, cur = (guidance_positions(a - h, guidance, group) if guidance else []), list(range(a, min(n, a + width)))
            guide = [h + p for p in guide]
        elif reference:
            guide, cur = [], list(range(a, min(n, a + window)))
        else:
            cap = ((a - h) // group + math.ceil(width / group) + 1) * group
            guide, cur = list(range(h, a)), list(range(a, min(n, h + window, h + cap)))
        out.append(Window(guide, cur, range(a, b)))
    return out


def fifo_windows(prefix: int, levels: int, window: int, stride: int) -> list[Window]:
    """A FIFO-Diffusion iteration over a diagonal of ``levels`` latents behind ``prefix`` clean ones, tail first:
    each call reads the ``window`` latents ending at its block's end and writes the block. Written in
    place tail first, every call still reads the state from before the iteration."""
    end = prefix + levels
    return [Window([], list(range(min(a + stride, end) - window, min(a + stride, end))), range(a, min(a + stride, end)))
            for a in reversed(range(prefix, end, stride))]  # fmt: skip


def unified_window(start: int, total: int, window: int, stride: int, offset: int) -> Window:
    """The stage-2 (or refine) call of a sweep over ``total`` latents whose written block begins at ``start``."""
    a, b = block_at(start, total, window, stride, offset)
    return Window([], list(range(a, min(total, a + window))), range(a, b))


def candidate_windows(n: int, frozen: int, window: int, stride: int, step: int, official: bool) -> list[Window]:
    """A reflection candidate's sweep at ``step`` over ``n`` latents, the first ``frozen`` the references
    (read as guidance, never written). Offsets change with the step, or, in the official layout,
    blocks align to the tail and calls that write only references still run."""
    offset = reference_offset(n, window, stride) if official else step % stride
    out = []
    for a, b in sweep_blocks(n, window, stride, offset):
        if b <= frozen and not official:
            continue
        span = range(a, min(n, a + window))
        out.append(Window([j for j in span if j < frozen], [j for j in span if j >= frozen], range(max(a, frozen), max(b, frozen))))
    return out
