"""Sampler checkpoints: safetensors + JSON only (never pickle), verified by sha256, published by a pointer.

Under ``prefix`` (a job's ``state``):

```
ckpt-000000120.safetensors   the tensors
ckpt-000000120.json          {"step", "created", "sha256", "size", "meta": caller's meta, "meta_sha256"}
LATEST.json                  {"step": 120}: the newest complete checkpoint
```

``sha256`` covers the blob and ``meta_sha256`` the caller's meta (canonical JSON), so a changed digit
in either is caught. ``save`` writes blob, then meta, then the pointer (through an order-preserving sink), then deletes
all but the two newest checkpoints. ``load_latest`` trusts nothing: it verifies the checkpoint the
pointer names and falls back, with a warning, to older ones if that one is missing or corrupt.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from datetime import UTC, datetime
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .layout import join
from .objects import ObjectNotFound, ObjectStore
from .uploader import Sink

POINTER = "LATEST.json"
KEEP = 2
_NAME = re.compile(r"ckpt-(\d{9})\.json$")


def _meta_digest(meta: Any) -> str:
    """sha256 of a checkpoint's meta in canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated or does not match its recorded hash."""


class CheckpointStore:
    """Save and restore ``(step, tensors, meta)`` under one prefix of an object store."""

    def __init__(self, store: ObjectStore, prefix: str, sink: Sink | None = None) -> None:
        self.store = store
        self.prefix = prefix
        self.sink: Sink = sink if sink is not None else store
        self._steps = self._stored_steps()

    def _key(self, name: str) -> str:
        return join(self.prefix, name)

    def _blob_key(self, step: int) -> str:
        return self._key(f"ckpt-{step:09d}.safetensors")

    def _meta_key(self, step: int) -> str:
        return self._key(f"ckpt-{step:09d}.json")

    def _stored_steps(self) -> list[int]:
        """Steps that have a meta object in the store, ascending."""
        names = (key.rsplit("/", 1)[-1] for key in self.store.list(self._key("ckpt-")))
        return sorted(int(m.group(1)) for name in names if (m := _NAME.match(name)))

    def save(self, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Write a checkpoint, publish it as the latest, keep it and the one before, delete the rest.

        Stored steps newer than ``step`` (never published, left by an interrupted run) go too.
        """
        if step < 0:
            raise ValueError(f"checkpoint step must be >= 0, got {step}")
        blob = save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        record = {
            "step": step,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "sha256": hashlib.sha256(blob).hexdigest(),
            "size": len(blob),
            "meta": meta,
            "meta_sha256": _meta_digest(meta),
        }
        self.sink.submit(self._blob_key(step), blob)
        self.sink.submit(self._meta_key(step), json.dumps(record, sort_keys=True).encode())
        self.sink.submit(self._key(POINTER), json.dumps({"step": step}).encode())
        keep = sorted({step} | {s for s in self._steps if s < step})[-KEEP:]
        for old in set(self._steps) - set(keep):
            self.sink.submit_delete(self._blob_key(old))
            self.sink.submit_delete(self._meta_key(old))
        self._steps = keep

    def load(self, step: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Read and verify one checkpoint; raise CheckpointError if it is missing or corrupt."""
        try:
            record = json.loads(self.store.get_bytes(self._meta_key(step)))
            blob = self.store.get_bytes(self._blob_key(step))
        except (ObjectNotFound, ValueError) as e:
            raise CheckpointError(f"checkpoint {step} under {self.prefix!r} is unreadable: {e}") from e
        if not isinstance(record, dict):
            raise CheckpointError(f"checkpoint {step} under {self.prefix!r} has a malformed meta object")
        digest = hashlib.sha256(blob).hexdigest()
        if len(blob) != record.get("size") or digest != record.get("sha256"):
            raise CheckpointError(
                f"checkpoint {step} under {self.prefix!r} is corrupt: {len(blob)} bytes with sha256 {digest}, "
                f"expected {record.get('size')} bytes with {record.get('sha256')}"
            )
        if "meta" not in record or record.get("meta_sha256") != _meta_digest(record["meta"]):
            raise CheckpointError(f"checkpoint {step} under {self.prefix!r} is corrupt: its meta does not match its meta_sha256")
        return load_safetensors(blob), record["meta"]

    def _pointer_step(self) -> int | None:
        try:
            return int(json.loads(self.store.get_bytes(self._key(POINTER)))["step"])
        except ObjectNotFound:
            return None
        except (ValueError, KeyError, TypeError) as e:
            warnings.warn(f"checkpoint pointer under {self.prefix!r} is unreadable ({e}); scanning", stacklevel=3)
            return None

    def load_latest(self) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None:
        """The newest good checkpoint as ``(step, tensors, meta)``, or None if there is none.

        Candidates: the step the pointer names, then older stored steps, newest first (steps newer
        than the pointer were never published and are ignored).
        """
        pointed = self._pointer_step()
        stored = self._stored_steps()
        older = [s for s in reversed(stored) if pointed is None or s < pointed]
        for step in ([pointed] if pointed is not None else []) + older:
            try:
                tensors, meta = self.load(step)
            except CheckpointError as e:
                warnings.warn(f"{e}; falling back to an older checkpoint", stacklevel=2)
                continue
            return step, tensors, meta
        return None
