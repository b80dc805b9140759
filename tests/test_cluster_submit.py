"""`miga submit`: a tiny batch as a Ray Job on a local head with the dashboard's job server and token
authentication; the token is sent as a bearer header, a wrong one is refused."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile

import pytest
import ray
from typer.testing import CliRunner

from miga_ray.cli import app
from miga_ray.cluster.submit import TERMINAL, client_for
from miga_ray.storage import LocalStore, read_job, read_manifest
from miga_ray.storage.seaweed import free_ports
from toy_model import TOY

SETS = ["model.device=cpu", f"model.name={TOY}", "sampler.num_levels=16", "sampler.miga.stage2_levels=3",
        "sampler.miga.reflect_after=4", "checkpoint.every_latents=2", "video.fps=8"]  # fmt: skip
runner = CliRunner()


@pytest.fixture(scope="module")
def head():
    """A local Ray head with the dashboard (job server) on 127.0.0.1 and token auth; its address and token."""
    temp = tempfile.mkdtemp(prefix="/tmp/ms")  # short: Ray's socket paths must fit in 107 bytes
    os.makedirs(os.path.join(temp, "ray"))
    token = os.environ.setdefault("MIGA_TEST_RAY_TOKEN", secrets.token_hex(32))  # Ray caches the first token it reads
    (port,) = free_ports(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.setenv("RAY_TMPDIR", temp)
        mp.delenv("RAY_AUTH_MODE", raising=False)  # unset: ray.init turns token auth on (and tells the C++ config)
        mp.setenv("RAY_AUTH_TOKEN", token)
        try:
            ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port, object_store_memory=100 * 2**20,
                     _node_ip_address="127.0.0.1", _temp_dir=temp, logging_level="WARNING")  # fmt: skip
            yield f"http://127.0.0.1:{port}", token, mp
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


def test_submit_runs_a_batch_as_a_ray_job_and_follows_it_to_the_end(head, tmp_path):
    address, token, mp = head
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "sub-1", "prompt": "a red circle moving over sand", "frames": 13}) + "\n")
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    mp.delenv("RAY_AUTH_TOKEN")  # the token must come from --token-file here
    out = tmp_path / "out"
    args = ["submit", str(prompts), "--address", address, "--out", str(out), "--workers", "1", "--cpus", "1",
            "--submission-id", "miga-test-1", "--token-file", str(token_file), "--timeout", "420", *sum((["--set", s] for s in SETS), [])]  # fmt: skip
    result = runner.invoke(app, args)
    mp.setenv("RAY_AUTH_TOKEN", token)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "miga-test-1"
    assert "miga-test-1: SUCCEEDED" in result.stdout
    assert "1 jobs on 1 workers: 1 rendered" in result.output, "the job's log (the batch summary) was followed"
    assert read_job(LocalStore(out), "sub-1").status == "done"
    (row,) = read_manifest(LocalStore(out))
    assert row.id == "sub-1" and row.frames == 13 and row.status == "done"


def test_submit_with_a_wrong_token_is_refused(head, tmp_path):
    address, _, mp = head
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("id,prompt\na,a red circle moving over sand\n")
    mp.setenv("RAY_AUTH_TOKEN", "0" * 64)
    try:
        result = runner.invoke(app, ["submit", str(prompts), "--address", address, "--out", str(tmp_path / "out"), "--set", "model.device=cpu"])
    finally:
        mp.setenv("RAY_AUTH_TOKEN", head[1])
    assert result.exit_code == 1, result.output
    assert "403" in result.output or "nvalid" in result.output or "uthenticat" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_submit_stops_following_after_its_timeout_and_leaves_the_job_running(head, tmp_path):
    address, token, _ = head
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "slow-1", "prompt": "a red circle moving over sand", "frames": 200}) + "\n")
    args = ["submit", str(prompts), "--address", address, "--out", str(tmp_path / "out"), "--workers", "1", "--cpus", "1",
            "--submission-id", "miga-test-timeout", "--timeout", "1", *sum((["--set", s] for s in SETS), [])]  # fmt: skip
    result = runner.invoke(app, args)
    client = client_for(address, token)
    try:
        assert result.exit_code == 1, result.output
        assert "miga-test-timeout still" in result.output and "keeps running" in result.output, result.output
        assert client.get_job_status("miga-test-timeout") not in TERMINAL, "following stopped; the job did not"
    finally:
        client.stop_job("miga-test-timeout")
