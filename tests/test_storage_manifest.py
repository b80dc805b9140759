"""Manifest: one row per job, merge-updated by id, a plain Parquet table."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest

from miga_ray.storage import LocalStore, ManifestRow, ObjectStore, read_manifest, update_manifest


def test_merge_update(store: ObjectStore) -> None:
    assert read_manifest(store) == []
    update_manifest(
        store,
        [ManifestRow("a", "a corgi", 1, 120, "running"), ManifestRow("b", "a cat", 2, 240, "running")],
    )
    done = ManifestRow("a", "a corgi", 1, 120, "done", timings={"total_s": 9.5}, metrics={"subject": 0.97})
    rows = update_manifest(store, [done, ManifestRow("c", "a fox", 3, 60, "failed", error="OOM")])
    assert [r.id for r in rows] == ["a", "b", "c"]
    assert read_manifest(store) == rows
    assert rows[0].metrics == {"subject": 0.97} and rows[0].video == "a/video.mp4"

    table = pq.read_table(io.BytesIO(store.get_bytes("manifest.parquet")))
    assert table.column("status").to_pylist() == ["done", "running", "failed"]
    assert table.column("timings").to_pylist()[0] == '{"total_s": 9.5}'


def test_readable_by_pandas(local_store: LocalStore) -> None:
    pandas = pytest.importorskip("pandas")
    update_manifest(local_store, [ManifestRow("a", "p", 1, 8, "done")])
    frame = pandas.read_parquet(local_store.root / "manifest.parquet")
    assert list(frame["id"]) == ["a"] and frame["frames"].dtype == "int64"
