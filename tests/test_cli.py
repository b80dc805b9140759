"""The command line: exit codes and messages for bad input, help with examples, status from storage."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from miga_ray.cli import app
from miga_ray.config import ConfigError, job_id_for, load_config
from miga_ray.storage import JobRecord, LocalStore, write_job

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
PROMPT = "a red circle moving over sand"
SMALL = [f"--set={s}" for s in ("model.device=cpu", "sampler.num_levels=16", "sampler.miga.stage2_levels=3", "sampler.miga.reflect_after=4")]
HEAVY = ("torch", "numpy", "boto3", "av", "ray", "diffusers", "transformers")


@pytest.mark.parametrize("command", [["render"], ["demo"], ["status"], ["extend"], ["bench", "sampler"]])
def test_every_command_has_help_with_an_example(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Example: miga" in result.output


@pytest.mark.parametrize(
    "argv", [["--help"], ["render", "--help"], ["batch", "--help"], ["render", "x", "--set", "frames=0"]]
)
def test_help_and_config_errors_answer_without_loading_torch(argv):
    """`miga --help` and config errors take well under a second: no torch, numpy or model code on the way."""
    code = f"import sys\nfrom miga_ray.cli import app\ntry:\n    app({argv!r})\nexcept SystemExit as e:\n    print('exit', e.code)\n"
    code += f"print('loaded', sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60).stdout
    assert "loaded []" in out, out
    assert ("exit 2" if "--set" in argv else "exit 0") in out


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--set", "sampler.miga.colour=3"], "sampler.miga.colour: unknown key"),
        (["--set", "frames=-5"], "frames: Input should be greater than or equal to 1"),
        (["--set", "sampler.kind=diagonal"], "sampler.kind"),
        (["--set", "sampler.miga.schedule=official"], "sampler.miga.schedule"),
        (["--frames", "13", "--set", "sampler.miga.schedule=reference"], "num_latents: must satisfy, with schedule reference, a multiple of group"),
        (["--set", "sampler.miga.schedule=reference", "--set", "sampler.miga.reflect_during=always"], "sampler.miga.reflect_during: must satisfy fill with schedule reference"),
        (["--set", "sampler.miga.guidance=16"], "guidance: must satisfy 0 <= guidance (m_guid) < window"),
        (["--set", "video.height=50"], "video.height"),
        (["--set", "nonsense"], "expected key=value"),
        (["--sampler", "fifo", "--set", "sampler.num_levels=4"], "num_levels: must satisfy num_levels (T) >= window"),
    ],
)
def test_bad_config_exits_2_naming_the_key(tmp_path, args, needle):
    result = runner.invoke(app, ["render", "a red circle moving over sand", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.json")), "nothing half-written"


def test_sampler_settings_are_the_sampling_dataclasses_fields():
    """Declared once: every MigaConfig / FifoConfig field can be set from YAML, and nothing else can."""
    import dataclasses

    from miga_ray.config import FifoSettings, MigaSettings
    from miga_ray.sampling import FifoConfig, MigaConfig

    assert list(MigaSettings.model_fields) == [f.name for f in dataclasses.fields(MigaConfig)]
    assert list(FifoSettings.model_fields) == [f.name for f in dataclasses.fields(FifoConfig)]
    assert load_config(None, ["sampler.miga.schedule=reference"]).sampler.miga_config().schedule == "reference"


def test_a_prompt_outside_the_toy_grammar_exits_2_before_the_model_loads(tmp_path, monkeypatch):
    import miga_ray.engines

    monkeypatch.setattr(miga_ray.engines, "load_for", lambda cfg: pytest.fail("the model was loaded"))
    result = runner.invoke(app, ["render", "a cat playing piano", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "'cat'" in result.output and "grammar" in result.output and "sprite :=" in result.output
    assert not any((tmp_path / "o").rglob("*.json")), "nothing half-written"
    other = load_config(None, ["model.name=wan2.1-1.3b-random"])
    other.check_prompt("a cat playing piano")  # only the toy model is bound to the toy grammar


def test_config_file_errors_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampler:\n  miga:\n    group: zero\n")
    result = runner.invoke(app, ["render", "x", "--config", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "sampler.miga.group" in result.output and "'zero'" in result.output
    result = runner.invoke(app, ["render", "x", "--config", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "no such file" in result.output


def test_unwritable_output_exits_2_before_rendering(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = runner.invoke(app, ["render", PROMPT, "--out", str(blocker / "out")])
    assert result.exit_code == 2 and "--out" in result.output


def test_shipped_configs_validate():
    paths = sorted(Path("configs").rglob("*.yaml"))
    assert len(paths) >= 8
    for path in paths:
        assert load_config(path).frames >= 1
    assert load_config("configs/wan2.1-1.3b-miga.yaml").sampler.miga_config().group == 7
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, ["model.weights=/x"])


def test_status_reads_progress_from_storage(tmp_path):
    write_job(LocalStore(tmp_path), JobRecord("job-1", status="running", frames_done=40, frames_total=600))
    result = runner.invoke(app, ["status", str(tmp_path / "job-1"), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["frames_done"] == 40
    result = runner.invoke(app, ["status", str(tmp_path / "job-1")])
    assert "running, 40/600 frames" in result.output
    assert runner.invoke(app, ["status", str(tmp_path / "nope")]).exit_code == 1


def test_the_progress_line_fits_80_columns_and_keeps_its_numbers():
    from miga_ray.cli import _bar_fields, _progress_bar
    from miga_ray.render import Progress
    from miga_ray.sampling import Counters

    console = Console(file=io.StringIO(), width=80)
    bar = _progress_bar(console)
    p = Progress("a-yellow-square-and-a-blue-triangle-moving-over--s0", 120, 600, 6.0, Counters(), work_done=1100, work_total=5500)
    bar.add_task(p.job_id, **_bar_fields(p.as_dict()))
    console.print(bar.make_tasks_table(bar.tasks))
    line = console.file.getvalue().splitlines()[0]
    assert len(line) <= 80 and line.startswith("a-yellow-square")
    for number in ("20%", "120/600 fr", "20.0 fps", "eta 0:00:24"):
        assert number in line, line


def test_render_prints_the_path_and_says_already_done_with_readable_files(tmp_path):
    args = ["render", PROMPT, "--frames", "5", "--out", str(tmp_path), *SMALL]
    first = runner.invoke(app, args)
    video = tmp_path / _job_id(PROMPT, frames=5) / "video.mp4"
    assert first.exit_code == 0 and str(video) in first.stdout and "already done" not in first.output, first.output
    assert stat.S_IMODE(video.stat().st_mode) & 0o044 == 0o044 & ~_umask(), "group and others may read it as the umask allows"
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and str(video) in again.stdout and "already done (5 frames)" in again.output


def _job_id(prompt: str, **fields) -> str:
    """The default job id the command line gives ``prompt`` with the SMALL settings."""
    return job_id_for(prompt, load_config(None, [a.removeprefix("--set=") for a in SMALL], **fields))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_sigterm_leaves_job_json_interrupted_with_how_to_resume(tmp_path):
    job = tmp_path / _job_id(PROMPT, frames=400) / "job.json"
    cmd = [sys.executable, "-m", "miga_ray.cli", "render", PROMPT, "--frames", "400", "--out", str(tmp_path), *SMALL]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not job.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert job.exists(), proc.communicate()[1] if proc.poll() is not None else "no job.json in 120 s"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    record = json.loads(job.read_text())
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert record["status"] == "interrupted" and "SIGTERM" in record["error"] and "same command again" in record["error"]
    assert "interrupted (SIGTERM)" in stderr and "resume" in stderr


def test_eval_of_a_file_that_is_not_a_video_exits_2_naming_it(tmp_path):
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video")
    result = runner.invoke(app, ["eval", str(notes)])
    assert result.exit_code == 2 and str(notes) in result.output and "not a video" in result.output, result.output


def test_batch_rows_show_a_workers_progress_report():
    from miga_ray.cli import _batch_bar_events, _progress_bar
    from miga_ray.render import Progress
    from miga_ray.sampling import Counters

    console = Console(file=io.StringIO(), width=80)
    bar = _progress_bar(console)
    report = Progress("long", 30, 60, 3.0, Counters(), work_done=100, work_total=400).as_dict()
    _batch_bar_events(bar)({"event": "progress", **report, "worker": 0, "reflections": {}})
    console.print(bar.make_tasks_table(bar.tasks))
    line = console.file.getvalue().splitlines()[0]
    for number in ("25%", "30/60 fr", "10.0 fps", "eta 0:00:09"):
        assert number in line, line


@pytest.mark.parametrize("value", [".inf", "inf", "1e999", "-.inf", ".nan"])
@pytest.mark.parametrize("key", ["sampler.cfg_scale", "sampler.shift", "sampler.miga.reflect_delta", "checkpoint.every_seconds"])
def test_float_settings_must_be_finite(tmp_path, key, value):
    result = runner.invoke(app, ["render", "x", "--out", str(tmp_path / "o"), "--set", f"{key}={value}"])
    assert result.exit_code == 2 and f"{key}: Input should be a finite number" in result.output, result.output
    assert not (tmp_path / "o").exists()


def alias_bomb(levels: int = 9) -> str:
    """A ~700-byte YAML document whose aliases expand to 9**levels leaves."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nnegative_prompt: *a{levels - 1}\n"


def test_a_yaml_alias_bomb_is_refused_quickly_with_a_short_message(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb())
    assert len(bomb.read_bytes()) < 1000
    started = time.monotonic()
    result = runner.invoke(app, ["render", "x", "--config", str(bomb), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "more than 100000 YAML nodes once aliases are expanded" in result.output, result.output
    assert time.monotonic() - started < 5 and len(result.output) < 2000
    result = runner.invoke(app, ["render", "x", "--out", str(tmp_path / "o"), "--set", "negative_prompt=" + alias_bomb().replace("\n", ", ").join("{}")])
    assert result.exit_code == 2 and len(result.output) < 2000, result.output[:3000]
    (tmp_path / "big.yaml").write_text("negative_prompt: " + "y" * (2 << 20))
    result = runner.invoke(app, ["render", "x", "--config", str(tmp_path / "big.yaml"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "larger than 1048576 bytes" in result.output and len(result.output) < 2000


def test_a_long_wrong_value_is_not_echoed_in_full(tmp_path):
    result = runner.invoke(app, ["render", "x", "--out", str(tmp_path / "o"), "--set", "sampler.miga.group=" + "z" * 100_000])
    assert result.exit_code == 2 and "sampler.miga.group" in result.output and "chars)" in result.output and len(result.output) < 2000


def test_an_undecodable_config_file_exits_2_with_its_line(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("frames: 9\nnegative_prompt: caf\xe9\n".encode("latin-1"))
    result = runner.invoke(app, ["render", "x", "--config", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and f"--config {bad}: line 2: not UTF-8 text (byte 0xe9)" in result.output.replace("\n", ""), result.output


def test_status_never_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.setenv(name, os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert runner.invoke(app, ["status", str(tmp_path / "missing" / "job")]).exit_code == 1
    assert runner.invoke(app, ["status", "s3://no-such-bucket-here"]).exit_code == 1
    assert runner.invoke(app, ["status", "out/job"]).exit_code == 1
    assert list(tmp_path.iterdir()) == [], "status created something"


def test_submit_refuses_secrets_in_env_without_echoing_them(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "x"}\n')
    result = runner.invoke(app, ["submit", str(prompts), "--address", "http://127.0.0.1:9", "--out", str(tmp_path / "o"),
                                 "--env", "AWS_ENDPOINT_URL=http://s3", "--env", "AWS_SECRET_ACCESS_KEY=hunter2-secret-value"])  # fmt: skip
    assert result.exit_code == 2 and "--env AWS_SECRET_ACCESS_KEY: looks like a secret" in result.output.replace("\n", " "), result.output
    assert "hunter2" not in result.output


@pytest.mark.parametrize("entry, needle", [
    ("DB_PASS=x", "--env DB_PASS: looks like a secret"),
    ("AWS_SECRETACCESSKEY=x", "--env AWS_SECRETACCESSKEY: looks like a secret"),
    ("github.token=x", "--env github.token: looks like a secret"),
    ("myCredentialFile=x", "--env myCredentialFile: looks like a secret"),
    ("DATABASE_URL=postgres://u:hunter2@h/db", "--env DATABASE_URL: its value is a URL with credentials"),
])  # fmt: skip
def test_submit_refuses_secret_names_and_credentials_in_urls_saying_what_to_do(tmp_path, entry, needle):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "x"}\n')
    result = runner.invoke(app, ["submit", str(prompts), "--address", "http://127.0.0.1:9", "--out", str(tmp_path / "o"),
                                 "--env", "AWS_ENDPOINT_URL=http://s3:8333", "--env", entry])  # fmt: skip
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and needle in text and "give the cluster's nodes their own credentials" in text, result.output
    assert "hunter2" not in result.output


def test_set_frames_with_frames_is_refused_naming_both(tmp_path):
    result = runner.invoke(app, ["render", "a red circle moving over sand", "--out", str(tmp_path / "o"), "--frames", "9", "--set", "frames=20"])
    assert result.exit_code == 2 and "--set frames=... and --frames: both set frames; give one of them" in " ".join(result.output.split())
    assert not (tmp_path / "o").exists()


def test_eval_of_a_missing_path_creates_nothing(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path / "missing" / "job")])
    assert result.exit_code == 2 and "neither a video file nor a job" in " ".join(result.output.split()), result.output
    assert list(tmp_path.iterdir()) == []


def test_demo_renders_one_prompt_with_fifo_and_miga_and_says_whether_miga_is_ahead(tmp_path):
    """The first two minutes show what the sampler does: both videos, their drift figures side by side, a verdict."""
    result = subprocess.run([sys.executable, "-m", "miga_ray.cli", "demo", "--config", str(REPO / "configs" / "demo.yaml"),
                             "--frames", "40", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert sorted(lines[:2]) == [str(tmp_path / f"red-circle-{kind}-s0" / "video.mp4") for kind in ("fifo", "miga")]  # as each finishes
    table = {line.split()[0]: line.split()[1:] for line in lines if line.split() and line.split()[0].endswith(("_rate", "_consistency"))}
    assert set(table) == {"subject_consistency", "background_consistency", "color_rate", "shape_rate", "count_rate"}
    assert all(len(cells) == 4 for cells in table.values())  # FIFO's and MIGA's mean (drift)
    assert any(line.startswith(("MIGA is ahead of FIFO here", "MIGA is not ahead of FIFO here")) for line in lines)
    for kind in ("fifo", "miga"):
        record = json.loads((tmp_path / f"red-circle-{kind}-s0" / "job.json").read_text())
        assert record["status"] == "done" and record["config"]["render"]["sampler"]["kind"] == kind


def test_verdict_calls_a_variant_ahead_only_on_a_majority_of_consistency_metrics():
    from miga_ray.evaluation.compare import CONSISTENCY, Variant, verdict

    def variant(name: str, mean: float, drift: float, better: int) -> Variant:
        values = {m: (mean + 0.1, drift) if i < better else (mean - 0.1, drift - 0.1) for i, m in enumerate(CONSISTENCY)}
        return Variant(name, [{"mean": {m: v[0] for m, v in values.items()}, "drift": {m: v[1] for m, v in values.items()}}])

    base = Variant("FIFO", [{"mean": dict.fromkeys(CONSISTENCY, 0.5), "drift": dict.fromkeys(CONSISTENCY, 0.0)}])
    assert verdict(base, variant("MIGA", 0.5, 0.0, 3)).startswith("MIGA is ahead of FIFO here: higher and drifting no more on 3 of 5")
    assert verdict(base, variant("MIGA", 0.5, 0.0, 2)).startswith("MIGA is not ahead of FIFO here: higher and drifting no more on 2 of 5")
    assert "lower and drifting no less on 3" in verdict(base, variant("MIGA", 0.5, 0.0, 2))
