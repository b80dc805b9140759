"""Object names of a run and of one job (DESIGN.md "Storage layout"), its ``job.json`` record, and its latent files.

Every key a run or a job is stored under is named here, and nowhere else:

```
<job_id>/job.json                    JobRecord: config (secrets scrubbed), status, progress
<job_id>/latents/NNNNNN.safetensors  clean latents, the source of truth
<job_id>/segments/NNNNN.ts           H.264 segments listed by <job_id>/video.m3u8
<job_id>/video.mp4                   written when the job completes
<job_id>/latents.sha256              sha256 of every latent as written, once the job is done
<job_id>/video.sha256                sha256 of every segment, the playlist and the MP4 as written, once done
<job_id>/state/                      checkpoints + LATEST.json
<job_id>/lease/NNNNNNNNNN.json       the job's lease generations (storage.lease)
<job_id>/frames/NNNNNN.png           lossless frames, when video.png_frames is on
<job_id>/sheet/NNNNNN.png            frames sampled for the contact sheet, <job_id>/contact_sheet.png
manifest.parquet                     one row per job of a batch
index.html, index.presigned.html     the gallery page of the run (miga_ray.gallery)
```

A job id may not be any name of the run's own objects, nor any name inside a job (a run directory
and a job directory must never be mistaken for each other)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .objects import ObjectNotFound, ObjectStore, check_key
from .uploader import Sink

JobStatus = Literal["running", "done", "failed", "interrupted"]
MANIFEST = "manifest.parquet"
GALLERY = "index.html"
PRESIGNED_GALLERY = "index.presigned.html"
RUN_OBJECTS = (MANIFEST, GALLERY, PRESIGNED_GALLERY)  # a run's own objects, beside its job directories
JOB_JSON = "job.json"
PLAYLIST = "video.m3u8"
MP4 = "video.mp4"
LATENT_SUMS = "latents.sha256"  # sha256sum format: "<hex>  latents/NNNNNN.safetensors" per line
VIDEO_SUMS = "video.sha256"  # the same for segments/NNNNN.ts, video.m3u8 and video.mp4
CONTACT_SHEET = "contact_sheet.png"
SEGMENTS_DIR = "segments"
LATENTS_DIR = "latents"
STATE_DIR = "state"
LEASE_DIR = "lease"
FRAMES_DIR = "frames"
SHEET_DIR = "sheet"
JOB_ENTRIES = (JOB_JSON, PLAYLIST, MP4, LATENT_SUMS, VIDEO_SUMS, CONTACT_SHEET, SEGMENTS_DIR, LATENTS_DIR, STATE_DIR, LEASE_DIR, FRAMES_DIR, SHEET_DIR)
_SUM_LINE = re.compile(r"([0-9a-f]{64})  (\S+)")

JOB_ID_MAX = 128
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RESERVED_JOB_IDS = frozenset(RUN_OBJECTS + JOB_ENTRIES)

_SECRET_WORDS = {"secret", "key", "token", "password", "passwd", "credential", "credentials", "apikey"}


def check_job_id(job_id: str) -> str:
    """``job_id`` if it is a safe job id, else ValueError: the one rule for ``render --job-id`` and batch ids.

    The rule: 1 to 128 of ``A-Z a-z 0-9 . _ -``, starting with a letter or digit, no ``..``, not a
    reserved name of the output layout (then the message names it; otherwise it never repeats the id,
    which may be huge).
    """
    if not job_id or len(job_id) > JOB_ID_MAX:
        raise ValueError(f"a job id must be 1 to {JOB_ID_MAX} characters (got {len(job_id)})")
    if not _JOB_ID.fullmatch(job_id):
        raise ValueError("a job id may hold only A-Z a-z 0-9 . _ - and must start with a letter or digit")
    if ".." in job_id:
        raise ValueError("a job id must not contain '..'")
    if job_id.lower() in RESERVED_JOB_IDS:
        raise ValueError(f"a job id must not be {job_id!r}, a reserved name of a run's layout (reserved: {', '.join(sorted(RESERVED_JOB_IDS))})")
    return job_id


def segment_name(index: int) -> str:
    """Name of segment ``index`` relative to the job (and to the playlist)."""
    return f"{SEGMENTS_DIR}/{index:05d}.ts"


def latent_name(index: int) -> str:
    """Name of latent ``index`` relative to the job."""
    return f"{LATENTS_DIR}/{index:06d}.safetensors"


def join(prefix: str, name: str) -> str:
    """``prefix/name``, or ``name`` alone when the prefix is empty."""
    return f"{prefix.strip('/')}/{name}" if prefix.strip("/") else name


@dataclass(frozen=True)
class JobLayout:
    """The keys of one job, relative to the output store."""

    job_id: str

    def __post_init__(self) -> None:
        if "/" in self.job_id:
            raise ValueError(f"job id {self.job_id!r} must not contain '/'")
        check_key(self.job_id)

    def key(self, name: str) -> str:
        return join(self.job_id, name)

    @property
    def job_json(self) -> str:
        return self.key(JOB_JSON)

    @property
    def playlist(self) -> str:
        return self.key(PLAYLIST)

    @property
    def mp4(self) -> str:
        return self.key(MP4)

    @property
    def latent_sums(self) -> str:
        """The checksums of every latent, written when the job is done."""
        return self.key(LATENT_SUMS)

    @property
    def contact_sheet(self) -> str:
        return self.key(CONTACT_SHEET)

    @property
    def state(self) -> str:
        """Prefix of the job's checkpoints (for ``CheckpointStore``)."""
        return self.key(STATE_DIR)

    @property
    def lease(self) -> str:
        """Prefix of the job's lease generations (for ``storage.lease``)."""
        return self.key(LEASE_DIR)

    @property
    def frames(self) -> str:
        """Prefix of the job's lossless PNG frames."""
        return self.key(FRAMES_DIR)

    @property
    def sheet(self) -> str:
        """Prefix of the frames sampled for the contact sheet."""
        return self.key(SHEET_DIR)

    @property
    def video_sums(self) -> str:
        """The checksums of every segment, the playlist and the MP4, written when the job is done."""
        return self.key(VIDEO_SUMS)

    def segment(self, index: int) -> str:
        return self.key(segment_name(index))

    def latent(self, index: int) -> str:
        return self.key(latent_name(index))

    def frame(self, index: int) -> str:
        """Lossless PNG of frame ``index``."""
        return self.key(f"{FRAMES_DIR}/{index:06d}.png")

    def sheet_frame(self, index: int) -> str:
        """Frame ``index`` as sampled for the contact sheet."""
        return self.key(f"{SHEET_DIR}/{index:06d}.png")


def sums_text(digests: dict[str, str]) -> bytes:
    """``name -> sha256`` as a sha256sum file (``sha256sum -c`` checks it in the job directory), sorted by name."""
    return "".join(f"{digests[name]}  {name}\n" for name in sorted(digests)).encode()


def read_sums(store: ObjectStore, key: str) -> dict[str, str]:
    """``name -> sha256`` of a sha256sum file; ObjectNotFound if there is none, ValueError if it is malformed."""
    sums = {}
    for line in store.get_bytes(key).decode().splitlines():
        if not (match := _SUM_LINE.fullmatch(line)):
            raise ValueError(f"{key}: not a sha256sum line: {line[:80]!r}")
        sums[match.group(2)] = match.group(1)
    return sums


def sha256_problem(store: ObjectStore, job: JobLayout, name: str, digest: str) -> str | None:
    """What is wrong with the job's object ``name`` against its recorded sha256 (missing, other bytes), or None."""
    try:
        data = store.get_bytes(job.key(name))
    except ObjectNotFound:
        return f"{name} is missing"
    if hashlib.sha256(data).hexdigest() != digest:
        return f"{name} differs from the one written (sha256 mismatch)"
    return None


def _words(name: str) -> list[str]:
    """Split ``aws_secret_access_key`` / ``accessKeyId`` / ``api-key`` into lower-case words."""
    return [w.lower() for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", name)]


def is_secret_name(name: str) -> bool:
    """Whether a config key looks like it holds a credential (secret, key, token, password...)."""
    return any(w in _SECRET_WORDS for w in _words(name))


def scrub_secrets(value: Any) -> Any:
    """A deep copy of a config with every entry whose key looks secret removed, for job.json and logs."""
    if isinstance(value, dict):
        return {k: scrub_secrets(v) for k, v in value.items() if not is_secret_name(str(k))}
    if isinstance(value, list | tuple):
        return [scrub_secrets(v) for v in value]
    return value


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class JobRecord:
    """The content of ``job.json``: what a user or the batch driver reads to follow a job."""

    job_id: str
    status: JobStatus = "running"
    frames_done: int = 0
    frames_total: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    updated_at: str = field(default_factory=_now)

    def __post_init__(self) -> None:
        if self.status not in get_args(JobStatus):
            raise ValueError(f"job status {self.status!r} is not one of {get_args(JobStatus)}")
        for name, kinds in _FIELD_TYPES.items():
            if not isinstance(getattr(self, name), kinds) or isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} is {type(getattr(self, name)).__name__}, not {' or '.join(k.__name__ for k in kinds)}")
        for name, kind in (("prompt", str), ("render", dict), ("start", dict)):
            if self.config.get(name) is not None and not isinstance(self.config[name], kind):
                raise TypeError(f"config.{name} is {type(self.config[name]).__name__}, not {kind.__name__}")

    def to_json(self) -> bytes:
        """Serialise with the config scrubbed of secrets."""
        record = asdict(self) | {"config": scrub_secrets(self.config)}
        return json.dumps(record, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> JobRecord:
        """Parse a record, ignoring fields this version does not know; ValueError or TypeError saying what is wrong."""
        value = json.loads(data)
        if not isinstance(value, dict):
            raise TypeError(f"a JSON {type(value).__name__}, not an object")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in known})


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "job_id": (str,), "status": (str,), "frames_done": (int,), "frames_total": (int, type(None)), "config": (dict,),
    "timings": (dict,), "metrics": (dict,), "error": (str, type(None)), "updated_at": (str,),
}  # fmt: skip


def write_job(sink: Sink, record: JobRecord) -> None:
    """Write ``<job_id>/job.json`` (stamping ``updated_at``) through a store or an uploader."""
    record.updated_at = _now()
    sink.submit(JobLayout(record.job_id).job_json, record.to_json())


class JobProblem(RuntimeError):
    """What is wrong with a job directory as a whole (no or a corrupt job.json, no or a corrupt video)."""


def read_job(store: ObjectStore, job_id: str) -> JobRecord | None:
    """The job's record, or None if the job has never been written; JobProblem naming job.json and what to do when
    it is not a record (not JSON, not an object, a field of the wrong type)."""
    key = JobLayout(job_id).job_json
    try:
        data = store.get_bytes(key)
    except ObjectNotFound:
        return None
    try:
        return JobRecord.from_json(data)
    except (ValueError, TypeError) as exc:
        raise JobProblem(
            f"{key} is corrupt ({type(exc).__name__}: {str(exc)[:200]}); restore it, or render the job anew "
            "(its render command with --restart)"
        ) from None


def load_job(store: ObjectStore, job_id: str) -> JobRecord:
    """The job's record; JobProblem saying what is wrong when its job.json is missing or corrupt."""
    record = read_job(store, job_id)
    if record is None:
        raise JobProblem(f"{JobLayout(job_id).job_json} is missing")
    return record


class DamagedError(RuntimeError):
    """A stored piece of a job is missing or differs from what was written (exit 1, naming it)."""


class LatentWriter:
    """Clean latents of a job, one ``latents/NNNNNN.safetensors`` per latent frame, written as produced.

    ``digests[i]`` is the sha256 of latent ``i``'s object as written (restored from a checkpoint on
    resume): ``read`` and ``problem`` check stored latents against it.
    """

    def __init__(self, store: ObjectStore, job: JobLayout, sink: Sink | None = None) -> None:
        self.store = store
        self.job = job
        self.sink: Sink = sink if sink is not None else store
        self.digests: dict[int, str] = {}

    def write(self, index: int, latent: torch.Tensor) -> None:
        """Store latent frame ``index`` (any shape, e.g. ``[C, H, W]``) and record its checksum."""
        data = save_safetensors({"latent": latent.detach().cpu().contiguous()}, metadata={"index": str(index)})
        self.digests[index] = hashlib.sha256(data).hexdigest()
        self.sink.submit(self.job.latent(index), data)

    def load_sums(self, count: int) -> str | None:
        """Take the digests of latents ``0..count-1`` from the job's latents.sha256; what is wrong with it, or None."""
        try:
            sums = read_sums(self.store, self.job.latent_sums)
        except (ObjectNotFound, ValueError):
            return f"its {LATENT_SUMS} is missing or unreadable"
        self.digests = {i: sums[latent_name(i)] for i in range(count) if latent_name(i) in sums}
        return None if len(self.digests) == count else f"its {LATENT_SUMS} does not list its {count} latents"

    def problem(self, index: int) -> str | None:
        """What is wrong with stored latent ``index`` (missing, or not the bytes written), or None."""
        try:
            data = self.store.get_bytes(self.job.latent(index))
        except ObjectNotFound:
            return f"latent {index} ({self.job.latent(index)}) is missing"
        if index not in self.digests:
            return f"latent {index} ({self.job.latent(index)}) has no recorded checksum"
        if hashlib.sha256(data).hexdigest() != self.digests[index]:
            return f"latent {index} ({self.job.latent(index)}) differs from the one written (sha256 mismatch)"
        return None

    def read(self, index: int) -> torch.Tensor:
        """Latent ``index`` as stored, checked against its recorded checksum when there is one."""
        try:
            data = self.store.get_bytes(self.job.latent(index))
        except ObjectNotFound:
            raise DamagedError(f"latent {index} ({self.job.latent(index)}) is missing") from None
        if index in self.digests and hashlib.sha256(data).hexdigest() != self.digests[index]:
            raise DamagedError(f"latent {index} ({self.job.latent(index)}) differs from the one written (sha256 mismatch)")
        return load_safetensors(data)["latent"]

    def count(self) -> int:
        """How many latents ``0..n-1`` are stored without a gap (where a resumed job continues)."""
        present = {int(k.rsplit("/", 1)[1].split(".")[0]) for k in self.store.list(self.job.key(LATENTS_DIR + "/"))}
        n = 0
        while n in present:
            n += 1
        return n
