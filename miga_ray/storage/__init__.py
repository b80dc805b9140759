"""Everything a render leaves behind, in a local directory or an S3-compatible bucket, resumable."""

from .checkpoints import CheckpointError, CheckpointStore
from .layout import (
    DamagedError,
    JobLayout,
    JobProblem,
    JobRecord,
    LatentWriter,
    check_job_id,
    load_job,
    read_job,
    scrub_secrets,
    write_job,
)
from .manifest import ManifestRow, read_manifest, run_job_ids, update_manifest
from .objects import LocalStore, ObjectNotFound, ObjectStore, S3Store, StoreError, open_store
from .segments import SegmentWriter, check_video, remove_stale_mp4_dirs, video_problem, write_png_frames
from .uploader import Sink, Uploader, UploadError

__all__ = [
    "CheckpointError",
    "CheckpointStore",
    "DamagedError",
    "JobLayout",
    "JobProblem",
    "JobRecord",
    "LatentWriter",
    "LocalStore",
    "ManifestRow",
    "ObjectNotFound",
    "ObjectStore",
    "S3Store",
    "SegmentWriter",
    "Sink",
    "StoreError",
    "UploadError",
    "Uploader",
    "check_job_id",
    "check_video",
    "load_job",
    "open_store",
    "read_job",
    "read_manifest",
    "remove_stale_mp4_dirs",
    "run_job_ids",
    "scrub_secrets",
    "update_manifest",
    "video_problem",
    "write_job",
    "write_png_frames",
]
