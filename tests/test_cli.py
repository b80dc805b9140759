"""The command line: exit codes and messages for bad input, help with examples, status from storage."""

from __future__ import annotations

import json
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
        (["--set", "sampler.miga.schedule=official"], "sampler.miga.schedule"),
        (["--frames", "13", "--set", "sampler.miga.schedule=reference"], "num_latents: must satisfy, with schedule reference, a multiple of group"),
        (["--set", "sampler.miga.schedule=reference", "--set", "sampler.miga.reflect_during=always"], "sampler.miga.reflect_during: must satisfy fill with schedule reference"),
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


def test_sampler_settings_are_the_sampling_dataclasses_fields():
    """Declared once: every MigaConfig / FifoConfig field can be set from YAML, and nothing else can."""
    import dataclasses

    from miga_ray.config import FifoSettings, MigaSettings
    from miga_ray.sampling import FifoConfig, MigaConfig

    assert list(MigaSettings.model_fields) == [f.name for f in dataclasses.fields(MigaConfig)]
    assert list(FifoSettings.model_fields) == [f.name for f in dataclasses.fields(FifoConfig)]
    assert load_config(None, ["sampler.miga.schedule=reference"]).sampler.miga_config().schedule == "reference"


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
