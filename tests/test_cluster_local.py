"""The Ray pipeline on one local Ray instance (loopback, token auth, custom `miga_gpu` resource):
longest-first batches with progress and each job evaluated by its worker, the batch's gallery page in
headless Chromium, a killed worker's job resumed elsewhere, a failed job retried on another worker from
its checkpoint, reflection candidates fanned out to a peer with identical output, and `miga batch` end
to end on S3 (SeaweedFS) with skip and resume on a re-run."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import ray
import torch
from typer.testing import CliRunner

from browser import card_ids, chromium_page, play_card
from miga_ray.cli import app
from miga_ray.cluster.batch import BatchDriver, introduce
from miga_ray.cluster.jobs import BatchJob
from miga_ray.cluster.report import write_manifest
from miga_ray.cluster.worker import CONCURRENCY_GROUPS, RenderWorker, actor_options
from miga_ray.config import load_config
from miga_ray.gallery import GALLERY, write_gallery
from miga_ray.storage import LocalStore, open_store, read_job, read_manifest
from miga_ray.storage.quality import EVALUATION, quality_values
from ray_helpers import wait_ready
from toy_model import TOY, toy_latents

BASE = ["model.device=cpu", f"model.name={TOY}", "sampler.num_levels=16", "sampler.miga.stage2_levels=3",
        "sampler.miga.reflect_after=4", "checkpoint.every_latents=2", "video.fps=8"]  # fmt: skip
PROMPT = "a red circle moving over sand"
runner = CliRunner()


def small_config(*overrides: str, frames: int = 29, seed: int = 0):
    return load_config(None, BASE + list(overrides), frames=frames, seed=seed)


def ray_token() -> str:
    """One token per test process: Ray's C++ side caches the token it first reads."""
    return os.environ.setdefault("MIGA_TEST_RAY_TOKEN", secrets.token_hex(32))


class FlakyWorker(RenderWorker):
    """A worker that crashes (an exception, not a dead process) once a fresh `flaky-*` job has a checkpoint,
    and takes its time over `slow-*` jobs past that point so the driver sees them mid-run on any machine."""

    def render(self, job, out):
        self._fresh = read_job(open_store(out), job.id) is None
        return super().render(job, out)

    def _on_progress(self, p):
        super()._on_progress(p)
        if p.job_id.startswith("flaky") and self._fresh and p.frames_done >= 13:
            raise RuntimeError(f"injected failure in {p.job_id} at frame {p.frames_done}")
        if p.job_id.startswith("slow") and p.frames_done >= 13:
            time.sleep(0.5)

    @ray.method(concurrency_group="peer")
    def candidates(self, cfg, prompt, requests):
        out = super().candidates(cfg, prompt, requests)
        self.__dict__.setdefault("served_log", []).append((prompt, list(requests), out))
        return out

    @ray.method(concurrency_group="info")
    def served(self):
        """Every candidate request this worker grew for a peer, with its results."""
        return self.__dict__.get("served_log", [])

    @ray.method(concurrency_group="info")
    def grow_locally(self, cfg, prompt, requests):
        """The same requests grown by this worker's own path for its own job's candidates."""
        return [t.cpu() for t in self._local_candidates(cfg, prompt)(requests)]


@pytest.fixture(scope="module")
def cluster(seaweedfs, tmp_path_factory):
    """A local Ray with 4 `miga_gpu`, the S3 credentials in every worker's environment, shut down after."""
    temp = tempfile.mkdtemp(prefix="/tmp/mr")  # short: Ray's socket paths must fit in 107 bytes
    os.makedirs(os.path.join(temp, "ray"))
    env = {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TMPDIR": temp,  # Ray's address file goes here, not into a /tmp/ray shared with others
        "RAY_AUTH_TOKEN": ray_token(),
        "AWS_ACCESS_KEY_ID": seaweedfs.access_key,
        "AWS_SECRET_ACCESS_KEY": seaweedfs.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": seaweedfs.endpoint,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_AUTH_MODE", raising=False)  # unset: ray.init turns token auth on (and tells the C++ config)
        for k, v in env.items():
            mp.setenv(k, v)
        try:
            ray.init(num_cpus=2, resources={"miga_gpu": 4}, include_dashboard=False, object_store_memory=100 * 2**20,
                     _node_ip_address="127.0.0.1", _temp_dir=temp, logging_level="WARNING")  # fmt: skip
            yield {"s3": f"s3://{seaweedfs.bucket}/cluster-{uuid.uuid4().hex[:8]}", "tmp": tmp_path_factory.mktemp("cluster")}
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def workers(cluster):
    """Two flaky-capable workers holding one `miga_gpu` each, introduced to each other."""
    cls = ray.remote(concurrency_groups=CONCURRENCY_GROUPS)(FlakyWorker)
    handles = [cls.options(**actor_options(num_cpus=0, resources={"miga_gpu": 1})).remote(small_config(), i, 2, 1) for i in range(2)]
    introduce(handles)
    ray.get([h.ready.remote() for h in handles])
    yield handles
    for h in handles:
        ray.kill(h)


def latents(store_root: Path | str, job_id: str) -> list[bytes]:
    store = open_store(str(store_root))
    keys = store.list(f"{job_id}/latents/")
    assert keys, f"no latents for {job_id}"
    return [store.get_bytes(k) for k in keys]


@pytest.fixture(scope="module")
def reference(cluster, workers):
    """Three jobs of different lengths rendered uninterrupted; the events the driver reported."""
    out = cluster["tmp"] / "reference"
    jobs = [BatchJob("short", PROMPT, small_config(frames=13), 1), BatchJob("long", PROMPT, small_config(), 2),
            BatchJob("mid", "a blue circle moving over grass", small_config(frames=21, seed=4), 3)]  # fmt: skip
    events = []
    result = BatchDriver(workers, str(out), on_event=events.append, poll_s=0.3).run(jobs)
    write_manifest(LocalStore(out), result)
    return out, result, events


def test_batch_runs_longest_first_reports_progress_and_writes_the_manifest(reference):
    out, result, events = reference
    starts = [e["job_id"] for e in events if e["event"] == "start"]
    assert starts[:2] == ["long", "mid"] and starts[2] == "short"
    assert all(s.outcome.status == "done" and not s.outcome.skipped for s in result.states)
    assert {s.outcome.worker for s in result.states} == {0, 1}, "both workers rendered"
    progress = [e for e in events if e["event"] == "progress" and e["job_id"] == "long"]
    assert progress and max(e["frames_done"] for e in progress) > 0 and progress[-1]["frames_total"] == 29
    rows = {r.id: r for r in read_manifest(LocalStore(out))}
    assert set(rows) == {"short", "long", "mid"} and rows["long"].frames == 29 and rows["mid"].seed == 4
    assert all(r.status == "done" and r.metrics["cluster"]["attempts"] == 1 for r in rows.values())
    assert len(latents(out, "long")) == toy_latents(29)
    assert read_job(LocalStore(out), "long").status == "done"
    evaluated = {e["job_id"]: e["worker"] for e in events if e["event"] == "evaluated"}
    assert evaluated == {s.job.id: s.outcome.worker for s in result.states}, "each job evaluated once, by the worker that rendered it"
    for row in rows.values():  # the numbers are in each job.json and in the manifest's columns
        assert row.metrics[EVALUATION] == read_job(LocalStore(out), row.id).metrics[EVALUATION]
        assert quality_values(row.metrics)["overall"] is not None and row.timings["evaluate"] > 0


def test_the_gallery_of_a_batch_in_chromium_sorts_by_a_metric_and_plays_a_video(reference):
    out, result, _ = reference
    write_gallery(LocalStore(out))
    overall = {s.job.id: quality_values(s.outcome.metrics)["overall"] for s in result.states}
    with chromium_page() as page:
        page.goto((out / GALLERY).as_uri())
        ascending = card_ids(page)
        assert sorted(ascending) == ["long", "mid", "short"] and ascending == sorted(overall, key=overall.get)
        page.select_option("#sort", "frames")
        assert card_ids(page) == ["short", "mid", "long"]
        page.click("#dir")
        assert card_ids(page) == ["long", "mid", "short"]
        assert play_card(page, "mid") > 0.2


def kill_when(workers, job_id: str, frames: int, killed: list):
    """An event handler that kills (with restart) the worker rendering ``job_id`` once it passes ``frames``."""

    def on_event(e):
        if e["event"] == "progress" and e["job_id"] == job_id and e["frames_done"] >= frames and not killed:
            killed.append(e["worker"])
            ray.kill(workers[e["worker"]], no_restart=False)

    return on_event


def test_a_killed_worker_s_job_resumes_on_the_other_worker_with_identical_latents(cluster, workers, reference):
    out = cluster["tmp"] / "killed"
    killed: list[int] = []
    result = BatchDriver(workers, str(out), on_event=kill_when(workers, "slow-long", 13, killed), poll_s=0.2).run(
        [BatchJob("slow-long", PROMPT, small_config(), 2)]
    )
    (state,) = result.states
    assert killed and state.attempts == 2 and state.failed_on == {killed[0]}
    assert "Actor" in state.errors[0]
    assert state.outcome.status == "done" and state.outcome.worker != killed[0]
    assert state.outcome.resumed_from is not None and state.outcome.resumed_from > 0
    assert latents(out, "slow-long") == latents(reference[0], "long")
    assert [i.index for i in wait_ready(workers)] == [0, 1]  # Ray restarted the killed actor


def test_a_failed_job_is_retried_on_another_worker_from_its_checkpoint(cluster, workers, reference):
    out = cluster["s3"] + "/retry"
    events = []
    result = BatchDriver(workers, out, on_event=events.append, poll_s=0.3).run([BatchJob("flaky-long", PROMPT, small_config(), 2)])
    (state,) = result.states
    assert state.attempts == 2 and "injected failure" in state.errors[0], state.errors
    first = next(e["worker"] for e in events if e["event"] == "retry")
    assert state.outcome.status == "done" and state.outcome.worker != first
    assert state.outcome.resumed_from is not None and state.outcome.resumed_from > 0
    assert latents(out, "flaky-long") == latents(reference[0], "long")


def test_reflection_candidates_fan_out_to_a_busy_peer_with_identical_output(cluster, workers):
    cfg = small_config("sampler.miga.reflect_delta=0", "sampler.miga.reflect_during=always", frames=41)
    job, other = BatchJob("reflect", PROMPT, cfg, 1), BatchJob("other", "a blue circle moving over grass", cfg, 2)
    w0, w1 = workers
    ray.get(w0.set_peers.remote([]))  # alone: every candidate grows on w0
    try:
        alone = ray.get(w0.render.remote(job, str(cluster["tmp"] / "alone")))
    finally:
        introduce(workers)
    before = ray.get([w.get_stats.remote() for w in workers])
    both = str(cluster["tmp"] / "both")  # now each worker renders its own job and grows the other's candidates
    fanned, _ = ray.get([w0.render.remote(job, both), w1.render.remote(other, both)])
    after = ray.get([w.get_stats.remote() for w in workers])
    reflections = fanned.metrics["model_calls"]["reflections"]
    assert reflections.get("triggered", 0) >= 2 and reflections.get("accepted", 0) >= 1, reflections
    assert alone.metrics["model_calls"]["reflections"] == reflections
    assert after[1]["served_requests"] - before[1]["served_requests"] >= reflections["triggered"]  # one candidate per reflection
    assert after[0]["sent_requests"] - before[0]["sent_requests"] >= reflections["triggered"]
    for a, b in zip(before, after):  # each worker served its peer while rendering its own job
        assert b["served_while_rendering"] > a["served_while_rendering"], (before, after)
    assert latents(both, "reflect") == latents(cluster["tmp"] / "alone", "reflect")
    served = [(reqs, out) for prompt, reqs, out in ray.get(w1.served.remote()) if prompt == PROMPT]
    assert served
    for reqs, out in served:  # the peer's candidates are bit-identical to growing them on the requester
        mine = ray.get(w0.grow_locally.remote(cfg, PROMPT, reqs))
        assert [r.candidate for r in reqs] == [2] and all(torch.equal(a, b) for a, b in zip(mine, out, strict=True))


def test_miga_batch_on_s3_resumes_a_partial_job_then_skips_everything(cluster, workers, reference, tmp_path):
    out = cluster["s3"] + "/cli"
    partial = BatchDriver(workers, out, max_attempts=1, poll_s=0.3).run([BatchJob("flaky-1", PROMPT, small_config(), 1)])
    assert partial.states[0].outcome is None and read_job(open_store(out), "flaky-1").status == "failed"
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(f"id,prompt,frames,seed\nflaky-1,{PROMPT},29,0\nsecond,a blue circle moving over grass,13,4\n")
    args = ["batch", str(prompts), "--out", out, "--workers", "2", "--resource", "miga_gpu", *sum((["--set", s] for s in BASE), [])]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 jobs on 2 workers: 2 rendered (1 resumed, 0 retried), 0 already done, 0 failed" in result.output
    assert f"{out}/manifest.parquet" in result.output
    rows = {r.id: r for r in read_manifest(open_store(out))}
    assert rows["flaky-1"].status == "done" and rows["flaky-1"].metrics["cluster"]["resumed_from"] > 0
    assert rows["second"].frames == 13 and rows["second"].seed == 4
    assert latents(out, "flaky-1") == latents(reference[0], "long")
    assert all(quality_values(r.metrics)["overall"] is not None for r in rows.values()), "evaluated by the workers"
    page = open_store(out).get_bytes("index.html").decode()
    assert f"{out}/index.html" in result.output and '"video": "second/video.mp4"' in page and '"status": "done"' in page
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "0 rendered (0 resumed, 0 retried), 2 already done, 0 failed" in again.output, again.output
    status = runner.invoke(app, ["status", out, "--json"])
    assert status.exit_code == 0 and {j["job_id"]: j["status"] for j in json.loads(status.stdout)} == {"flaky-1": "done", "second": "done"}


def test_a_story_job_renders_on_a_worker_and_the_manifest_shows_its_story(cluster, workers):
    out = cluster["tmp"] / "story"
    parts = [{"at": 0, "prompt": PROMPT}, {"at": 7, "prompt": "a blue circle moving over sand"}]
    cfg = load_config(None, BASE, story={"parts": parts}, frames=13)
    result = BatchDriver(workers, str(out), poll_s=0.3).run([BatchJob("told", cfg.job_prompt(None), cfg, 1)])
    write_manifest(LocalStore(out), result)
    (row,) = read_manifest(LocalStore(out))
    assert row.status == "done" and json.loads(row.story) == parts
    assert row.prompt == f"{PROMPT} -> a blue circle moving over sand"
    assert read_job(LocalStore(out), "told").config["render"]["story"]["parts"] == parts
