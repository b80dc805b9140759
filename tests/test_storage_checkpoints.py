"""CheckpointStore: round trip, pointer discipline, keep-last-two, recovery from damaged checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from miga_ray.storage import CheckpointStore, LocalStore, ObjectStore, Uploader


def state(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return {
        "queue": torch.randn(2, 4, 3, 5, generator=g),
        "levels": torch.arange(step, step + 7, dtype=torch.int64),
        "mask": torch.rand(6, generator=g) > 0.5,
        "half": torch.randn(3, generator=g).to(torch.bfloat16),
    }


def assert_state(tensors: dict[str, torch.Tensor], step: int) -> None:
    expected = state(step)
    assert tensors.keys() == expected.keys()
    for name, tensor in expected.items():
        assert tensors[name].dtype == tensor.dtype and torch.equal(tensors[name], tensor)


def test_round_trip(store: ObjectStore) -> None:
    ckpt = CheckpointStore(store, "job/state")
    assert ckpt.load_latest() is None
    ckpt.save(12, state(12), {"latents_done": 3, "mode": "stream"})
    loaded = CheckpointStore(store, "job/state").load_latest()  # a fresh process
    assert loaded is not None
    step, tensors, meta = loaded
    assert step == 12 and meta == {"latents_done": 3, "mode": "stream"}
    assert_state(tensors, 12)
    record = json.loads(store.get_bytes("job/state/ckpt-000000012.json"))
    assert record["step"] == 12 and len(record["sha256"]) == 64 and record["created"]
    assert json.loads(store.get_bytes("job/state/LATEST.json")) == {"step": 12}


def test_keeps_last_two(local_store: LocalStore) -> None:
    with Uploader(local_store) as uploader:
        ckpt = CheckpointStore(local_store, "state", sink=uploader)
        for step in (1, 2, 3, 4):
            ckpt.save(step, state(step), {})
    assert local_store.list("state/") == [
        "state/LATEST.json",
        "state/ckpt-000000003.json",
        "state/ckpt-000000003.safetensors",
        "state/ckpt-000000004.json",
        "state/ckpt-000000004.safetensors",
    ]
    CheckpointStore(local_store, "state").save(5, state(5), {})  # a resumed process prunes too
    assert [k for k in local_store.list("state/ckpt-") if k.endswith(".json")] == [
        "state/ckpt-000000004.json",
        "state/ckpt-000000005.json",
    ]


def saved_twice(store: ObjectStore) -> CheckpointStore:
    ckpt = CheckpointStore(store, "state")
    ckpt.save(10, state(10), {"n": 10})
    ckpt.save(20, state(20), {"n": 20})
    return ckpt


def load_with_warning(ckpt: CheckpointStore, match: str) -> tuple[int, dict[str, torch.Tensor], dict]:
    with pytest.warns(UserWarning, match=match):
        loaded = ckpt.load_latest()
    assert loaded is not None
    return loaded


def test_corrupt_newest_falls_back_to_previous(local_store: LocalStore) -> None:
    ckpt = saved_twice(local_store)
    blob = bytearray(local_store.get_bytes("state/ckpt-000000020.safetensors"))
    blob[-1] ^= 0xFF
    local_store.put_bytes("state/ckpt-000000020.safetensors", bytes(blob))
    step, tensors, meta = load_with_warning(ckpt, "checkpoint 20 .* corrupt")
    assert step == 10 and meta == {"n": 10}
    assert_state(tensors, 10)


def test_truncated_blob_falls_back(local_store: LocalStore) -> None:
    ckpt = saved_twice(local_store)
    blob = local_store.get_bytes("state/ckpt-000000020.safetensors")
    local_store.put_bytes("state/ckpt-000000020.safetensors", blob[: len(blob) // 2])
    assert load_with_warning(ckpt, "corrupt")[0] == 10


def test_pointer_to_missing_checkpoint_falls_back(local_store: LocalStore) -> None:
    ckpt = saved_twice(local_store)
    local_store.delete("state/ckpt-000000020.safetensors")
    local_store.delete("state/ckpt-000000020.json")
    assert load_with_warning(ckpt, "checkpoint 20 .* unreadable")[0] == 10


def test_damaged_pointer_and_unpublished_newer_checkpoint(local_store: LocalStore) -> None:
    ckpt = saved_twice(local_store)
    local_store.put_bytes("state/LATEST.json", b'{"step": 10}')  # 20 written, never published
    loaded = ckpt.load_latest()
    assert loaded is not None and loaded[0] == 10
    local_store.put_bytes("state/LATEST.json", b"{not json")
    assert load_with_warning(ckpt, "pointer .* unreadable")[0] == 20
    ckpt.save(15, state(15), {})  # a run resumed from 10 replaces the stale 20
    assert [k for k in local_store.list("state/") if k.endswith(".json")] == [
        "state/LATEST.json",
        "state/ckpt-000000010.json",
        "state/ckpt-000000015.json",
    ]


def test_nothing_loadable(local_store: LocalStore) -> None:
    ckpt = CheckpointStore(local_store, "state")
    ckpt.save(1, state(1), {})
    local_store.put_bytes("state/ckpt-000000001.json", b"[]")
    with pytest.warns(UserWarning, match="malformed"):
        assert ckpt.load_latest() is None


@pytest.mark.parametrize("edit", ["digit", "key", "meta-missing"])
def test_edited_meta_is_caught_by_its_checksum(local_store: LocalStore, edit: str) -> None:
    """One changed digit in the meta (e.g. how many latents were emitted) makes the checkpoint corrupt, not trusted."""
    ckpt = saved_twice(local_store)
    record = json.loads(local_store.get_bytes("state/ckpt-000000020.json"))
    if edit == "digit":
        record["meta"]["n"] = 21
    elif edit == "key":
        record["meta"]["extra"] = 1
    else:
        del record["meta"]
    local_store.put_bytes("state/ckpt-000000020.json", json.dumps(record).encode())
    step, _, meta = load_with_warning(ckpt, "checkpoint 20 .* corrupt")
    assert step == 10 and meta == {"n": 10}
