"""Quality numbers kept with every job and the gallery page: `miga render` records its evaluation in
job.json, the manifest has a float column per quality number, `miga eval OUT` fills in missing numbers
without re-rendering and reports broken jobs (exit 1), and index.html works in headless Chromium from a
local directory, over HTTP (a running job's live HLS) and from a private bucket with presigned links."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from browser import card_ids, chromium_page, play_card
from miga_ray.cli import app
from miga_ray.cluster.worker import RenderWorker
from miga_ray.config import EvaluationSettings, load_config
from miga_ray.gallery import GALLERY
from miga_ray.gallery.page import gallery_cards
from miga_ray.storage import LocalStore, ManifestRow, read_job, read_manifest, update_manifest
from miga_ray.storage.quality import EVALUATION, QUALITY_COLUMNS, quality_values
from toy_model import TOY

runner = CliRunner()
SMALL = [f"--set={s}" for s in (f"model.name={TOY}", "model.device=cpu", "sampler.num_levels=16", "sampler.miga.stage2_levels=3",
                                "sampler.miga.reflect_after=4", "video.fps=8")]  # fmt: skip
PROMPTS = {
    "red": ("a red circle moving over sand", 0),
    "blue": ("a blue circle moving over grass", 3),
}
EVIL = "<img src=x onerror=\"document.title='pwned'\"></script>"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """Two small toy renders made by `miga render` (which evaluates each when its video is done)."""
    out = tmp_path_factory.mktemp("gallery") / "out"
    for job_id, (prompt, seed) in PROMPTS.items():
        result = runner.invoke(
            app,
            ["render", prompt, "--frames", "13", "--seed", str(seed), "--job-id", job_id, "--out", str(out), *SMALL],
        )
        assert result.exit_code == 0, result.output
    return out


def test_miga_render_records_the_evaluation_in_job_json(rendered):
    record = read_job(LocalStore(rendered), "red")
    report = record.metrics[EVALUATION]
    assert report["frames"] == 13 and report["vbench"]["subject_features"].startswith("pixels")
    assert record.timings["evaluate"] > 0
    values = quality_values(record.metrics)
    assert all(values[c] is not None for c in ("overall", "toy_color_rate", "drift_subject_consistency")), values
    alone = runner.invoke(app, ["eval", str(rendered / "red")])  # the same numbers `miga eval <job>` prints
    assert alone.exit_code == 0 and json.loads(alone.stdout)["vbench"]["overall"] == pytest.approx(values["overall"])


def test_the_manifest_has_a_float_column_per_quality_number(rendered, tmp_path):
    record = read_job(LocalStore(rendered), "red")
    store = LocalStore(tmp_path / "m")
    rows = [
        ManifestRow("red", "p", 0, 13, "done", metrics=record.metrics),
        ManifestRow("bare", "p", 0, 13, "failed", error="boom"),
    ]
    update_manifest(store, rows)
    table = pq.read_table(tmp_path / "m" / "manifest.parquet")
    assert all(str(table.schema.field(c).type) == "double" for c in QUALITY_COLUMNS)
    columns = table.to_pydict()
    assert columns["overall"] == [pytest.approx(record.metrics[EVALUATION]["vbench"]["overall"]), None]
    assert columns["toy_count_rate"][0] == pytest.approx(record.metrics[EVALUATION]["drift"]["mean"]["count_rate"])
    assert [r.id for r in read_manifest(store)] == ["red", "bare"]  # still reads back as rows


def _broken_run(rendered: Path, run: Path) -> None:
    """The two good jobs (blue without its numbers) beside a job directory for each thing that can be wrong."""
    for job_id in ("red", "blue"):
        shutil.copytree(rendered / job_id, run / job_id)
    for name in ("nojson", "corrupt", "novideo", "badvideo", "evil"):
        shutil.copytree(rendered / "red", run / name)
        record = json.loads((run / name / "job.json").read_text())
        record["job_id"] = name
        record["metrics"].pop(EVALUATION)
        (run / name / "job.json").write_text(json.dumps(record))
    blue = json.loads((run / "blue" / "job.json").read_text())
    blue["metrics"].pop(EVALUATION)
    (run / "blue" / "job.json").write_text(json.dumps(blue))
    (run / "nojson" / "job.json").unlink()
    (run / "corrupt" / "job.json").write_text('{"job_id": "corrupt", "status": ')
    (run / "novideo" / "video.mp4").unlink()
    (run / "badvideo" / "video.mp4").write_bytes((rendered / "red" / "video.mp4").read_bytes()[:2000])
    evil = json.loads(
        (run / "evil" / "job.json").read_text()
    )  # a running job (live playlist, no MP4) with a hostile prompt
    evil |= {"status": "running", "frames_done": 8, "config": evil["config"] | {"prompt": EVIL}}
    (run / "evil" / "job.json").write_text(json.dumps(evil))
    for name in ("video.mp4", "contact_sheet.png"):
        (run / "evil" / name).unlink()


def _mtimes(run: Path) -> dict[str, int]:
    return {
        str(p): p.stat().st_mtime_ns
        for p in run.rglob("*")
        if p.is_file() and p.name != "job.json" and p.parent.name != "lease"
    }


def test_miga_eval_on_an_output_directory_then_the_gallery_in_chromium(rendered, tmp_path):
    run = tmp_path / "run"
    _broken_run(rendered, run)
    before = _mtimes(run)
    result = runner.invoke(app, ["eval", str(run)])
    assert result.exit_code == 1, result.output
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert (
        lines["red"] == "already evaluated"
        and lines["blue"].startswith("evaluated")
        and lines["evil"] == "not done (running)"
    )
    assert lines["nojson"] == "PROBLEM (nojson/job.json is missing)" and lines["corrupt"].startswith(
        "PROBLEM (corrupt/job.json is corrupt"
    )
    assert lines["novideo"].startswith("PROBLEM (video.mp4 is missing; run its render command again") and lines["badvideo"].startswith(
        "PROBLEM (video.mp4 differs from the one written (sha256 mismatch)"
    )
    assert "4 job(s) could not be evaluated" in result.output
    assert _mtimes(run) == before | {str(run / "manifest.parquet"): _mtimes(run)[str(run / "manifest.parquet")],
                                     str(run / GALLERY): _mtimes(run)[str(run / GALLERY)]}, "nothing but job.json, manifest and page written"  # fmt: skip
    fresh = read_job(LocalStore(run), "blue").metrics[EVALUATION]
    assert fresh["vbench"] == read_job(LocalStore(rendered), "blue").metrics[EVALUATION]["vbench"]
    table = pq.read_table(run / "manifest.parquet").to_pydict()
    overall = dict(zip(table["id"], table["overall"]))
    assert set(overall) == {"red", "blue", "novideo", "badvideo", "evil"}  # every job with a readable job.json
    assert overall["blue"] == pytest.approx(fresh["vbench"]["overall"]) and overall["badvideo"] is None

    with chromium_page() as page:
        page.goto((run / GALLERY).as_uri())
        assert sorted(card_ids(page)) == sorted(["red", "blue", "nojson", "corrupt", "novideo", "badvideo", "evil"])
        problem = {
            i: page.text_content(f'.card[data-id="{i}"] .wrong') for i in ("nojson", "corrupt", "novideo", "badvideo")
        }
        assert "job.json is missing" in problem["nojson"] and "job.json is corrupt" in problem["corrupt"]
        assert "video.mp4 is missing" in problem["novideo"] and "video.mp4 differs from the one written" in problem["badvideo"]
        assert page.query_selector('.card[data-id="red"] .wrong') is None
        assert page.text_content('.card[data-id="evil"] .prompt') == EVIL and page.title() != "pwned"
        assert page.query_selector(".prompt img") is None
        worst_first = [i for i in card_ids(page) if i in ("red", "blue")]  # default: overall ascending
        assert overall[worst_first[0]] <= overall[worst_first[1]]
        page.click("#dir")
        assert [i for i in card_ids(page) if i in ("red", "blue")] == worst_first[::-1]
        page.fill("#filter", "status=done overall>0")
        assert sorted(card_ids(page)) == ["blue", "red"] and page.text_content("#count") == "2 of 7 jobs"
        page.fill("#filter", "")
        assert play_card(page, "red") > 0.2
        page.click(
            '.card[data-id="evil"] .media'
        )  # from file:// Chromium cannot play HLS: the card says where the playlist is
        page.wait_for_selector('.card[data-id="evil"] .hint a[href="evil/video.m3u8"]')
        page.screenshot(path=str(tmp_path / "gallery.png"), full_page=True)
        if os.environ.get("MIGA_GALLERY_SCREENSHOT"):  # how docs/gallery.png was made
            shutil.copy(tmp_path / "gallery.png", os.environ["MIGA_GALLERY_SCREENSHOT"])
    assert (tmp_path / "gallery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_over_http_a_running_job_s_card_plays_its_live_playlist(rendered, tmp_path):
    run = tmp_path / "run"
    _broken_run(rendered, run)
    assert runner.invoke(app, ["gallery", str(run)]).exit_code == 0
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(run))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with chromium_page() as page:
            page.goto(f"http://127.0.0.1:{server.server_port}/{GALLERY}")
            assert play_card(page, "evil") > 0.2  # native HLS from the job's video.m3u8
            assert page.eval_on_selector('.card[data-id="evil"] video', "v => v.currentSrc").endswith("evil/video.m3u8")
    finally:
        server.shutdown()


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, "", b""


def test_a_presigned_gallery_of_a_private_bucket(rendered, make_s3_store, s3_env, monkeypatch):
    store = make_s3_store()
    for path in (rendered / "red").rglob("*"):
        if path.is_file():
            store.put_file(f"red/{path.relative_to(rendered / 'red').as_posix()}", path)
    out = f"s3://{s3_env.bucket}/{store.prefix}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)
    result = runner.invoke(app, ["gallery", out, "--presign", "1"])
    assert result.exit_code == 0, result.output
    url = result.stdout.strip()
    status, kind, body = _get(url)
    assert status == 200 and kind.startswith("text/html") and "X-Amz-Signature" in url
    page_text = body.decode()
    assert s3_env.secret_key not in page_text
    data = json.loads(page_text.split('id="gallery-data">', 1)[1].split("</script>", 1)[0])
    (job,) = data["jobs"]
    assert job["video"].startswith(s3_env.endpoint) and job["sheet"].startswith(s3_env.endpoint)
    assert _get(job["video"])[2] == (rendered / "red" / "video.mp4").read_bytes()
    assert _get(f"{s3_env.endpoint}/{s3_env.bucket}/{store.prefix}/red/video.mp4")[0] == 403, "the bucket is private"
    with chromium_page() as page:
        page.goto(url)
        assert card_ids(page) == ["red"] and play_card(page, "red") > 0.2
    plain = runner.invoke(app, ["gallery", out])
    assert plain.exit_code == 0 and plain.stdout.strip() == f"{out}/{GALLERY}"
    assert '"video": "red/video.mp4"' in store.get_bytes(GALLERY).decode()


@pytest.mark.parametrize("args", [["--presign", "0"], ["--presign", "200"]])
def test_gallery_presign_bad_input_is_a_usage_error(args, tmp_path):
    result = runner.invoke(app, ["gallery", str(tmp_path), *args])
    assert result.exit_code == 2 and "presign" in result.output.lower()


def test_presign_of_a_local_directory_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["gallery", str(tmp_path), "--presign", "1"])
    assert result.exit_code == 2 and "only for an s3:// output" in result.output


def test_gallery_of_a_directory_without_jobs_is_a_usage_error_and_creates_nothing(tmp_path):
    result = runner.invoke(app, ["gallery", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no jobs there" in result.output and not (tmp_path / "nowhere").exists()


def test_miga_eval_of_a_job_directory_without_its_job_json_says_so(rendered, tmp_path):
    shutil.copytree(rendered / "red", tmp_path / "red")
    (tmp_path / "red" / "job.json").unlink()
    result = runner.invoke(app, ["eval", str(tmp_path / "red")])
    assert result.exit_code == 1 and "job.json is missing" in result.output
    assert not (tmp_path / "red" / "manifest.parquet").exists()


def test_a_batch_worker_evaluates_while_its_model_lock_is_held(rendered, tmp_path):
    """The worker's evaluation needs neither the model lock nor the device: it finishes while a forward holds them."""
    shutil.copytree(rendered / "blue", tmp_path / "blue")
    record = json.loads((tmp_path / "blue" / "job.json").read_text())
    record["metrics"].pop(EVALUATION)
    (tmp_path / "blue" / "job.json").write_text(json.dumps(record))
    worker = RenderWorker(load_config(None, [s.removeprefix("--set=") for s in SMALL]), threads=1)
    with worker.lock:  # another job's model call, for as long as the evaluation takes
        outcome: list = []
        thread = threading.Thread(
            target=lambda: outcome.append(worker.evaluate("blue", str(tmp_path), EvaluationSettings()))
        )
        thread.start()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the evaluation waited for the model lock"
    assert (
        outcome[0].metrics[EVALUATION]["vbench"] == read_job(LocalStore(rendered), "blue").metrics[EVALUATION]["vbench"]
    )


def test_a_story_jobs_card_lists_its_parts_with_their_frames(tmp_path):
    story = tmp_path / "story.yaml"
    story.write_text("- {at: 0, prompt: a red circle moving over sand}\n- {at: 7, prompt: a blue circle moving over grass}\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["render", "--story", str(story), "--frames", "13", "--job-id", "story", "--out", str(out), *SMALL])
    assert result.exit_code == 0, result.output
    (card,) = gallery_cards(LocalStore(out))
    assert card.prompt == "frame 0: a red circle moving over sand | frame 7: a blue circle moving over grass"


def test_gallery_links_never_take_a_scheme_from_a_directory_name(tmp_path):
    """Links are relative keys, percent-encoded: a job directory named ``javascript:...`` is a path, not a script."""
    out = tmp_path / "out"
    for name in ("javascript:alert(1)", "data:text", "ok"):
        (out / name).mkdir(parents=True)
        (out / name / "video.mp4").write_bytes(b"not really a video")
        (out / name / "video.m3u8").write_text("#EXTM3U\n")
    from miga_ray.gallery import write_gallery

    write_gallery(LocalStore(out))
    page = (out / GALLERY).read_text()
    data = json.loads(page.split('id="gallery-data">', 1)[1].split("</script>", 1)[0])
    links = {job["id"]: (job["video"], job["playlist"]) for job in data["jobs"]}
    assert links == {"javascript:alert(1)": ("javascript%3Aalert%281%29/video.mp4", "javascript%3Aalert%281%29/video.m3u8"),
                     "data:text": ("data%3Atext/video.mp4", "data%3Atext/video.m3u8"), "ok": ("ok/video.mp4", "ok/video.m3u8")}  # fmt: skip
