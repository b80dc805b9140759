"""Prompt sets for `miga batch`: three file formats, every bad row reported with its number, exit 2
before anything renders, and the manifest/summary/status helpers (no Ray needed)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from miga_ray.cli import app
from miga_ray.cluster.batch import BatchResult, JobState, plan_jobs
from miga_ray.cluster.jobs import BatchJob, JobOutcome
from miga_ray.cluster.prompts import PromptFileError, read_prompts
from miga_ray.cluster.report import run_status, summary, write_manifest
from miga_ray.config import job_id_for, load_config
from miga_ray.storage import JobRecord, LocalStore, read_manifest, write_job

runner = CliRunner()
ROWS = [
    {"id": "long-one", "prompt": "a red circle moving over sand", "frames": 41, "seed": 3},
    {"id": "short.one_2", "prompt": "a blue square moving over grass", "frames": 9, "negative_prompt": "blurry"},
    {"prompt": "a yellow triangle", "seed": 7},
]

OPEN_MODEL = "wan2.1-1.3b-random"  # a model that takes any prompt text (nothing here loads it)


def write(path, rows):
    """Write rows as the file type its suffix names."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        cols = ["id", "prompt", "frames", "seed", "negative_prompt"]
        lines = [",".join(cols)] + [",".join(str(r.get(c, "")) for c in cols) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    else:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows]), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_each_format_reads_to_the_same_rows(tmp_path, suffix):
    rows = read_prompts(write(tmp_path / f"p{suffix}", ROWS))
    assert [r.id for r in rows] == ["long-one", "short.one_2", None]  # None: the default id, set by plan_jobs
    assert [(r.frames, r.seed, r.negative_prompt) for r in rows] == [(41, 3, None), (9, None, "blurry"), (None, 7, None)]
    assert [r.row for r in rows] == [1, 2, 3]


def test_rows_override_the_base_config():
    base = load_config(None, ["model.device=cpu", f"model.name={OPEN_MODEL}"], frames=21, seed=1)
    rows = read_prompts_from(ROWS)
    jobs = plan_jobs(rows, base)
    assert [(j.cfg.frames, j.cfg.seed, j.cfg.negative_prompt) for j in jobs] == [(41, 3, None), (9, 1, "blurry"), (21, 7, None)]
    assert jobs[0].cfg.fingerprint() != base.fingerprint() and jobs[2].cfg.model == base.model
    assert [j.id for j in jobs[:2]] == ["long-one", "short.one_2"] and jobs[2].id == job_id_for("a yellow triangle", jobs[2].cfg)
    assert jobs[2].id.startswith("a-yellow-triangle-")


def test_default_ids_follow_the_whole_row_and_duplicates_are_reported():
    base = load_config(None, ["model.device=cpu", f"model.name={OPEN_MODEL}"], frames=21)
    same = [{"prompt": "a red circle", "seed": 1}, {"prompt": "a red circle", "seed": 2}, {"prompt": "a red circle", "frames": 9}]
    assert len({j.id for j in plan_jobs(read_prompts_from(same), base)}) == 3
    with pytest.raises(PromptFileError, match=r"row 2: duplicate id 'a-red-circle-[0-9a-f]{12}' \(first on row 1\)"):
        plan_jobs(read_prompts_from([{"prompt": "a red circle"}, {"prompt": "a red circle", "seed": 0}]), base)


def test_the_toy_model_refuses_rows_outside_its_grammar_naming_them():
    rows = read_prompts_from([{"prompt": "a red circle moving over sand"}, {"prompt": "a cat playing piano"}])
    with pytest.raises(PromptFileError, match=r"row 2: prompt 'a cat playing piano' is outside the toy model's grammar.*'cat'"):
        plan_jobs(rows, load_config(None, ["model.device=cpu"]))
    assert len(plan_jobs(rows, load_config(None, [f"model.name={OPEN_MODEL}"]))) == 2  # other models take any text


@pytest.mark.parametrize("bad", ["-rf", "manifest.parquet", "x" * 300, "../x", "a..b", ".hidden", "a/b", "", "state"])
def test_render_and_batch_refuse_the_same_unsafe_ids_before_loading_a_model(tmp_path, bad):
    out = tmp_path / "out"
    result = runner.invoke(app, ["render", "a red circle", "--job-id", bad, "--out", str(out), "--set", "model.device=cpu"])
    assert result.exit_code == 2 and "--job-id: a job id" in result.output, result.output
    assert bad not in result.output or len(bad) < 100, "an unbounded id was echoed"
    assert not out.exists(), "nothing may be written (or loaded) for a bad id"
    if bad:
        with pytest.raises(PromptFileError, match="row 1: unsafe id"):
            read_prompts_from([{"id": bad, "prompt": "a red circle"}])


def read_prompts_from(records):
    from miga_ray.cluster.prompts import parse_prompts

    return parse_prompts(records)


BAD = [
    {"id": "ok", "prompt": "fine"},
    {"id": "no-prompt", "prompt": "  "},
    {"id": "ok", "prompt": "a duplicate id"},
    {"id": "../escape", "prompt": "unsafe id"},
    {"id": "neg", "prompt": "negative frames", "frames": -4},
    {"id": "seed", "prompt": "fractional seed", "seed": "1.5"},
    {"id": "x" * 129, "prompt": "id too long"},
    {"id": "..", "prompt": "dot dot"},
]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_every_bad_row_is_reported_with_its_number(tmp_path, suffix):
    rows = BAD if suffix != ".parquet" else [{**r, "frames": r.get("frames"), "seed": str(r.get("seed", ""))} for r in BAD]
    with pytest.raises(PromptFileError) as info:
        read_prompts(write(tmp_path / f"bad{suffix}", rows))
    text = str(info.value)
    assert "row 1:" not in text
    for needle in ["row 2: missing prompt", "row 3: duplicate id 'ok' (first on row 1)", "row 4: unsafe id '../escape'",
                   "row 5: frames must be between 1", "row 6: seed must be an integer, got '1.5'", "row 7: unsafe id",
                   "row 8: unsafe id '..'"]:  # fmt: skip
        assert needle in text, (needle, text)


def test_unknown_columns_and_bad_json_are_reported(tmp_path):
    with pytest.raises(PromptFileError, match="unknown column.*'promt'"):
        read_prompts(write(tmp_path / "p.jsonl", [{"id": "a", "promt": "typo"}]))
    (tmp_path / "q.jsonl").write_text('{"id": "a", "prompt": "x"}\nnot json\n[1, 2]\n')
    with pytest.raises(PromptFileError, match=r"(?s)row 2: not valid JSON.*row 3: expected a JSON object"):
        read_prompts(tmp_path / "q.jsonl")
    with pytest.raises(PromptFileError, match="unknown prompt file type"):
        read_prompts(tmp_path / "p.txt")


def test_out_of_range_and_mistyped_values_name_their_rows():
    records = [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y", "seed": True}, {"id": "c", "prompt": "z", "negative_prompt": 5},
               {"id": "d", "prompt": "w", "seed": 2**63}, {"id": "e", "prompt": "v", "frames": 0}, {"id": "f", "prompt": "u", "frames": 2.5}]  # fmt: skip
    with pytest.raises(PromptFileError) as info:
        read_prompts_from(records)
    text = str(info.value)
    for needle in ["row 2: seed must be an integer, got True", "row 3: negative_prompt must be text", "row 4: seed must be between",
                   "row 5: frames must be between 1", "row 6: frames must be an integer, got 2.5"]:  # fmt: skip
        assert needle in text, (needle, text)
    assert read_prompts_from([{"id": "g", "prompt": "t", "frames": 17.0, "seed": " 4 "}])[0].frames == 17


def test_batch_with_bad_rows_exits_2_before_anything_renders(tmp_path):
    prompts = write(tmp_path / "bad.csv", BAD)
    out = tmp_path / "out"
    result = runner.invoke(app, ["batch", str(prompts), "--out", str(out), "--set", "model.device=cpu"])
    assert result.exit_code == 2, result.output
    assert "row 2: missing prompt" in result.output and "row 8: unsafe id" in result.output
    assert not out.exists() or not any(out.rglob("*")), "nothing written"


def test_batch_and_submit_have_help_with_an_example():
    for command in ("batch", "submit"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Example: miga" in result.output


def test_submit_rejects_bad_rows_and_a_missing_token_file_before_contacting_anyone(tmp_path):
    prompts = write(tmp_path / "bad.jsonl", BAD)
    base = ["submit", str(prompts), "--address", "http://127.0.0.1:9", "--out", str(tmp_path / "o")]
    result = runner.invoke(app, base)
    assert result.exit_code == 2 and "row 3: duplicate id" in result.output, result.output
    good = write(tmp_path / "good.jsonl", ROWS)
    result = runner.invoke(app, ["submit", str(good), *base[2:], "--token-file", str(tmp_path / "none")])
    assert result.exit_code == 2 and "--token-file" in result.output, result.output


def outcome(job_id, status="done", skipped=False, latents=5, run_s=2.0):
    return JobOutcome(job_id, status, skipped, None, latents, run_s, 0, "node", {"sampling": run_s}, {"model_calls": {"calls": {}}})


def test_manifest_summary_and_run_status(tmp_path):
    cfg = load_config(None, ["model.device=cpu"], frames=9)
    jobs = [BatchJob("a", "p a", cfg, 1), BatchJob("b", "p b", cfg, 2), BatchJob("c", "p c", cfg, 3)]
    states = [
        JobState(jobs[0], attempts=2, errors=["ActorDiedError: gone"], outcome=outcome("a"), overhead_s=0.05),
        JobState(jobs[1], attempts=0, outcome=outcome("b", skipped=True, latents=0, run_s=0.0)),
        JobState(jobs[2], attempts=3, errors=["RuntimeError: boom"] * 3),
    ]
    result = BatchResult(states, wall_s=4.0, workers=2)
    store = LocalStore(tmp_path)
    write_manifest(store, result)
    rows = {r.id: r for r in read_manifest(store)}
    assert rows["a"].status == "done" and rows["a"].metrics["cluster"]["attempts"] == 2
    assert rows["b"].metrics["cluster"]["skipped"] is True
    assert rows["c"].status == "failed" and rows["c"].error == "RuntimeError: boom"
    text = summary(result)
    assert "3 jobs on 2 workers: 1 rendered (0 resumed, 2 retried), 1 already done, 1 failed" in text
    assert "5 output latents in 4.0 s (1.25 latents/s); driver overhead 50 ms per job" in text
    assert "failed c (row 3) after 3 attempt(s): RuntimeError: boom" in text
    write_job(store, JobRecord("a", status="done", frames_done=9, frames_total=9))
    write_job(store, JobRecord("extra", status="running", frames_done=3, frames_total=9))
    status = {s.job_id: s for s in run_status(store)}
    assert set(status) == {"a", "b", "c", "extra"}
    assert (status["a"].frames_done, status["extra"].status, status["c"].status) == (9, "running", "failed")
    result = runner.invoke(app, ["status", str(tmp_path)])
    text = " ".join(result.output.split())
    assert "extra: running, 3/9 frames" in text and "b: done, 0/9 frames" in text, result.output
    # "a" says done but has no video (nor its video.sha256): a problem, exit 1
    assert result.exit_code == 1 and "a: problem, 9/9 frames (video.sha256 is missing" in text, result.output
    result = runner.invoke(app, ["status", str(tmp_path / "empty-dir")])
    assert result.exit_code == 1


def test_csv_and_jsonl_are_parsed_as_their_formats(tmp_path):
    """A quoted newline stays inside its CSV cell; U+2028 (legal in a JSON string) stays inside its JSONL row."""
    (tmp_path / "p.csv").write_text('id,prompt\na,"a red circle\nmoving over sand"\nb,a blue square\n', newline="")
    rows = read_prompts(tmp_path / "p.csv")
    assert [(r.id, r.prompt) for r in rows] == [("a", "a red circle\nmoving over sand"), ("b", "a blue square")]
    (tmp_path / "p.jsonl").write_text(json.dumps({"id": "a", "prompt": "left\u2028right"}, ensure_ascii=False) + "\r\n" + json.dumps({"id": "b", "prompt": "x"}) + "\n")
    assert [(r.id, r.prompt) for r in read_prompts(tmp_path / "p.jsonl")] == [("a", "left\u2028right"), ("b", "x")]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_an_undecodable_prompt_file_exits_2_with_its_line(tmp_path, suffix):
    path = tmp_path / f"p{suffix}"
    good = '{"id": "a", "prompt": "x"}\n' if suffix == ".jsonl" else "id,prompt\na,x\n"
    bad = '{"id": "b", "prompt": "caf\xe9"}\n' if suffix == ".jsonl" else "b,caf\xe9\n"
    path.write_bytes(good.encode() + bad.encode("latin-1"))
    result = runner.invoke(app, ["batch", str(path), "--out", str(tmp_path / "o"), "--set", "model.device=cpu"])
    line = 2 if suffix == ".jsonl" else 3  # the CSV header is line 1
    assert result.exit_code == 2 and f"line {line}: not UTF-8 text (byte 0xe9)" in result.output.replace("\n", ""), result.output


def test_non_finite_and_fractional_frames_and_seeds_name_their_rows(tmp_path):
    """JSON lines carry NaN and Infinity as numbers: neither is an empty cell (NaN used to render the default length)."""
    lines = ['{"id": "a", "prompt": "x", "frames": NaN}', '{"id": "b", "prompt": "x", "seed": Infinity}',
             '{"id": "c", "prompt": "x", "frames": 1.5}', '{"id": "d", "prompt": "x", "seed": -Infinity}']  # fmt: skip
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["batch", str(prompts), "--out", str(tmp_path / "out"), "--set", "model.device=cpu"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    for needle in ["row 1: frames must be an integer, got nan", "row 2: seed must be an integer, got inf",
                   "row 3: frames must be an integer, got 1.5", "row 4: seed must be an integer, got -inf"]:  # fmt: skip
        assert needle in text, (needle, text)
    assert not (tmp_path / "out").exists()
