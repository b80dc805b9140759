"""The command line: exit codes and messages for bad input, help with examples, status from storage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from miga_ray.cli import app
from miga_ray.config import ConfigError, load_config
from miga_ray.storage import JobRecord, LocalStore, write_job

runner = CliRunner()


@pytest.mark.parametrize("command", [["render"], ["demo"], ["status"], ["bench", "sampler"]])
def test_every_command_has_help_with_an_example(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Example: miga" in result.output


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--set", "sampler.miga.colour=3"], "sampler.miga.colour: unknown key"),
        (["--set", "frames=-5"], "frames: Input should be greater than or equal to 1"),
        (["--set", "sampler.kind=diagonal"], "sampler.kind"),
        (["--set", "sampler.miga.guidance=8"], "guidance: must satisfy 0 <= guidance (m_guid) < window"),
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
    result = runner.invoke(app, ["render", "x", "--out", str(blocker / "out")])
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
    import time

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
