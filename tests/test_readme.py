"""Every `miga` command of README.md runs, as written, through the installed ``miga`` console script.

Commands are read from README's code blocks and their text is never altered; what this machine
lacks comes from the environment, as it would on a real one:
- the hub id ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``: a tiny random-weights Wan pipeline of the real
  classes in an offline Hugging Face cache (``tests/hub_standin.py``, ``HF_HUB_OFFLINE=1``);
- ``s3://bucket/...``: SeaweedFS (the session's ``weed mini``) with a bucket of that name, reached
  through the standard AWS variables and ``AWS_ENDPOINT_URL``;
- ``--address auto``: a Ray head started here with ``ray start --head`` on 127.0.0.1 (token auth);
- ``export RAY_API_SERVER_ADDRESS=http://head:8265``: the same variable, set to that head's dashboard;
- ``configs/...``: each command runs in a fresh directory with a ``configs`` link to the repository's.

``test_every_miga_command_in_readme_is_run`` fails when a ``miga`` line appears in a code block that
no test runs (``RUN_BY``), or when a block gains or loses one.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hub_standin import HUB_ID, install_hub_standin
from miga_ray.storage import LocalStore, S3Store, read_manifest
from miga_ray.storage.seaweed import free_ports

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
TOUR, GPU, CLUSTER = "A one-minute tour", "Real Wan2.1 weights on a GPU", "Running on a Ray cluster with S3"
CONTINUE, STORIES = "Continuing a video", "Stories: several prompts over time"
RUN_BY = {  # (README section, n-th code block in it) -> the test that runs all its `miga` lines, and how many
    (TOUR, 0): ("test_readme_tour_runs_as_written", 6),
    (TOUR, 1): ("test_readme_config_override_runs_as_written", 1),
    (CONTINUE, 0): ("test_readme_continuation_runs_as_written", 2),
    (STORIES, 1): ("test_readme_story_render_runs_as_written", 1),
    (GPU, 0): ("test_readme_gpu_render_runs_as_written", 1),
    (CLUSTER, 0): ("test_readme_cluster_commands_run_as_written", 4),
}


def code_blocks() -> list[tuple[str, int, list[str]]]:
    """Every fenced code block of README (```bash or any other): its section (``## `` heading), its
    index among that section's blocks, and its lines."""
    blocks: list[tuple[str, int, list[str]]] = []
    section, lines = "", None
    for line in README.read_text().splitlines():
        if lines is not None:
            if line.startswith("```"):
                blocks.append((section, sum(s == section for s, _, _ in blocks), lines))
                lines = None
            else:
                lines.append(line)
        elif line.startswith("```"):
            lines = []
        elif line.startswith("## "):
            section = line[3:].strip()
    return blocks


def miga_lines(lines: list[str]) -> list[str]:
    return [line.strip() for line in lines if line.strip().startswith("miga ")]


def mentions_miga(line: str) -> bool:
    """Whether a line runs ``miga`` anywhere (after a prompt, an assignment, ``&&``, a pipe...)."""
    return re.search(r"(^|[\s;&|(`$])miga\s", line) is not None


def exported(lines: list[str]) -> dict[str, str]:
    """The ``export NAME=VALUE`` lines of a block."""
    pairs = [shlex.split(line, comments=True)[1] for line in lines if line.startswith("export ")]
    return dict(pair.split("=", 1) for pair in pairs)


def block(section: str, index: int = 0) -> list[str]:
    """The lines of a code block named in ``RUN_BY``."""
    (lines,) = [b for s, i, b in code_blocks() if (s, i) == (section, index)]
    return lines


def commands(section: str, index: int = 0) -> list[str]:
    """The `miga` lines of a code block, checked against the count ``RUN_BY`` gives for it."""
    found = miga_lines(block(section, index))
    assert len(found) == RUN_BY[section, index][1], f"README's block {section!r}/{index} changed: {found}"
    return found


def run(command: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """One README line through the installed ``miga``: its words as a shell splits them (comment dropped); exit 0."""
    miga = shutil.which("miga")
    assert miga, "the project must be installed (pip install -e .) so `miga` is on PATH"
    argv = shlex.split(command, comments=True)
    assert argv[0] == "miga"
    done = subprocess.run([miga, *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def workdir(tmp_path: Path) -> Path:
    """A fresh directory to run README commands in, with the repository's ``configs/`` in it."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "configs").symlink_to(REPO / "configs")
    return work


def option(command: str, name: str) -> str:
    argv = shlex.split(command, comments=True)
    return argv[argv.index(name) + 1]


def s3_target(command: str) -> tuple[str, str]:
    """The bucket and prefix of a command's ``--out s3://bucket/prefix``."""
    out = option(command, "--out")
    assert out.startswith("s3://"), command
    bucket, _, prefix = out.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


def empty_bucket(server, name: str):
    """The bucket ``name`` on the SeaweedFS server, created if needed and emptied; a boto3 client on it."""
    client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                          aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key)  # fmt: skip
    if name not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=name)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=obj["Key"])
    return client


def command_env(server, *extra: dict[str, str]) -> dict[str, str]:
    """This process's environment (the AWS chain set by ``s3_env``) plus the endpoint and ``extra``."""
    return {**os.environ, "AWS_ENDPOINT_URL": server.endpoint, **{k: v for e in extra for k, v in e.items()}}


def video_frames(data: bytes) -> tuple[int, set[tuple[int, int]]]:
    """Frames an H.264 video decodes to with PyAV, and their sizes (width, height)."""
    with av.open(io.BytesIO(data)) as container:
        sizes, count = set(), 0
        for frame in container.decode(video=0):
            count += 1
            sizes.add((frame.width, frame.height))
    return count, sizes


@pytest.fixture(scope="module")
def hub_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment under which the hub id resolves to the offline stand-in."""
    return install_hub_standin(tmp_path_factory.mktemp("hf-hub"))


def test_every_miga_command_in_readme_is_run():
    every = code_blocks()
    stray = [line for _, _, lines in every for line in lines if mentions_miga(line) and not line.strip().startswith("miga ")]
    assert not stray, f"README runs `miga` in lines that do not start with it, which no test picks up: {stray}"
    blocks = {(s, i): miga_lines(lines) for s, i, lines in every}
    with_miga = {key for key, found in blocks.items() if found}
    assert not with_miga - RUN_BY.keys(), f"`miga` lines in README that no test runs: {sorted(with_miga - RUN_BY.keys())}"
    for key, (test, count) in RUN_BY.items():
        assert key in with_miga, f"RUN_BY names a README block without `miga` lines: {key}"
        assert len(blocks[key]) == count, f"README block {key} has {len(blocks[key])} `miga` lines, {test} runs {count}"
        assert callable(globals().get(test)), f"{test} is not in this module"


def test_readme_tour_runs_as_written(tmp_path):
    outputs = [run(command, tmp_path).stdout for command in commands(TOUR)]
    first, again = outputs[0].strip(), outputs[1].strip()
    assert first == again and (tmp_path / first).is_file()
    assert json.loads(outputs[3])["status"] == "done"
    assert "subject_consistency" in json.loads(outputs[4])["vbench"]
    assert (tmp_path / "calls.jsonl").stat().st_size > 0
    assert "model calls per output latent" in outputs[5] and "zero-cost denoiser, toy (" in outputs[5], "timed on the preset asked for"


def test_readme_config_override_runs_as_written(tmp_path):
    (command,) = commands(TOUR, 1)
    work = workdir(tmp_path)
    video = run(command, work).stdout.strip()
    assert (work / video).is_file()
    job = json.loads((work / video).with_name("job.json").read_text())
    assert job["status"] == "done" and job["frames_done"] == 121
    assert job["config"]["render"]["sampler"]["kind"] == "fifo"
    assert job["config"]["render"]["sampler"]["fifo"]["lookahead"] is False, "the --set override reached the render"


def test_readme_continuation_runs_as_written(tmp_path):
    """The init video is a real H.264 file of a toy-world clip, where the command expects it."""
    from miga_ray.models.toy_world.render import render_clip
    from miga_ray.models.toy_world.world import parse_prompt
    from test_continuation import write_mp4

    render, extend = commands(CONTINUE)
    work = workdir(tmp_path)
    prompt = shlex.split(render)[2]
    write_mp4(work / option(render, "--init-video"), render_clip(parse_prompt(prompt), 21, 64, 64, seed=1))
    first = work / run(render, work).stdout.strip()
    job = json.loads(first.with_name("job.json").read_text())
    assert job["status"] == "done" and "init_video_sha256" in job["config"]["start"]
    assert run(extend, work).stdout.strip() == str(first.relative_to(work))
    job = json.loads(first.with_name("job.json").read_text())
    total = int(option(extend, "--frames"))
    assert job["status"] == "done" and job["frames_done"] == total and job["config"]["start"]["from_frames"] == int(option(render, "--frames"))
    assert video_frames(first.read_bytes())[0] == total


def test_readme_story_render_runs_as_written(tmp_path):
    (command,) = commands(STORIES, 1)
    work = workdir(tmp_path)
    (work / "story.yaml").write_text("\n".join(block(STORIES, 0)) + "\n")  # the story README shows
    video = run(command, work).stdout.strip()
    assert (work / video).is_file()
    job = json.loads((work / video).with_name("job.json").read_text())
    assert job["status"] == "done" and job["frames_done"] == 120
    assert [p["at"] for p in job["config"]["render"]["story"]["parts"]] == [0, 40, 80]


def test_readme_gpu_render_runs_as_written(tmp_path, s3_env, hub_env):
    (command,) = commands(GPU)
    bucket, prefix = s3_target(command)
    s3 = empty_bucket(s3_env, bucket)
    config = (REPO / option(command, "--config")).read_text()
    assert HUB_ID in config, "the stand-in must be the model the config names"
    video = run(command, workdir(tmp_path), command_env(s3_env, hub_env)).stdout.strip()
    assert video.startswith(f"s3://{bucket}/{prefix}/") and video.endswith("/video.mp4"), video
    key = video.removeprefix(f"s3://{bucket}/")
    frames, sizes = video_frames(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert frames == 1201 and sizes == {(832, 480)}
    job = json.loads(s3.get_object(Bucket=bucket, Key=key.replace("/video.mp4", "/job.json"))["Body"].read())
    assert job["status"] == "done" and job["frames_done"] == 1201
    assert job["config"]["render"]["model"]["name"] == HUB_ID


@contextmanager
def ray_head(env: dict[str, str], timeout_s: float = 180.0) -> Iterator[str]:
    """A cluster's head node as ``ray start --head`` makes one, on 127.0.0.1 with free ports, the dashboard
    (job server) and token auth, under ``env`` (its workers and Ray Jobs inherit it); yields the
    dashboard's URL. ``RAY_TMPDIR`` in ``env`` holds its address file, which ``--address auto`` reads."""
    ray = shutil.which("ray", path=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    assert ray, "the `ray` command is missing (ray[default] is a dependency)"
    gcs, dashboard, *more = free_ports(9)
    flags = ["--ray-client-server-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
             "--runtime-env-agent-port", "--node-manager-port", "--object-manager-port"]  # fmt: skip
    command = [ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", *(f"{f}={p}" for f, p in zip(flags, more, strict=True)),
               "--num-cpus=2", f"--object-store-memory={200 * 2**20}", "--disable-usage-stats"]  # fmt: skip
    deathsig = ["setpriv", "--pdeathsig", "TERM"] if shutil.which("setpriv") else []  # a dying pytest takes it along
    log_path = Path(env["RAY_TMPDIR"]) / "head.log"
    with log_path.open("wb") as log:
        head = subprocess.Popen([*deathsig, *command], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        give_up = time.monotonic() + timeout_s
        address_file = Path(env["RAY_TMPDIR"]) / "ray" / "ray_current_cluster"
        request = urllib.request.Request(url + "/api/version", headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"})
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
        while True:
            assert head.poll() is None, f"ray start --head exited:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < give_up, f"the Ray head did not come up:\n{log_path.read_text()[-3000:]}"
            try:
                if address_file.is_file() and direct.open(request, timeout=2).status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        head.terminate()  # `ray start --block` stops the processes it started
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        try:
            os.killpg(head.pid, signal.SIGKILL)  # anything left of the process group started above
        except ProcessLookupError:
            pass


def write_prompts(work: Path) -> tuple[list[dict], list[dict]]:
    """The two prompt files README's cluster commands name: few rows, few frames."""
    toy = [{"id": "circle", "prompt": "a red circle moving over sand", "frames": 13},
           {"id": "square", "prompt": "a blue circle moving over grass", "frames": 9, "seed": 3}]  # fmt: skip
    wan = [{"id": "corgi", "prompt": "a corgi running on a lawn", "frames": 9},
           {"id": "dog-park", "prompt": "a dog walking in a park", "frames": 5, "seed": 7}]  # fmt: skip
    (work / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in toy))
    pq.write_table(pa.Table.from_pylist(wan), work / "prompts.parquet")
    return toy, wan


def assert_all_done(rows, expected: list[dict]) -> None:
    assert {r.id: (r.status, r.frames) for r in rows} == {e["id"]: ("done", e["frames"]) for e in expected}


def test_readme_cluster_commands_run_as_written(tmp_path, s3_env, hub_env):
    local, auto, status, submit = commands(CLUSTER)
    ((address_var, readme_address),) = exported(block(CLUSTER)).items()
    assert readme_address.endswith(":8265"), "the exported address is a Ray dashboard's"
    bucket, prefix = s3_target(auto)
    assert s3_target(submit) == (bucket, prefix)
    s3 = empty_bucket(s3_env, bucket)
    store = S3Store(bucket, prefix, endpoint_url=s3_env.endpoint, path_style=True)
    work = workdir(tmp_path)
    toy, wan = write_prompts(work)
    temp = tempfile.mkdtemp(prefix="/tmp/mr")  # short: Ray's socket paths must fit in 107 bytes
    ray_env = {"RAY_TMPDIR": temp, "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    env = command_env(s3_env, hub_env, ray_env)
    env.pop("RAY_AUTH_MODE", None)  # unset: Ray 2.60's default, token authentication
    env.pop("RAY_ADDRESS", None)
    try:
        with ray_head(env) as dashboard:
            # A private Ray on 127.0.0.1 with two workers, the toy model, a local output directory.
            summary = run(local, work, env).stdout
            assert f"{len(toy)} jobs on 2 workers: {len(toy)} rendered" in summary
            local_rows = read_manifest(LocalStore(work / option(local, "--out")))
            assert_all_done(local_rows, toy)
            # A driver on a node of the running cluster: the stand-in Wan model, S3.
            summary = run(auto, work, env).stdout
            assert f"{len(wan)} jobs on 1 workers: {len(wan)} rendered" in summary
            assert_all_done(read_manifest(store), wan)
            nodes = [{r.metrics["cluster"]["node_id"] for r in rows} for rows in (local_rows, read_manifest(store))]
            assert not nodes[0] & nodes[1], "the local batch ran on a Ray of its own, not on the cluster's head"
            # The status of every job of the local run, read from storage alone.
            lines = run(status, work, env).stdout.splitlines()
            assert sorted(lines) == sorted(f"{r['id']}: done, {r['frames']}/{r['frames']} frames" for r in toy)
            # The same batch as a Ray Job, on an emptied bucket so that it renders everything again.
            empty_bucket(s3_env, bucket)
            done = run(submit, work, env | {address_var: dashboard})
            job_id = done.stdout.splitlines()[0]
            assert f"{job_id}: SUCCEEDED" in done.stdout
            assert f"{len(wan)} jobs on 1 workers: {len(wan)} rendered" in done.stderr, "the job's log was followed"
            assert_all_done(read_manifest(store), wan)
            for row in wan:
                assert s3.head_object(Bucket=bucket, Key=f"{prefix}/{row['id']}/video.mp4")["ContentLength"] > 0
    finally:
        shutil.rmtree(temp, ignore_errors=True)
