"""Where windows go: partitions of a queue into written blocks, and long-range guidance slots."""

from __future__ import annotations

from collections.abc import Iterator


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


def iter_blocks(n: int | None, width: int, stride: int, offset: int, start: int = 0) -> Iterator[tuple[int, int]]:
    """``sweep_blocks`` as a lazy iterator from ``start``, for unbounded streams."""
    while n is None or start < n:
        block = block_at(start, n, width, stride, offset)
        yield block
        start = block[1]


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
