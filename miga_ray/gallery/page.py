"""The gallery page: one card per job of a run directory (contact sheet, prompt, status and progress,
frames, seconds, quality numbers, what is wrong), sortable and filterable, each card playing its video.

It is one static HTML file with its script and style inlined from this package (no server, no CDN),
written next to the jobs with relative links, so it opens from a local directory and from a bucket.
For a private bucket ``write_gallery(..., presign_s=...)`` writes a copy whose links are presigned
URLs. The page holds only fields chosen here (never a job's config), so it carries no credential.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import resources
from urllib.parse import quote

from ..job import StoredJob
from ..storage import JobProblem, ManifestRow, ObjectStore, S3Store, load_job, read_manifest, run_job_ids
from ..storage.layout import GALLERY, PRESIGNED_GALLERY, JobLayout
from ..storage.quality import QUALITY_COLUMNS, quality_values

MAX_PRESIGN_S = 7 * 24 * 3600  # the longest a SigV4 presigned URL may live


@dataclass
class Card:
    """What the page shows of one job; links are keys relative to the output directory."""

    id: str
    prompt: str = ""
    status: str = "problem"
    frames_done: int | None = None
    frames_total: int | None = None
    seconds: float | None = None
    problem: str | None = None
    sheet: str | None = None
    video: str | None = None
    playlist: str | None = None
    quality: dict[str, float | None] = field(default_factory=dict)


def _story_text(stored: StoredJob) -> str:
    """The prompt, or a story's parts as one line ("frame 0: ... | frame 40: ...")."""
    if stored.story:
        return " | ".join(f"frame {p.get('at', '?')}: {p.get('prompt', '')}" for p in stored.story)
    return stored.prompt or ""


def _card(store: ObjectStore, job_id: str, keys: set[str], problems: dict[str, str], row: ManifestRow | None) -> Card:
    """One job's card from its job.json and the objects it has; when job.json cannot be read, a card saying so
    (with what the manifest knows of the job)."""
    job = JobLayout(job_id)
    sheets = sorted(k for k in keys if k.startswith(job.sheet + "/"))
    card = Card(job_id, sheet=job.contact_sheet if job.contact_sheet in keys else (sheets[-1] if sheets else None))
    card.video = job.mp4 if job.mp4 in keys else None
    card.playlist = job.playlist if job.playlist in keys else None
    try:
        record = load_job(store, job_id)
    except JobProblem as exc:
        card.problem = _joined(exc, problems.get(job_id), row and row.error)
        if row is not None:
            card.prompt, card.status, card.frames_total, card.quality = (
                row.prompt,
                row.status,
                row.frames,
                quality_values(row.metrics),
            )
        return card
    card.prompt, card.status = _story_text(StoredJob.of(record)), record.status
    card.frames_done, card.frames_total = record.frames_done, record.frames_total
    card.seconds = sum(v for k, v in record.timings.items() if k != "evaluate" and isinstance(v, int | float)) or None
    card.quality = quality_values(record.metrics)
    wrong = [problems.get(job_id), record.metrics.get("evaluation_error"), record.error]
    if record.status == "done" and card.video is None:
        wrong.insert(0, "video.mp4 is missing")
    card.problem = _joined(*wrong)
    return card


def _joined(*problems: object) -> str | None:
    """The distinct problems in order, as one line (None if there are none)."""
    return "; ".join(dict.fromkeys(str(p) for p in problems if p)) or None


def gallery_cards(store: ObjectStore, problems: dict[str, str] | None = None) -> list[Card]:
    """Every job's card, in manifest order then by id; ``problems`` adds what a caller found wrong (e.g. a video
    that does not decode)."""
    keys, rows = set(store.list("")), {row.id: row for row in read_manifest(store)}
    return [_card(store, job_id, keys, problems or {}, rows.get(job_id)) for job_id in run_job_ids(store)]


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


LINKS = ("sheet", "video", "playlist")


def relative_link(key: str) -> str:
    """A key as a relative URL: percent-encoded, so a directory name never becomes a scheme (``javascript:``), query or fragment."""
    return quote(key, safe="/")


def render_page(cards: list[Card], title: str, link: Callable[[str], str] = relative_link) -> str:
    """The whole page: cards as JSON data (each key turned into a URL by ``link``), the columns to sort and filter
    by, inlined style and script."""
    columns = {"id": "job id", "prompt": "prompt", "status": "status", "progress": "progress", "frames": "frames",
               "seconds": "seconds"} | {c: description for c, (_, description) in QUALITY_COLUMNS.items()}  # fmt: skip
    data = {"generated": datetime.now(UTC).isoformat(timespec="seconds"), "columns": columns, "quality": list(QUALITY_COLUMNS),
            "default_sort": "overall", "jobs": [asdict(c) | {n: link(k) for n in LINKS if (k := getattr(c, n))} for c in cards]}  # fmt: skip
    payload = json.dumps(data, sort_keys=True).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    parts = {
        "title": html.escape(title),
        "style": _asset("gallery.css"),
        "data": payload,
        "script": _asset("gallery.js"),
    }
    return re.sub(
        r"\{\{(\w+)\}\}", lambda m: parts[m.group(1)], _asset("gallery.html")
    )  # one pass: inserted text is never re-read


def write_gallery(store: ObjectStore, problems: dict[str, str] | None = None, presign_s: int | None = None) -> str:
    """Write ``index.html`` (relative links), or with ``presign_s`` the copy ``index.presigned.html`` whose links are
    presigned for that long (an S3 store only); return the key written."""
    cards = gallery_cards(store, problems)
    title = f"miga-ray gallery: {getattr(store, 'uri', '')}"
    if presign_s is None:
        store.put_bytes(GALLERY, render_page(cards, title).encode())
        return GALLERY
    if not isinstance(store, S3Store):
        raise ValueError("presigned links need an s3:// output; a local directory's gallery uses relative links")
    if not 1 <= presign_s <= MAX_PRESIGN_S:
        raise ValueError(f"presigned links must live 1 s to {MAX_PRESIGN_S // 3600} hours (got {presign_s} s)")
    store.put_bytes(PRESIGNED_GALLERY, render_page(cards, title, lambda key: store.presigned_url(key, presign_s)).encode())
    return PRESIGNED_GALLERY
