"""`miga bench`: every benchmark's --help shows an example it accepts, and the render benchmarks run at a
tiny size with the shipped toy model and print sane numbers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from miga_ray.cli import BENCHES, app
from miga_ray.models.registry import TOY_DIR
from miga_ray.storage import open_store
from miga_ray.storage.seaweed import SeaweedServer
from toy_model import toy_frames

runner = CliRunner()
T = 20  # levels: a short grid (more than the toy window of 16) keeps every run to a few seconds
SMALL = ["--set", f"sampler.num_levels={T}", "--set", "sampler.miga.stage2_levels=2", "--set", "sampler.miga.reflect_after=2"]
WINDOW = json.loads((TOY_DIR / "miga.json").read_text())["window"]  # latents per model call of the toy model


def table(output: str, first: str) -> list[dict[str, str]]:
    """The rows of the markdown table whose header starts with column ``first``, as dicts by column name."""
    lines = [line for line in output.splitlines() if line.startswith("|")]
    start = next(i for i, line in enumerate(lines) if line.split("|")[1].strip() == first)
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(header) or cells[0] == first:
            break
        rows.append(dict(zip(header, cells)))
    return rows


def bench(*args: str) -> str:
    """Run ``miga bench ARGS`` in this process; return what it printed on stdout."""
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code == 0, result.output
    assert "transformer sha256" in result.stdout  # which toy checkpoint the numbers belong to
    return result.stdout


@pytest.mark.parametrize("name", list(BENCHES))
def test_help_shows_an_example_with_known_options(name):
    result = runner.invoke(app, ["bench", name, "--help"])
    assert result.exit_code == 0, result.output
    example = re.search(r"Example: (.*)", result.output).group(1)
    assert f"miga bench {name}" in example
    assert set(re.findall(r"--[\w-]+", example)) <= set(re.findall(r"--[\w-]+", result.output.split("options:")[1]))


@pytest.mark.parametrize(
    "args, option",
    [(["memory", "--lengths", "100"], "--lengths"), (["memory", "--lengths", "100,0"], "--lengths"),
     (["overhead", "--samplers", "miga,foo"], "--samplers"), (["frames", "--frames", "0"], "--frames"),
     (["overhead", "--threads", "-1"], "--threads"), (["sampler", "--trace", "t.jsonl"], "--trace"),
     (["sampler", "--schedule", "reference", "--groups", "61"], "--groups")],
)  # fmt: skip
def test_bad_options_exit_2_naming_the_option(args, option):
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code == 2 and f"argument {option}" in result.output, result.output


def test_sampler_reference_schedule_writes_its_trace(tmp_path: Path):
    path = tmp_path / "trace.jsonl"
    result = runner.invoke(app, ["bench", "sampler", "--preset", "vc2", "--schedule", "reference", "--groups", "30", "--trace", str(path)])
    assert result.exit_code == 0, result.output
    assert "120 output latents, 1852 calls" in result.stdout and "15.43 calls per output latent" in result.stdout
    calls = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(calls) == 1852 and set(calls[0]) == {"call", "phase", "latents", "levels", "guidance", "kept"}
    assert [c["phase"] for c in calls].count("stage2") == 133


def test_frames_counts_the_base_sampler_exactly():
    rows = {r["sampler"]: r for r in table(bench("frames", "--frames", "13", *SMALL), "sampler")}
    base, clip_frames = rows["base"], toy_frames(WINDOW, "toy")
    assert (int(base["output frames"]), int(base["window calls"]), int(base["model forwards"])) == (clip_frames, T, 2 * T)  # CFG: 2 per call
    assert base["forwards / frame"] == f"{2 * T / clip_frames:.3f}"
    for name in ("fifo", "miga"):
        r = rows[name]
        assert int(r["output frames"]) == 13 and int(r["model forwards"]) == 2 * int(r["window calls"]) > 2 * T
    for r in rows.values():
        assert float(r["model ms / frame"]) > 0 and float(r["decode ms / frame"]) > 0 and float(r["other ms / frame"]) >= 0


def test_overhead_splits_the_render_wall_time():
    (row,) = table(bench("overhead", "--frames", "9", "--samplers", "fifo", *SMALL), "sampler")
    wall, model, decode, other = (float(row[k]) for k in ("render wall s", "model s", "decode s", "other s"))
    assert model > 0 and decode > 0 and other > 0  # the stopwatches sit inside the render's wall time
    share = float(row["other / wall"].rstrip("%"))
    assert 0 < share < 100 and share == pytest.approx(100 * other / wall, rel=0.1)  # from 2-decimal seconds


def test_memory_measures_each_length_in_its_own_process():
    output = bench("memory", "--lengths", "5,9", "--samplers", "fifo", *SMALL)
    rows = table(output, "sampler")
    assert [r["output frames"] for r in rows] == ["5", "9"]
    assert all(float(r["peak RSS, process (MiB)"]) >= float(r["peak RSS, render (MiB)"]) > 100 for r in rows)
    ratio = float(re.search(r"process RSS (\d+\.\d+)", output).group(1))
    assert ratio >= 1.0


def test_gpu_script_runs_on_the_cpu_without_ray_av_or_boto3():
    blocked = "import sys; sys.modules.update(dict.fromkeys(['ray', 'av', 'boto3'])); from miga_ray.benchmarks.gpu import main; main()"
    args = ["--model", "toy", "--preset", "toy", "--levels", "32", "--device", "cpu", "--height", "64", "--width", "64",
            "--parts", "steady,frames,memory", "--frames", "13", "--memory-frames", "5,9",
            "--warm", "20", "--span", "20", "--calls", "3", "--memory-latents", "20,60"]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", blocked, *args], capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(rf"one window call \({WINDOW} latents, 2 rows\): \d+\.\d+ s", done.stdout)
    steady = table(done.stdout, "steady state")
    assert [r["steady state"] for r in steady] == ["base", "fifo", "miga", "miga"]
    calls = {r["steady state"]: float(r["calls / output latent (counted)"]) for r in steady}
    assert calls["base"] == 32 / WINDOW and calls["miga"] > calls["fifo"] > calls["base"]  # FIFO: 2T/f with lookahead
    assert calls["fifo"] == 2 * 32 / WINDOW
    assert all(float(r["s / frame (composed)"]) > 0 for r in steady)
    assert [r["sampler"] for r in table(done.stdout, "sampler")] == ["base", "fifo", "miga"]
    assert [r["MIGA output frames"] for r in table(done.stdout, "MIGA output frames")] == ["5", "9"]
    assert float(re.search(r"peak ratio, larger / smaller \(RSS, in one process\): (\d+\.\d+)", done.stdout).group(1)) >= 1.0


def test_seaweed_server_reached_through_the_standard_aws_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with SeaweedServer(tmp_path / "data", bucket="miga-bench") as server:
        for name, value in server.aws_env().items():
            monkeypatch.setenv(name, value)
        store = open_store(f"{server.uri}/probe")
        store.put_bytes("x", b"1")
        assert store.get_bytes("x") == b"1"
    assert server.proc is None


def test_sampler_bench_reports_measured_times_with_their_spread():
    """Each time is measured (never a subtraction of two noisy runs): median [min-max], none negative."""
    result = runner.invoke(app, ["bench", "sampler", "--short", "20", "--long", "40", "--latents", "12", "--repeats", "3"])
    assert result.exit_code == 0, result.output
    cells = re.findall(r"^(?:tiny|Wan).*?(miga|fifo)\s+(.*)$", result.stdout, re.M)
    assert [s for s, _ in cells] == ["miga", "fifo", "miga", "fifo"], result.stdout
    for _, rest in cells:
        spreads = re.findall(r"(-?[\d.]+) \[(-?[\d.]+)-(-?[\d.]+)\]", rest)
        assert len(spreads) == 2, rest  # bookkeeping and the zero model's own time
        for median, low, high in spreads:
            assert 0 <= float(low) <= float(median) <= float(high), rest
