"""SegmentWriter: decodable segments, a live HLS playlist, an exact MP4, deterministic resume."""

from __future__ import annotations

import io
import os

import av
import numpy as np
import pytest
from PIL import Image

from miga_ray.storage import LocalStore, ObjectStore, S3Store, SegmentWriter, Uploader, write_png_frames

W, H, FPS, N = 64, 48, 8, 8


def make_frames(start: int, n: int) -> np.ndarray:
    """Smooth moving colour patterns, frame ``start`` first: something H.264 can compress faithfully."""
    t = np.arange(start, start + n, dtype=np.float32)[:, None, None, None]
    y = np.arange(H, dtype=np.float32)[None, :, None, None]
    x = np.arange(W, dtype=np.float32)[None, None, :, None]
    c = np.arange(3, dtype=np.float32)[None, None, None, :]
    return (127 + 90 * np.sin((x + 2 * t) / 11 + c) * np.cos((y - t) / 9)).astype(np.uint8)


def decode(data: bytes) -> tuple[np.ndarray, list[int | None], list[bool]]:
    """All frames of a video file as ``[n, H, W, 3]``, with their pts and keyframe flags."""
    with av.open(io.BytesIO(data), mode="r") as container:
        frames = list(container.decode(video=0))
    return (
        np.stack([f.to_ndarray(format="rgb24") for f in frames]),
        [f.pts for f in frames],
        [f.key_frame for f in frames],
    )


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def segment_keys(store: ObjectStore, prefix: str) -> list[str]:
    return store.list(f"{prefix}/segments/")


def test_segments_playlist_and_mp4(local_store: LocalStore) -> None:
    video = make_frames(0, 37)
    writer = SegmentWriter(local_store, "job", FPS, W, H, segment_frames=N)
    for a, b in [(0, 5), (5, 16), (16, 17), (17, 37)]:
        writer.write(video[a:b])
    assert (writer.frames_written, writer.frames_received) == (32, 37)
    live = local_store.get_bytes("job/video.m3u8").decode().splitlines()
    assert live[:5] == [
        "#EXTM3U",
        "#EXT-X-VERSION:3",
        "#EXT-X-PLAYLIST-TYPE:EVENT",
        "#EXT-X-TARGETDURATION:1",
        "#EXT-X-MEDIA-SEQUENCE:0",
    ]
    assert live[5:] == [line for i in range(4) for line in ("#EXTINF:1.000000,", f"segments/{i:05d}.ts")]
    assert segment_keys(local_store, "job") == [f"job/segments/{i:05d}.ts" for i in range(4)]

    writer.finish()
    final = local_store.get_bytes("job/video.m3u8").decode().splitlines()
    assert final[-3:] == ["#EXTINF:0.625000,", "segments/00004.ts", "#EXT-X-ENDLIST"]
    segments = [local_store.get_bytes(key) for key in segment_keys(local_store, "job")]
    for i, data in enumerate(segments):  # each decodes alone and starts with a keyframe
        frames, pts, keys = decode(data)
        assert len(frames) == (N if i < 4 else 5) and keys[0]
        assert mean_abs_error(frames, video[i * N : i * N + len(frames)]) < 4.0
    joined, pts, _ = decode(b"".join(segments))
    assert joined.shape == (37, H, W, 3) and pts == [i * 90000 // FPS for i in range(37)]  # continuous, in order
    assert mean_abs_error(joined, video) < 4.0
    mp4, mp4_pts, _ = decode(local_store.get_bytes("job/video.mp4"))
    assert mp4.shape == (37, H, W, 3) and mp4_pts[0] == 0
    np.testing.assert_array_equal(mp4, joined)  # remuxed, not re-encoded


def test_resume_appends_segments(tmp_path) -> None:
    video = make_frames(0, 37)
    reference = LocalStore(tmp_path / "ref")
    uninterrupted = SegmentWriter(reference, "job", FPS, W, H, segment_frames=N)
    uninterrupted.write(video)
    uninterrupted.finish()

    store = LocalStore(tmp_path / "resumed")
    SegmentWriter(store, "job", FPS, W, H, segment_frames=N).write(video[:21])  # dies with 5 frames unsaved
    written: list[str] = []
    submit = store.submit

    def recording_submit(key: str, data: bytes | os.PathLike[str]) -> None:
        written.append(key)
        submit(key, data)

    store.submit = recording_submit  # type: ignore[method-assign]
    resumed = SegmentWriter(store, "job", FPS, W, H, segment_frames=N)
    assert resumed.frames_written == 16
    resumed.write(video[10:], start=10)  # the render replays from its checkpoint; stored frames are skipped
    resumed.finish()

    assert store.list("job/segments/") == reference.list("job/segments/")
    assert sorted(set(written) - {"job/video.m3u8"}) == [  # appended, not rewritten
        "job/segments/00002.ts",
        "job/segments/00003.ts",
        "job/segments/00004.ts",
        "job/video.mp4",
    ]
    assert store.get_bytes("job/video.m3u8") == reference.get_bytes("job/video.m3u8")
    frames, pts, _ = decode(store.get_bytes("job/video.mp4"))
    assert pts == decode(reference.get_bytes("job/video.mp4"))[1]
    assert frames.shape == (37, H, W, 3) and mean_abs_error(frames, video) < 4.0


def test_trailing_partial_segment_of_unfinished_job_is_rewritten(local_store: LocalStore) -> None:
    video = make_frames(0, 20)
    writer = SegmentWriter(local_store, "job", FPS, W, H, segment_frames=N)
    writer.write(video)
    writer.finish()
    assert SegmentWriter(local_store, "job", FPS, W, H, segment_frames=N).finished
    unended = local_store.get_bytes("job/video.m3u8").replace(b"#EXT-X-ENDLIST\n", b"")
    local_store.put_bytes("job/video.m3u8", unended)  # as if the job died inside finish()
    again = SegmentWriter(local_store, "job", FPS, W, H, segment_frames=N)
    assert (again.frames_written, again.finished) == (16, False)
    with pytest.raises(ValueError, match="cut differently"):
        SegmentWriter(local_store, "job", FPS, W, H, segment_frames=4)


def test_s3_through_uploader(s3_store: S3Store) -> None:
    video = make_frames(100, 20)
    with Uploader(s3_store) as uploader:
        writer = SegmentWriter(s3_store, "job", FPS, W, H, sink=uploader)
        writer.write(video)
        writer.finish()
    assert writer.segment_frames == 2 * FPS
    assert s3_store.list("job/") == [
        "job/segments/00000.ts",
        "job/segments/00001.ts",
        "job/video.m3u8",
        "job/video.mp4",
    ]
    frames, _, _ = decode(s3_store.get_bytes("job/video.mp4"))
    assert frames.shape == (20, H, W, 3) and mean_abs_error(frames, video) < 4.0


def test_invalid_input(local_store: LocalStore) -> None:
    with pytest.raises(ValueError, match="even"):
        SegmentWriter(local_store, "job", FPS, 63, H)
    writer = SegmentWriter(local_store, "job", FPS, W, H, segment_frames=N)
    with pytest.raises(ValueError, match="uint8"):
        writer.write(make_frames(0, 2).astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        writer.write(make_frames(0, 2)[:, :, :-2])
    with pytest.raises(ValueError, match="gap"):
        writer.write(make_frames(3, 2), start=3)
    with pytest.raises(ValueError, match="no frames"):
        writer.finish()


def test_png_frames_are_lossless(local_store: LocalStore) -> None:
    video = make_frames(0, 3)
    write_png_frames(local_store, "job", video, start=40)
    assert local_store.list("job/frames/") == [f"job/frames/{i:06d}.png" for i in (40, 41, 42)]
    decoded = np.asarray(Image.open(io.BytesIO(local_store.get_bytes("job/frames/000041.png"))))
    np.testing.assert_array_equal(decoded, video[1])
