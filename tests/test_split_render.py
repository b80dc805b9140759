"""One render split over Ray workers (issue 25) on a local Ray: the same video as one worker, bit for bit
(``latents.sha256``), for FIFO, MIGA with reflection in the fill and always, a story, an init video and an
extension, on 2 and 3 workers; a checkpoint made on 2 workers resumes on 1 and on 3; a worker killed
mid-render; and ``miga render --workers`` on bad input."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import ray
from typer.testing import CliRunner

from miga_ray.cli import app
from miga_ray.cluster.run import run_batch
from miga_ray.cluster.split import splitter
from miga_ray.cluster.worker import RemoteWorker, actor_options
from miga_ray.config import load_config, load_story
from miga_ray.continuation import Extension, InitVideo
from miga_ray.engines import load_for
from miga_ray.render import JobRun
from miga_ray.storage import LocalStore, read_job
from miga_ray.storage.clips import probe_clip
from ray_helpers import wait_ready
from test_cluster_local import ray_token
from test_continuation import clip_file  # noqa: F401 - a fixture
from toy_model import TOY

BASE = ["model.device=cpu", f"model.name={TOY}", "sampler.num_levels=16", "sampler.miga.stage2_levels=3", "sampler.miga.reflect_after=4",
        "checkpoint.every_latents=2", "video.fps=8", "evaluation.enabled=false"]  # fmt: skip
PROMPT = "a red circle moving over sand"
STORY = [{"at": 0, "prompt": PROMPT}, {"at": 10, "prompt": "a blue circle moving over grass"}]


def config(*overrides: str, frames: int = 21, story: list | None = None):
    return load_config(None, BASE + list(overrides), frames=frames, seed=1, story=load_story_list(story) if story else None)


def load_story_list(parts: list) -> object:
    path = Path(tempfile.mkdtemp()) / "story.json"
    path.write_text(json.dumps(parts))
    return load_story(path)


VARIANTS = {
    "fifo": {"overrides": ("sampler.kind=fifo",)},
    "miga-fill": {"overrides": ("sampler.kind=miga", "sampler.miga.reflect_delta=0"), "frames": 29},
    "miga-always": {"overrides": ("sampler.kind=miga", "sampler.miga.reflect_during=always", "sampler.miga.reflect_delta=0"), "frames": 29},
    "story": {"overrides": ("sampler.kind=miga",), "story": STORY},
}


@pytest.fixture(scope="module")
def cluster():
    """A local Ray on loopback and three toy-model workers of one thread each."""
    temp = tempfile.mkdtemp(prefix="/tmp/ms")  # short: Ray's socket paths must fit in 107 bytes
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_AUTH_MODE", raising=False)
        for k, v in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": temp, "RAY_AUTH_TOKEN": ray_token(),
                     "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}.items():  # fmt: skip
            mp.setenv(k, v)
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, _node_ip_address="127.0.0.1", _temp_dir=temp,
                 logging_level="WARNING")  # fmt: skip
        try:
            cfg = config()
            workers = [RemoteWorker.options(**actor_options(num_cpus=0)).remote(cfg, i, 0, 1) for i in range(3)]
            ray.get([w.ready.remote() for w in workers])
            yield {"workers": workers, "model": load_for(cfg)}
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


def render(out: Path, cfg, model, workers=(), start=None, on_progress=None, job_id=None, lookahead=None):
    """A JobRun into ``out``, its calls on ``workers`` (none: in this process, as ``miga render``)."""
    prompt = cfg.job_prompt(None if cfg.story else PROMPT)
    split = splitter(list(workers), ray.put((cfg, prompt)), lookahead) if workers else None
    return JobRun(LocalStore(out), prompt, cfg, model, job_id=job_id, start=start, split=split).run(on_progress)


def sums(out: Path, job_id: str) -> bytes:
    return (out / job_id / "latents.sha256").read_bytes()


@pytest.fixture(scope="module")
def one_worker(cluster, tmp_path_factory):
    """``latents.sha256`` and record of a render in this process (as ``miga render`` without --workers), made once per config."""
    made: dict[str, tuple[bytes, object]] = {}

    def get(cfg):
        key = cfg.model_dump_json()
        if key not in made:
            out = tmp_path_factory.mktemp("one")
            result = render(out, cfg, cluster["model"])
            made[key] = (sums(out, result.job_id), result.record)
        return made[key]

    return get


@pytest.mark.parametrize("name,n", [("fifo", 2), ("fifo", 3), ("miga-fill", 3), ("miga-always", 2), ("story", 3)])
def test_a_split_render_is_the_one_worker_video(cluster, one_worker, tmp_path, name, n):
    v = VARIANTS[name]
    cfg = config(*v["overrides"], frames=v.get("frames", 21), story=v.get("story"))
    one_sums, one = one_worker(cfg)
    split = render(tmp_path / "split", cfg, cluster["model"], cluster["workers"][:n])
    assert split.job_id == one.job_id  # the number of workers is not part of the job's identity
    assert sums(tmp_path / "split", split.job_id) == one_sums
    calls = split.record.metrics["model_calls"]
    assert calls == one.metrics["model_calls"]
    assert split.record.metrics["split"] == {"workers": n, "live": n, "calls_in_flight": 0, "calls_done": sum(calls["calls"].values()),
                                             "calls_retried": 0}  # fmt: skip
    status = CliRunner().invoke(app, ["status", str(tmp_path / "split" / split.job_id)])
    assert f"split over {n} workers ({n} live): 0 calls in flight" in status.output
    if name.startswith("miga"):
        assert calls["reflections"]["accepted"] > 0 and calls["calls"]["reflect"] > 0  # candidates were grown and taken


def test_an_init_video_and_an_extension_split_are_the_one_worker_video(cluster, tmp_path, clip_file):  # noqa: F811
    model, workers = cluster["model"], cluster["workers"]
    cfg = config("sampler.kind=miga", frames=21)
    start = InitVideo(probe_clip(clip_file, cfg.frames))
    one = render(tmp_path / "one", cfg, model, start=start)
    two = render(tmp_path / "two", cfg, model, workers[:2], start=start)
    assert sums(tmp_path / "two", two.job_id) == sums(tmp_path / "one", one.job_id)
    short = config("sampler.kind=fifo", frames=13)
    base = render(tmp_path / "a", short, model)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    identity = read_job(LocalStore(tmp_path / "a"), base.job_id).config["identity"]
    longer = config("sampler.kind=fifo", frames=25)
    render(tmp_path / "a", longer, model, start=Extension(identity, 13), job_id=base.job_id)
    render(tmp_path / "b", longer, model, workers, start=Extension(identity, 13), job_id=base.job_id)
    assert sums(tmp_path / "b", base.job_id) == sums(tmp_path / "a", base.job_id)


class Stop(Exception):
    pass


def test_a_checkpoint_made_on_2_workers_resumes_on_1_and_on_3_and_a_killed_worker_changes_nothing(cluster, one_worker, tmp_path):
    model, workers = cluster["model"], cluster["workers"]
    cfg = config("sampler.kind=fifo", frames=29)  # FIFO emits a latent per iteration: checkpoints come early
    whole = render(tmp_path / "whole", cfg, model)

    def stop_once_saved(out: Path):
        def on_progress(p):
            if (out / whole.job_id / "state" / "LATEST.json").exists():
                raise Stop(p.frames_done)

        return on_progress

    for resume_on in (1, 3):
        out = tmp_path / f"on{resume_on}"
        with pytest.raises(Stop):  # the driver stops: its workers were still running calls ahead of the checkpoint
            render(out, cfg, model, workers[:2], on_progress=stop_once_saved(out), lookahead=12)
        result = render(out, cfg, model, workers[:resume_on] if resume_on > 1 else ())
        assert result.resumed_from is not None and 0 < result.resumed_from < 29
        assert sums(out, whole.job_id) == sums(tmp_path / "whole", whole.job_id)

    killed = []

    def kill_one(p):
        if p.work_done >= 40 and not killed:
            ray.kill(workers[1], no_restart=False)  # Ray restarts it; its running call runs again elsewhere
            killed.append(p.work_done)

    miga = config(*VARIANTS["miga-fill"]["overrides"], frames=29)
    one_sums, one = one_worker(miga)
    out = tmp_path / "killed"
    render(out, miga, model, workers[:2], on_progress=kill_one)
    assert killed and sums(out, one.job_id) == one_sums
    wait_ready(workers)


def test_a_batch_splits_each_job_over_a_team_of_workers(cluster, one_worker, tmp_path):
    cfg = config("sampler.kind=fifo", frames=21)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "team", "prompt": PROMPT}) + "\n")
    result = run_batch(prompts, cfg, str(tmp_path / "batch"), workers=2, per_job=2)
    (state,) = result.states
    assert state.outcome.status == "done" and result.workers == 1  # one team of two takes the jobs
    assert sums(tmp_path / "batch", "team") == one_worker(cfg)[0]
    assert read_job(LocalStore(tmp_path / "batch"), "team").metrics["split"]["workers"] == 2


@pytest.mark.parametrize("args,flag", [(["render", PROMPT, "--workers", "0"], "--workers"), (["render", PROMPT, "--workers", "-2"], "--workers"),
                                       (["batch", "prompts.jsonl", "--workers", "1", "--workers-per-job", "2"], "--workers-per-job"),
                                       (["batch", "prompts.jsonl", "--workers-per-job", "0"], "--workers-per-job")])  # fmt: skip
def test_bad_worker_counts_exit_2_naming_the_flag_and_write_nothing(tmp_path, args, flag):
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and flag in result.output
    assert not (tmp_path / "out").exists()


def test_more_workers_than_the_cluster_can_place_exits_2_naming_the_flag_and_writes_nothing(cluster, tmp_path):
    result = CliRunner().invoke(app, ["render", PROMPT, "--out", str(tmp_path / "out"), "--workers", "9", "--set", "model.device=cpu"])
    assert result.exit_code == 2 and "--workers 9" in result.output and "can place 4 worker(s)" in result.output  # 2 CPUs, 0.5 each
    assert not (tmp_path / "out").exists() and ray.is_initialized()  # the test's Ray is joined, not shut down
