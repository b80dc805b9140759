"""Integrity, second round (issue 27): content verified by checksums, a finished video never destroyed by a failed
extension, a writer that lost its lease fenced off, corrupt job records reported per job, on the shipped toy model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from miga_ray.cli import app
from miga_ray.config import load_config
from miga_ray.engines import load_for
from miga_ray.render import JobRun
from miga_ray.storage import LocalStore, read_job, read_manifest
from toy_model import TOY

runner = CliRunner()
PROMPT = "a red circle moving over sand"
SETTINGS = [f"model.name={TOY}", "model.device=cpu", "sampler.num_levels=16", "sampler.miga.stage2_levels=3",
            "sampler.miga.reflect_after=4", "checkpoint.every_latents=4", "video.fps=8"]  # fmt: skip
SMALL = [f"--set={s}" for s in SETTINGS]


@pytest.fixture(scope="module")
def toy():
    return load_for(load_config(None, ["model.device=cpu", f"model.name={TOY}"]))


def config(frames: int):
    return load_config(None, SETTINGS, frames=frames)


@pytest.fixture(scope="module")
def done_run(tmp_path_factory, toy) -> Path:
    """An output directory with one finished 21-frame job, ``good`` (two segments at 8 fps, evaluation not run)."""
    out = tmp_path_factory.mktemp("integrity") / "out"
    JobRun(LocalStore(out), PROMPT, config(21), toy, job_id="good").run()
    return out


def text_of(result) -> str:
    return " ".join(result.output.split())


def no_traceback(result) -> bool:
    return "Traceback" not in result.output and (result.exception is None or isinstance(result.exception, SystemExit))


BAD_RECORDS = {
    "not-json": '{"job_id": "bad", "status": ',
    "not-an-object": "[1, 2]",
    "config-null": {"config": None},
    "config-a-string": {"config": "a red circle"},
    "render-a-list": {"config": {"prompt": PROMPT, "render": [], "identity": "x"}},
}


@pytest.mark.parametrize("kind", BAD_RECORDS)
def test_a_corrupt_job_json_is_that_jobs_problem_named_with_what_to_do(done_run, tmp_path, kind):
    out = tmp_path / "out"
    shutil.copytree(done_run, out)
    shutil.copytree(out / "good", out / "bad")
    bad = BAD_RECORDS[kind]
    good_record = json.loads((out / "good" / "job.json").read_text())
    (out / "bad" / "job.json").write_text(bad if isinstance(bad, str) else json.dumps(good_record | {"job_id": "bad"} | bad))
    for args in (["render", PROMPT, "--job-id", "bad", "--out", str(out), "--frames", "21", *SMALL], ["status", str(out / "bad")],
                 ["extend", str(out / "bad"), "--frames", "25"]):  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and "bad/job.json is corrupt" in text_of(result) and "--restart" in text_of(result), (args[0], result.output)
        assert no_traceback(result), result.output
    listing = runner.invoke(app, ["status", str(out)])
    assert listing.exit_code == 0 and "good: done" in listing.output and "bad: problem" in listing.output, listing.output
    evaluated = runner.invoke(app, ["eval", str(out)])
    assert evaluated.exit_code == 1 and "bad: PROBLEM (bad/job.json is corrupt" in evaluated.output and no_traceback(evaluated), evaluated.output
    assert [row.id for row in read_manifest(LocalStore(out))] == ["good"] and (out / "index.html").exists()
    gallery = runner.invoke(app, ["gallery", str(out)])
    assert gallery.exit_code == 0 and "bad/job.json is corrupt" in (out / "index.html").read_text(), gallery.output
    assert read_job(LocalStore(out), "good").status == "done"
