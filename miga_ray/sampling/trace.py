"""What the model saw: an optional JSON-lines call trace and the counters every engine keeps."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO


@dataclass
class Counters:
    """Model calls per phase, latent slots sent to the model, latents written, reflection events."""

    calls: Counter = field(default_factory=Counter)
    slots: int = 0
    written: int = 0
    reflections: Counter = field(default_factory=Counter)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def to_json(self) -> dict[str, Any]:
        return {"calls": dict(self.calls), "slots": self.slots, "written": self.written, "reflections": dict(self.reflections)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Counters:
        return cls(Counter(data["calls"]), data["slots"], data["written"], Counter(data["reflections"]))


class CallTrace:
    """Writes one JSON object per model call to a text sink (``call``, ``phase``, ``latents``,
    ``levels``, ``guidance``, ``kept``, plus ``candidate`` for reflection calls)."""

    def __init__(self, sink: TextIO) -> None:
        self.sink = sink

    def record(self, entry: dict[str, Any]) -> None:
        self.sink.write(json.dumps(entry, separators=(",", ":")) + "\n")


def read_trace(path: str) -> list[dict[str, Any]]:
    """Load a trace file written by ``CallTrace``."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
