"""Everything a render leaves behind, in a local directory or an S3-compatible bucket, resumable."""

from .checkpoints import CheckpointError, CheckpointStore
from .layout import DamagedError, JobLayout, JobRecord, LatentWriter, check_job_id, read_job, scrub_secrets, write_job
from .manifest import ManifestRow, read_manifest, update_manifest
from .objects import LocalStore, ObjectNotFound, ObjectStore, S3Store, StoreError, open_store
from .segments import SegmentWriter, remove_stale_mp4_dirs, write_png_frames
from .uploader import Sink, Uploader, UploadError

__all__ = [
    "CheckpointError",
    "CheckpointStore",
    "DamagedError",
    "JobLayout",
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
    "open_store",
    "read_job",
    "read_manifest",
    "remove_stale_mp4_dirs",
    "scrub_secrets",
    "update_manifest",
    "write_job",
    "write_png_frames",
]
