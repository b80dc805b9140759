"""A contact sheet: a PNG grid of frames sampled evenly along a video, because people would rather look.

Sampled frames are stored as they stream past (the job's ``sheet/NNNNNN.png``), so a resumed job still has
the early ones; the grid is composed from the store when the job completes.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from .layout import JobLayout
from .objects import ObjectNotFound, ObjectStore
from .uploader import Sink


def sheet_frames(total: int, count: int = 12) -> list[int]:
    """Frame indices spread evenly from the first to the last frame."""
    count = min(count, total)
    return sorted({round(k * (total - 1) / max(1, count - 1)) for k in range(count)})


class ContactSheet:
    """Collects the sampled frames of one job and writes ``contact_sheet.png`` at the end."""

    def __init__(self, job_id: str, total: int, count: int = 12, columns: int = 4) -> None:
        self.job, self.columns = JobLayout(job_id), columns
        self.wanted = sheet_frames(total, count)

    def _key(self, index: int) -> str:
        return self.job.sheet_frame(index)

    def offer(self, sink: Sink, frames: np.ndarray, start: int) -> None:
        """Store the sampled frames among ``frames`` (uint8 ``[n, H, W, 3]`` starting at frame ``start``)."""
        for index in self.wanted:
            if start <= index < start + len(frames):
                buffer = io.BytesIO()
                Image.fromarray(frames[index - start]).save(buffer, format="PNG")
                sink.submit(self._key(index), buffer.getvalue())

    def compose(self, store: ObjectStore, sink: Sink) -> str:
        """Grid the stored samples, each labelled with its frame number; returns the sheet's key."""
        tiles = []
        for index in self.wanted:
            try:
                tiles.append((index, Image.open(io.BytesIO(store.get_bytes(self._key(index)))).convert("RGB")))
            except ObjectNotFound:
                continue
        if not tiles:
            raise ValueError(f"contact sheet of {self.job.job_id}: no sampled frames stored")
        w, h = tiles[0][1].size
        scale = max(1, 128 // max(w, h))
        tw, th = w * scale, h * scale + 14
        rows = -(-len(tiles) // self.columns)
        sheet = Image.new("RGB", (self.columns * tw, rows * th), "black")
        draw = ImageDraw.Draw(sheet)
        for k, (index, tile) in enumerate(tiles):
            x, y = (k % self.columns) * tw, (k // self.columns) * th
            sheet.paste(tile.resize((w * scale, h * scale), Image.NEAREST), (x, y + 14))
            draw.text((x + 2, y + 1), f"frame {index}", fill="white")
        buffer = io.BytesIO()
        sheet.save(buffer, format="PNG")
        key = self.job.contact_sheet
        sink.submit(key, buffer.getvalue())
        return key
