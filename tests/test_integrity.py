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
from miga_ray.storage import JobLayout, LocalStore, read_job, read_manifest, video_problem
from miga_ray.storage.segments import count_frames
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
    assert listing.exit_code == 1 and "good: done" in listing.output and "bad: problem" in listing.output, listing.output
    evaluated = runner.invoke(app, ["eval", str(out)])
    assert evaluated.exit_code == 1 and "bad: PROBLEM (bad/job.json is corrupt" in evaluated.output and no_traceback(evaluated), evaluated.output
    assert [row.id for row in read_manifest(LocalStore(out))] == ["good"] and (out / "index.html").exists()
    gallery = runner.invoke(app, ["gallery", str(out)])
    assert gallery.exit_code == 0 and "bad/job.json is corrupt" in (out / "index.html").read_text(), gallery.output
    assert read_job(LocalStore(out), "good").status == "done"


STALE_WRITER = """
import json, sys
from miga_ray.config import load_config
from miga_ray.engines import load_for
from miga_ray.render import JobRun
from miga_ray.storage import LocalStore
cfg = load_config(None, json.loads(sys.argv[2]), frames=41)
JobRun(LocalStore(sys.argv[1]), sys.argv[3], cfg, load_for(cfg), job_id="j", lease_ttl_s=2.0).run()
"""


def job_files(job: Path) -> dict[str, bytes]:
    """Every object of a job but its lease (temp files of unfinished writes are not objects)."""
    return {str(p.relative_to(job)): p.read_bytes() for p in sorted(job.rglob("*"))
            if p.is_file() and "lease" not in p.parts and not p.name.startswith(".tmp-")}  # fmt: skip


def test_a_render_stopped_past_its_lease_expiry_writes_nothing_after_a_takeover(tmp_path):
    """SIGSTOP a render past its lease's expiry, take the job over, SIGCONT: the stale writer stops without a write."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from miga_ray.storage.lease import Lease

    out = tmp_path / "out"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", STALE_WRITER, str(out), json.dumps(SETTINGS), PROMPT], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / "j" / "latents" / "000003.safetensors").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
            time.sleep(0.02)
        proc.send_signal(signal.SIGSTOP)
        (lease_file,) = (out / "j" / "lease").glob("*.json")
        time.sleep(max(0.0, json.loads(lease_file.read_text())["expires"] - time.time()) + 0.3)
        takeover = Lease(LocalStore(out), "j")
        takeover.acquire()  # stale by its expiry
        before = job_files(out / "j")
        proc.send_signal(signal.SIGCONT)
        output = proc.communicate(timeout=120)[0].decode()
        assert proc.returncode != 0 and "LeaseLost: job j: its lease" in output, output[-3000:]  # expired, or taken over: whichever it sees first
        assert job_files(out / "j") == before, "the stopped writer wrote after losing its lease"
        takeover.release()
    finally:
        proc.kill()
        proc.wait()


def test_eval_of_a_run_never_overwrites_a_job_another_process_writes(done_run, tmp_path, monkeypatch):
    """While another process holds the job's lease, or writes job.json during the evaluation, eval leaves it alone."""
    from miga_ray.evaluation import job as evaluation
    from miga_ray.storage.lease import Lease

    out = tmp_path / "out"
    shutil.copytree(done_run, out)
    record = (out / "good" / "job.json").read_bytes()
    holder = Lease(LocalStore(out), "good")
    holder.acquire()
    try:
        result = runner.invoke(app, ["eval", str(out)])
        assert result.exit_code == 0 and "good: being written, skipped (job good is being written by" in text_of(result), result.output
        assert (out / "good" / "job.json").read_bytes() == record
    finally:
        holder.release()

    concurrent = json.loads(record) | {"status": "running", "frames_done": 21}  # an extension began meanwhile
    real_report = evaluation.source_report

    def report_while_another_writes(*args, **kwargs):
        (out / "good" / "job.json").write_text(json.dumps(concurrent))
        return real_report(*args, **kwargs)

    monkeypatch.setattr(evaluation, "source_report", report_while_another_writes)
    result = runner.invoke(app, ["eval", str(out)])
    assert "good: being written, skipped (its job.json changed while it was evaluated" in text_of(result), result.output
    assert json.loads((out / "good" / "job.json").read_text()) == concurrent


def flip(path: Path, count: int = 64) -> None:
    """Invert ``count`` bytes in the middle of a file: its length and, for these videos, its frame count stay."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + count] = bytes(b ^ 0xFF for b in data[middle : middle + count])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("target", ["segments/00001.ts", "video.mp4"])
def test_flipped_bytes_that_keep_the_frame_count_are_found_by_status_eval_and_rebuilt_by_render(done_run, tmp_path, toy, target):
    from test_render import decoded_frames

    out = tmp_path / "out"
    shutil.copytree(done_run, out)
    reference = decoded_frames(out / "good" / "video.mp4")
    frames_before = count_frames((out / "good" / target).read_bytes())
    flip(out / "good" / target)
    assert count_frames((out / "good" / target).read_bytes()) == frames_before, "the damage keeps the frame count"
    named = f"{target} differs from the one written (sha256 mismatch)"
    for args in (["status", str(out / "good")], ["status", str(out)], ["eval", str(out / "good")], ["eval", str(out)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and named in text_of(result), (args, result.output)
    again = JobRun(LocalStore(out), PROMPT, config(21), toy, job_id="good").run()
    assert not again.skipped and again.record.status == "done"
    assert video_problem(LocalStore(out), JobLayout("good")) is None
    video = decoded_frames(out / "good" / "video.mp4")
    assert video.shape == reference.shape and abs(video.astype(int) - reference.astype(int)).mean() < 1.0
    assert runner.invoke(app, ["status", str(out / "good")]).exit_code == 0


def test_eval_of_a_run_names_a_done_job_whose_video_mp4_is_missing(done_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(done_run, out)
    record = json.loads((out / "good" / "job.json").read_text())
    record["metrics"]["evaluation"] = {"vbench": {"overall": 0.9}}  # evaluated when it was rendered
    (out / "good" / "job.json").write_text(json.dumps(record))
    (out / "good" / "video.mp4").unlink()
    result = runner.invoke(app, ["eval", str(out)])
    assert result.exit_code == 1 and "good: PROBLEM (video.mp4 is missing" in text_of(result), result.output


@pytest.mark.parametrize("target, named", [("latents/000010.safetensors", "latent 10 (good/latents/000010.safetensors) differs"),
                                           ("segments/00000.ts", "segments/00000.ts differs")])  # fmt: skip
def test_extend_of_a_damaged_job_writes_nothing_and_names_the_damage(done_run, tmp_path, target, named):
    out = tmp_path / "out"
    shutil.copytree(done_run, out)
    flip(out / "good" / target)
    before = job_files(out / "good")
    result = runner.invoke(app, ["extend", str(out / "good"), "--frames", "29"])
    assert result.exit_code == 1 and named in text_of(result) and "not extended" in text_of(result), result.output
    assert job_files(out / "good") == before and read_job(LocalStore(out), "good").status == "done"
