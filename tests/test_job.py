"""The job as one value: its identity and default id, its job.json config section written and read back
(old files included), and its one manifest row, which ``miga eval OUT`` keeps whole."""

from __future__ import annotations

import json

from miga_ray.config import EvaluationSettings, load_config
from miga_ray.evaluation.job import evaluate_run
from miga_ray.job import JobSpec, StoredJob, manifest_row
from miga_ray.models.toy_world import parse_prompt, render_clip
from miga_ray.storage import (
    JobLayout,
    JobRecord,
    LocalStore,
    ManifestRow,
    SegmentWriter,
    read_manifest,
    update_manifest,
    write_job,
)
from miga_ray.storage.layout import sums_text

PROMPT = "a red circle moving over sand"
STORY = [{"at": 0, "prompt": PROMPT}, {"at": 6, "prompt": "a blue circle moving over sand"}]


def test_the_identity_and_default_id_are_those_earlier_versions_gave():
    spec = JobSpec(PROMPT, load_config(None, [], frames=121))
    assert spec.default_id() == "a-red-circle-moving-over-sand-7978b9cceb34"  # as earlier versions named it (jobs on disk keep their ids)
    stored = StoredJob.read(spec.config_section())
    assert (stored.prompt, stored.seed, stored.frames, stored.identity) == (PROMPT, spec.cfg.seed, 121, spec.identity_hash)
    assert spec.accepts(stored) and stored.story is None and stored.cfg == spec.cfg
    other = JobSpec(PROMPT, load_config(None, [], frames=121, seed=spec.cfg.seed + 1))
    assert not other.accepts(stored) and any(d.startswith("seed:") for d in other.differences(stored))


def test_an_old_or_foreign_job_json_still_loads():
    old = JobRecord.from_json(json.dumps({  # an early job.json: no identity, no start, and a field this version dropped
        "job_id": "old", "status": "done", "frames_done": 9, "frames_total": 9, "retired_field": 1,
        "config": {"prompt": PROMPT, "render": {"seed": 3, "frames": 9, "story": None}},
    }).encode())  # fmt: skip
    stored = StoredJob.of(old)
    assert (stored.prompt, stored.seed, stored.frames, stored.identity, stored.start, stored.story) == (PROMPT, 3, 9, None, None, None)
    assert not JobSpec(PROMPT, load_config(None, [], frames=9, seed=3)).accepts(stored), "no identity: never taken for this job"
    broken = StoredJob.read({"prompt": 7, "render": "x", "start": [1]})
    assert (broken.prompt, broken.settings, broken.start, broken.extension()) == (None, {}, None, None)
    row = manifest_row("old", broken, "done", {}, {}, fallback=ManifestRow("old", "from the batch", 5, 9, "done", story="[]"))
    assert (row.prompt, row.seed, row.frames, row.story) == ("from the batch", 5, 9, "[]")


def test_eval_of_a_run_keeps_a_story_job_s_manifest_row(tmp_path):
    cfg = load_config(None, [], story={"parts": STORY}, frames=12)
    spec = JobSpec(cfg.job_prompt(None), cfg)
    store = LocalStore(tmp_path / "run")
    write_job(store, JobRecord("story", "done", 12, 12, spec.config_section()))
    video = SegmentWriter(store, "story", 8, 64, 64)  # a done job's video and its checksums, which eval checks
    video.write(render_clip(parse_prompt(PROMPT), 12, 64, 64, seed=1))
    video.finish()
    store.put_bytes(JobLayout("story").video_sums, sums_text(video.sums()))
    batch_row = manifest_row("story", StoredJob.read(spec.config_section()), "done", {}, {"cluster": {"attempts": 1}})
    assert batch_row.story == cfg.story_json(), "a batch's row, from the spec itself, has the story too"
    update_manifest(store, [batch_row])
    assert [r.outcome for r in evaluate_run(store, EvaluationSettings())] == ["evaluated"]
    (row,) = read_manifest(store)
    assert json.loads(row.story) == STORY and row.story == cfg.story_json(), "miga eval OUT rewrites the story column as it was"
    assert (row.prompt, row.seed, row.frames) == (batch_row.prompt, batch_row.seed, batch_row.frames) == (spec.prompt, cfg.seed, 12)
    assert row.metrics["cluster"] == {"attempts": 1} and "evaluation" in row.metrics
