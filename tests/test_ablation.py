"""The toy-world ablation command: every variant renders and is scored, a rerun resumes, intervals are sound."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from toy_model import toy_frames

SCRIPT = Path(__file__).resolve().parent.parent / "jobs" / "toy_ablation.py"


def load_script():
    spec = importlib.util.spec_from_file_location("toy_ablation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its scoring pool pickles its functions by module name
    spec.loader.exec_module(module)
    return module


def run(out: Path, monkeypatch, capsys, *extra: str) -> str:
    """The command in this process (torch is imported once for the module): what it printed."""
    argv = [str(SCRIPT), "--out", str(out), "--prompts", "1", "--seeds", "1", "--latents", "6", "--workers", "1", *extra]
    monkeypatch.setattr(sys, "argv", argv)
    load_script().main()
    return capsys.readouterr().out


def test_ablation_renders_every_variant_and_resumes(tmp_path, monkeypatch, capsys):
    first = run(tmp_path, monkeypatch, capsys)
    assert "0 videos done, 4 to render" in first
    rows = [json.loads(line) for line in (tmp_path / "videos.jsonl").read_text().splitlines()]
    assert sorted({r["variant"] for r in rows}) == ["dce", "fifo", "miga", "tta"] and len(rows) == 4
    assert all(r["frames"] == toy_frames(6, "toy") for r in rows)
    assert all(0 < r["overall"] <= 1 and 0 <= r["analysis"]["mean"]["color_rate"] <= 1 for r in rows)
    calls = {r["variant"]: r["model_calls"] for r in rows if r["seed"] == 0 and r["prompt"] == rows[0]["prompt"]}
    assert len(set(calls.values())) > 1, "the variants must run different samplers"
    assert all(r["model"] == "toy" and len(r["analysis"]["curves"]["count_rate"]) == min(10, r["frames"]) and "subject_consistency" in r["analysis"]["drift"] for r in rows)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "table.md").read_text()
    for label in ("FIFO-Diffusion", "TTA only", "DCE only", "MIGA (TTA + DCE)", "TTA only − FIFO"):
        assert f"| toy | {label} |" in table
    again = run(tmp_path, monkeypatch, capsys)
    assert "4 videos done, 0 to render" in again
    assert (tmp_path / "videos.jsonl").read_text().count("\n") == 4
    grown = run(tmp_path, monkeypatch, capsys, "--prompts", "2", "--variants", "fifo")  # a prompt added to a finished study: only it renders
    assert "4 videos done, 1 to render" in grown
    added = [json.loads(line) for line in (tmp_path / "videos.jsonl").read_text().splitlines()][4:]
    assert len(added) == 1 and added[0]["batch"] == 1 and added[0]["prompt"] != rows[0]["prompt"]
    # a batch row does not depend on the other variants: MIGA rendered alone equals MIGA rendered after three batches
    alone = run(tmp_path / "miga-only", monkeypatch, capsys, "--variants", "miga")
    assert "0 videos done, 1 to render" in alone
    keys = ("prompt", "subject_consistency", "analysis", "model_calls")
    (miga,) = [json.loads(line) for line in (tmp_path / "miga-only" / "videos.jsonl").read_text().splitlines()]
    assert {k: miga[k] for k in keys} == {k: r[k] for r in rows if r["variant"] == "miga" for k in keys}


def test_prompts_are_distinct_in_draw_order_and_too_many_is_an_error():
    ablation = load_script()
    world = ablation.model_world("toy")
    texts = ablation.prompts(12, 2026, world)
    assert len(set(texts)) == 12 and texts[:5] == ablation.prompts(5, 2026, world)
    assert set(ablation.prompts(6, 2026, world, offset=12)).isdisjoint(texts)  # a tuning set apart from the study's
    with pytest.raises(ValueError, match=r"--prompts: 12 \+ 1000 distinct prompts asked, this world gave 36"):
        ablation.prompts(1000, 2026, world, offset=12, draws=2000)


def test_interval_brackets_the_mean_and_skips_undefined():
    ablation = load_script()
    values = np.array([0.90, 0.92, 0.95, 0.97, np.nan])
    text = ablation.interval(values, 100)
    mean, low, high = (float(x) for x in text.replace("[", " ").replace(",", " ").replace("]", " ").split()[:3])
    assert low < mean < high and abs(mean - 93.5) < 1e-9
    assert 90 <= low and high <= 97 and text.endswith("(n=4)")
    assert ablation.interval(np.array([np.nan]), 100) == "n/a"


def test_a_variant_with_settings_changes_only_those():
    ablation = load_script()
    changed, preset = (ablation.variant_config(v, "toy", "toy", "cpu").sampler.miga_config() for v in ("miga+guidance=2+refine=false", "miga"))
    assert (changed.guidance, changed.refine) == (2, False) and (preset.guidance, preset.refine) != (2, False)
    assert changed.group == preset.group and changed.stage2_levels == preset.stage2_levels
    assert ablation.label("miga+guidance=2+refine=false") == "MIGA (TTA + DCE) [guidance=2, refine=false]"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--prompts", "0", "argument --prompts: must be an integer >= 1"),
     ("--variants", "fifo,nope", "argument --variants: must be a comma-separated list of fifo, tta, dce, miga"),
     ("--variants", "fifo,miga+guidanc=2", "--variants: miga.guidanc: unknown key"),
     ("--variants", "miga+guidance=16", "--variants: miga.guidance: must satisfy 0 <= guidance (m_guid) < window (16)"),
     ("--prompt-offset", "-1", "argument --prompt-offset: must be >= 0")],
)
def test_nonsense_options_exit_2_naming_the_option(tmp_path, monkeypatch, capsys, option, value, message):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--out", str(tmp_path / "out"), option, value])
    with pytest.raises(SystemExit) as stopped:
        load_script().main()
    assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
