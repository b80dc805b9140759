"""The video of a job while it renders: H.264 MPEG-TS segments, an HLS playlist, and a final MP4.

Segment ``i`` holds frames ``[i*N, (i+1)*N)``: boundaries depend only on frame indices, and every
segment is encoded by a fresh encoder (no B-frames, timestamps = frame indices) from its own
frames, so it starts with a keyframe, decodes alone, concatenates with its neighbours, and is the
same segment (same frames and timing; x264 does not promise the same bytes) whether or not the
render was interrupted. The playlist only ever names segments already uploaded (the sink
preserves order), so a player can open it while the job runs.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import shutil
import tempfile
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import av
import numpy as np
from PIL import Image

from .clips import file_sha256
from .layout import MP4, PLAYLIST, VIDEO_SUMS, JobLayout, JobProblem, join, read_sums, segment_name, sha256_problem
from .lease import pid_alive
from .objects import ObjectNotFound, ObjectStore
from .uploader import Sink

SEGMENT_SECONDS = 2
MP4_TMP_PREFIX = "miga-mp4-"


def remove_stale_mp4_dirs() -> list[Path]:
    """Remove the MP4 temp directories (``miga-mp4-<pid>-*``) of processes that no longer run; return them."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(f"{MP4_TMP_PREFIX}*-*"):
        pid = path.name.removeprefix(MP4_TMP_PREFIX).split("-", 1)[0]
        if path.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def video_problem(store: ObjectStore, job: JobLayout) -> str | None:
    """What is wrong with a finished job's video against its ``video.sha256`` (a segment, the playlist or the MP4
    missing or not the bytes written, or no record), or None: hashing only, nothing is decoded."""
    try:
        sums = read_sums(store, job.video_sums)
    except ObjectNotFound:
        return f"{VIDEO_SUMS} is missing"
    except ValueError:
        return f"{VIDEO_SUMS} is unreadable"
    if MP4 not in sums or PLAYLIST not in sums:
        return f"{VIDEO_SUMS} does not list {MP4} and {PLAYLIST}"
    return next((p for name, digest in sums.items() if (p := sha256_problem(store, job, name, digest))), None)


def check_video(store: ObjectStore, job_id: str) -> None:
    """JobProblem naming what of a done job's video is damaged (``video_problem``) and how to rebuild it."""
    if (problem := video_problem(store, JobLayout(job_id))) is not None:
        raise JobProblem(f"{problem}; run its render command again to rebuild it from the stored latents")


def count_frames(data: bytes) -> int:
    """Frames an encoded video (MPEG-TS or MP4) decodes to; -1 if it cannot be decoded at all."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            return sum(1 for _ in container.decode(video=0))
    except (av.FFmpegError, IndexError, ValueError):
        return -1


class _SegmentEncoder:
    """One segment being encoded into an in-memory MPEG-TS file."""

    def __init__(self, fps: Fraction, width: int, height: int, first_frame: int, options: dict[str, str]) -> None:
        self.buffer = io.BytesIO()
        self.container = av.open(self.buffer, mode="w", format="mpegts")
        self.stream = self.container.add_stream("libx264", rate=fps, options=options)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.time_base = 1 / fps
        self.next_pts = first_frame
        self.frames = 0

    def encode(self, frame: np.ndarray) -> None:
        video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        video_frame.pts, video_frame.time_base = self.next_pts, self.time_base
        self.container.mux(self.stream.encode(video_frame))
        self.next_pts += 1
        self.frames += 1

    def close(self) -> bytes:
        self.container.mux(self.stream.encode())
        self.container.close()
        return self.buffer.getvalue()


class SegmentWriter:
    """Receives frames ``[n, H, W, 3]`` uint8 incrementally; writes ``segments/NNNNN.ts``, ``video.m3u8``
    and, on ``finish``, ``video.mp4`` under ``prefix``.

    Restartable: an existing playlist under ``prefix`` is read back and numbering continues after
    its last full segment; feed frames again from ``frames_written`` (``write(..., start=i)``
    skips frames the store already has).

    ``digests`` holds the sha256 of every object it wrote (segments, the ended playlist, the MP4), by name
    relative to ``prefix``, and of a finished video's objects as its ``video.sha256`` records them: the
    record ``sums`` returns and ``first_damaged_segment`` and ``mp4_problem`` check.
    """

    def __init__(
        self,
        store: ObjectStore,
        prefix: str,
        fps: int | Fraction,
        width: int,
        height: int,
        *,
        segment_frames: int | None = None,
        crf: int = 16,
        preset: str = "medium",
        sink: Sink | None = None,
    ) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"H.264 (yuv420p) needs even dimensions, got {width}x{height}")
        self.store = store
        self.prefix = prefix
        self.sink: Sink = sink if sink is not None else store
        self.fps = Fraction(fps)
        self.width, self.height = width, height
        self.segment_frames = segment_frames or max(1, round(SEGMENT_SECONDS * self.fps))
        self.options = {"crf": str(crf), "preset": preset, "bf": "0", "threads": "2"}
        self.target_duration = math.ceil(self.segment_frames / self.fps)
        self.segments, self.finished = self._read_playlist()
        self.digests: dict[str, str] = self._read_sums() if self.finished else {}
        self._open: _SegmentEncoder | None = None

    @property
    def frames_written(self) -> int:
        """Frames in segments already handed to the sink: where a resumed job must continue from."""
        return sum(self.segments)

    @property
    def frames_received(self) -> int:
        """Frames written plus those in the segment being encoded."""
        return self.frames_written + (self._open.frames if self._open else 0)

    def _key(self, name: str) -> str:
        return join(self.prefix, name)

    def _read_playlist(self) -> tuple[list[int], bool]:
        """Frame counts of the stored segments (a trailing partial one of an unfinished job dropped)."""
        try:
            text = self.store.get_bytes(self._key(PLAYLIST)).decode()
        except ObjectNotFound:
            return [], False
        lines = text.splitlines()
        counts: list[int] = []
        for line, uri in pairwise(lines):
            if line.startswith("#EXTINF:"):
                if uri != segment_name(len(counts)):
                    raise ValueError(f"playlist {self._key(PLAYLIST)} lists {uri!r} out of order")
                counts.append(round(float(line[8:].split(",")[0]) * self.fps))
        finished = "#EXT-X-ENDLIST" in lines
        if any(n != self.segment_frames for n in counts[:-1]) or (counts and counts[-1] > self.segment_frames):
            raise ValueError(
                f"playlist {self._key(PLAYLIST)} was cut differently than every {self.segment_frames} frames"
            )
        if counts and counts[-1] < self.segment_frames and not finished:
            counts.pop()
        return counts, finished

    def _read_sums(self) -> dict[str, str]:
        """The digests a finished video's ``video.sha256`` records (none when it is missing or unreadable)."""
        try:
            return read_sums(self.store, self._key(VIDEO_SUMS))
        except (ObjectNotFound, ValueError):
            return {}

    def sums(self) -> dict[str, str]:
        """``name -> sha256`` of every object of the finished video (what ``video.sha256`` records)."""
        names = [segment_name(i) for i in range(len(self.segments))] + [PLAYLIST, MP4]
        return {name: self.digests[name] for name in names}

    def reopen(self) -> None:
        """Treat a finished video as unfinished (its job was never recorded done): ``finish`` remuxes it again."""
        self.finished = False
        for name in (PLAYLIST, MP4):
            self.digests.pop(name, None)

    def extend(self) -> None:
        """Continue a finished video with more frames: reopen it, and drop a trailing partial segment, which is
        written again with the frames that follow (every segment but the last holds ``segment_frames``)."""
        self.reopen()
        if self.segments and self.segments[-1] < self.segment_frames:
            self.rewind(len(self.segments) - 1)

    def rewind(self, index: int) -> None:
        """Forget segments ``index`` and later (they are damaged): frames are written again from there."""
        for i in range(index, len(self.segments)):
            self.digests.pop(segment_name(i), None)
        self.reopen()
        self.segments, self._open = self.segments[:index], None

    def first_damaged_segment(self) -> int | None:
        """Index of the first listed segment that is missing or not the bytes written (sha256), or, written by an
        earlier run whose digest is not known, does not decode to its listed frame count (then its digest is taken)."""
        for index, frames in enumerate(self.segments):
            name = segment_name(index)
            try:
                data = self.store.get_bytes(self._key(name))
            except ObjectNotFound:
                return index
            digest = hashlib.sha256(data).hexdigest()
            if name in self.digests:
                if digest != self.digests[name]:
                    return index
            elif count_frames(data) != frames:
                return index
            else:
                self.digests[name] = digest
        return None

    def mp4_problem(self, frames: int) -> str | None:
        """What is wrong with the stored ``video.mp4``: missing, not the bytes written, or not ``frames`` frames; or None."""
        try:
            data = self.store.get_bytes(self._key(MP4))
        except ObjectNotFound:
            return "video.mp4 is missing"
        if MP4 in self.digests and hashlib.sha256(data).hexdigest() != self.digests[MP4]:
            return "video.mp4 differs from the one written (sha256 mismatch)"
        if (decoded := count_frames(data)) != frames:
            return f"video.mp4 decodes to {decoded} frames, not {frames}"
        return None

    def playlist(self, ended: bool = False) -> str:
        """HLS (EVENT) playlist of the written segments; ``ended`` adds EXT-X-ENDLIST."""
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:3",
            "#EXT-X-PLAYLIST-TYPE:EVENT",
            f"#EXT-X-TARGETDURATION:{self.target_duration}",
            "#EXT-X-MEDIA-SEQUENCE:0",
        ]
        for i, n in enumerate(self.segments):
            lines += [f"#EXTINF:{float(n / self.fps):.6f},", segment_name(i)]
        if ended:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"

    def write(self, frames: np.ndarray, start: int | None = None) -> None:
        """Append frames ``[n, H, W, 3]`` uint8; with ``start`` (index of ``frames[0]``), skip those already stored."""
        if self.finished:
            raise RuntimeError(f"video under {self.prefix!r} is already finished")
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(
                f"expected uint8 frames [n, {self.height}, {self.width}, 3], got {frames.dtype} {frames.shape}"
            )
        if start is not None:
            if start > self.frames_received:
                raise ValueError(f"frames start at {start} but the video has {self.frames_received}: a gap")
            frames = frames[self.frames_received - start :]
        for frame in frames:
            if self._open is None:
                self._open = _SegmentEncoder(self.fps, self.width, self.height, self.frames_written, self.options)
            self._open.encode(frame)
            if self._open.frames == self.segment_frames:
                self._close_segment()

    def _close_segment(self) -> None:
        """Encode the tail of the open segment, upload it, then the playlist that names it."""
        assert self._open is not None
        data, n = self._open.close(), self._open.frames
        self._open = None
        self.digests[segment_name(len(self.segments))] = hashlib.sha256(data).hexdigest()
        self.sink.submit(self._key(segment_name(len(self.segments))), data)
        self.segments.append(n)
        self.sink.submit(self._key(PLAYLIST), self.playlist().encode())

    def finish(self) -> None:
        """Upload the last (partial) segment, remux all segments into ``video.mp4``, then end the playlist."""
        if self.finished:
            return
        if self._open is not None:
            self._close_segment()
        if not self.segments:
            raise ValueError(f"no frames were written under {self.prefix!r}")
        self.sink.flush()
        with tempfile.TemporaryDirectory(prefix=f"{MP4_TMP_PREFIX}{os.getpid()}-") as tmp:
            path = Path(tmp, MP4)
            self._remux(path)
            playlist = self.playlist(ended=True).encode()
            self.digests[MP4] = file_sha256(path)
            self.digests[PLAYLIST] = hashlib.sha256(playlist).hexdigest()
            self.sink.submit(self._key(MP4), path)
            self.sink.submit(self._key(PLAYLIST), playlist)
            self.sink.flush()
        self.finished = True

    def _remux(self, path: Path) -> None:
        """Copy the H.264 packets of every stored segment, in order, into one MP4 (no re-encoding)."""
        with av.open(str(path), mode="w", format="mp4", options={"movflags": "faststart"}) as out:
            out_stream = None
            for i in range(len(self.segments)):
                with av.open(io.BytesIO(self.store.get_bytes(self._key(segment_name(i)))), mode="r") as segment:
                    in_stream = segment.streams.video[0]
                    if out_stream is None:
                        out_stream = out.add_stream_from_template(in_stream)
                    for packet in segment.demux(in_stream):
                        if packet.dts is not None:
                            packet.stream = out_stream
                            out.mux(packet)


def write_png_frames(sink: Sink, job_id: str, frames: np.ndarray, start: int) -> None:
    """Write frames ``[n, H, W, 3]`` uint8 losslessly as the job's ``frames/NNNNNN.png`` (``start`` first), for evaluation."""
    for i, frame in enumerate(np.asarray(frames)):
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="PNG")
        sink.submit(JobLayout(job_id).frame(start + i), buffer.getvalue())
