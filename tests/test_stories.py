"""Stories (prompt schedules): per-window conditioning, guidance and reflection at a switch, exact resume,
the bad-input rules, job identity, batch rows, the manifest and status."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from miga_ray.cli import app
from miga_ray.cluster.batch import plan_jobs
from miga_ray.cluster.prompts import PromptFileError, read_prompts
from miga_ray.config import ConfigError, job_id_for, job_identity, load_config
from miga_ray.render import JobRun
from miga_ray.sampling import (
    CallTrace,
    Conditioning,
    FifoConfig,
    FifoEngine,
    FlowEuler,
    MigaConfig,
    MigaEngine,
    NoiseSource,
    PromptSchedule,
    WindowRunner,
    flow_grid,
)
from miga_ray.sampling.windows import stage1_windows
from miga_ray.storage import LocalStore, ManifestRow, read_job, read_manifest, update_manifest
from test_render import Stop, decoded_frames, small_config, stop_after, toy  # noqa: F401 - the toy fixture
from toy_denoisers import MixingDenoiser

runner = CliRunner()
SHAPE = (1, 3, 4, 4)
F64 = torch.float64
RED, BLUE, GRASS = "a red circle moving over sand", "a blue circle moving over sand", "a blue circle moving over grass"
MIGA = MigaConfig(window=6, group=2, guidance=2, stage2_levels=4, stride=2)


class Recording:
    """A MixingDenoiser that records the context of every call (contexts are floats here)."""

    def __init__(self) -> None:
        self.inner, self.contexts = MixingDenoiser(SHAPE[1]), []

    def __call__(self, x, t, context):
        self.contexts.append(float(context))
        return self.inner(x, t, context)


def make_runner(model, cond, trace=None, T=20):
    return WindowRunner(model, FlowEuler(flow_grid(T, shift=3.0)), cond, NoiseSource(3, SHAPE, F64, "cpu"), trace)


def two_parts(at: int, transition: int = 0, respect: bool = True) -> PromptSchedule:
    return PromptSchedule((Conditioning(0.0), Conditioning(1.0)), (0, at), transition, respect)


def test_weights_switch_at_the_start_and_blend_over_the_transition():
    sharp, soft = two_parts(10), two_parts(10, transition=3)
    assert sharp.weights(9) == (1.0, 0.0) and sharp.weights(10) == (0.0, 1.0) and sharp.weights(-5) == (1.0, 0.0)
    assert [soft.weights(i)[1] for i in range(9, 15)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert sharp.window([8, 9, 10, 11], [False, True, True, False]).positive == 0.5  # the mean over the written latents
    plain = Conditioning(2.0)
    assert PromptSchedule((plain,)).window([0, 1], [True, True]) is plain
    with pytest.raises(ValueError, match="starts"):
        PromptSchedule((plain, plain), (0, 0))


@pytest.mark.parametrize("kind", ["miga", "fifo"])
def test_a_one_part_story_renders_exactly_the_plain_prompt(kind):
    def run(cond):
        r = make_runner(MixingDenoiser(SHAPE[1]), cond)
        engine = MigaEngine(r, MIGA, 30, dtype=F64) if kind == "miga" else FifoEngine(r, FifoConfig(window=6), 30, dtype=F64)
        return torch.stack([x for _, x in engine])

    assert torch.equal(run(Conditioning(0.5)), run(PromptSchedule((Conditioning(0.5),))))


@pytest.mark.parametrize("kind", ["miga", "fifo"])
def test_every_window_is_conditioned_on_the_latents_it_writes(tmp_path, kind):
    model, path = Recording(), tmp_path / "trace.jsonl"
    with path.open("w") as sink:
        r = make_runner(model, two_parts(14, transition=2), CallTrace(sink))
        engine = MigaEngine(r, MIGA, 30, dtype=F64) if kind == "miga" else FifoEngine(r, FifoConfig(window=6), 30, dtype=F64)
        out = [i for i, _ in engine]
    assert out == list(range(30))
    calls = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(calls) == len(model.contexts)
    schedule = two_parts(14, transition=2)
    seen = set()
    for call, context in zip(calls, model.contexts):
        written = [i for i, k in zip(call["latents"], call["kept"]) if k] or call["latents"]
        assert context == pytest.approx(np.mean([schedule.weights(i)[1] for i in written]))
        seen.add(round(context, 3))
    assert {0.0, 1.0} <= seen and seen - {0.0, 1.0}, "both texts and blends between them"


def test_guidance_never_reaches_across_a_switch():
    windows = stage1_windows(40, 8, 2, 2, 3, 0, False, barriers=[17])
    for w in windows:
        if w.write.start >= 17:
            assert all(j >= 17 for j in w.guide), w
    assert any(w.guide and w.write.start >= 17 for w in windows), "windows after the switch still have guidance"
    assert stage1_windows(40, 8, 2, 2, 3, 0, False) == stage1_windows(40, 8, 2, 2, 3, 0, False, barriers=[])


def test_miga_guidance_slots_stay_in_the_part_of_what_a_window_writes(tmp_path):
    path = tmp_path / "trace.jsonl"
    schedule = two_parts(16)
    with path.open("w") as sink:
        list(MigaEngine(make_runner(MixingDenoiser(SHAPE[1]), schedule, CallTrace(sink)), MIGA, 40, dtype=F64))
    stage1 = [json.loads(line) for line in path.read_text().splitlines()]
    stage1 = [c for c in stage1 if c["phase"] in ("fill", "stage1") and any(c["guidance"])]
    crossing = 0
    for c in stage1:
        first = next(i for i, k in zip(c["latents"], c["kept"]) if k)
        guides = [i for i, g in zip(c["latents"], c["guidance"]) if g]
        assert all(schedule.part_of(g) == schedule.part_of(first) for g in guides), c
        crossing += schedule.part_of(first) == 1
    assert crossing, "windows of the second part ran with guidance"


class SceneOfContext:
    """Exact flow velocity for data ``(1 - 2 c) * pattern`` under context c: the prompt decides the scene."""

    def __init__(self, pattern):
        self.pattern = pattern

    def __call__(self, x, t, context):
        sigma = (t.to(F64) / 1000.0).clamp(min=1e-3).view(1, 1, -1, 1, 1).to(x.dtype)
        return (x - (1 - 2 * float(context)) * self.pattern.unsqueeze(1).to(x.dtype)) / sigma


@pytest.mark.parametrize("respect", [True, False])
def test_reflection_does_not_judge_across_a_switch_when_it_respects_it(respect):
    pattern = torch.randn(SHAPE[1:], generator=torch.Generator().manual_seed(0), dtype=F64)
    cfg = MIGA.with_(reflect=True, reflect_during="always", reflect_after=3, reflect_refs=2, reflect_delta=0.01)
    engine = MigaEngine(make_runner(SceneOfContext(pattern), two_parts(20, respect=respect), T=16), cfg, 40, dtype=F64)
    out = torch.stack([x for _, x in engine])[:, 0]
    counts = engine.counters.reflections
    sign = torch.einsum("nchw,chw->n", out, pattern).sign()
    if respect:
        assert counts["paused_at_switch"] > 0 and counts["accepted_at_switch"] == 0
        assert (sign[:18] > 0).all() and (sign[22:] < 0).all(), sign  # each part shows its own scene
    else:
        assert counts["paused_at_switch"] == 0 and counts["judged"] > 0


def test_a_story_resumes_exactly_from_a_checkpoint():
    cfg = MIGA.with_(reflect=True, reflect_during="always", reflect_after=3)

    def engine():
        return MigaEngine(make_runner(MixingDenoiser(SHAPE[1]), two_parts(12, transition=2)), cfg, 30, dtype=F64)

    whole = [x for _, x in engine()]
    first = engine()
    part = [first.pull()[1] for _ in range(9)]
    tensors, meta = first.state_dict()
    second = engine()
    second.load_state_dict(tensors, json.loads(json.dumps(meta)))
    rest = [x for _, x in second]
    assert all(torch.equal(a, b) for a, b in zip(whole, part + rest)) and len(part + rest) == 30


@pytest.mark.parametrize(
    "parts,needle",
    [
        ([{"at": 3, "prompt": RED}], "story[0]: at is 3; the first entry must start at frame 0"),
        ([{"at": 0, "prompt": RED}, {"at": 0, "prompt": BLUE}], "story[1]: at 0 must be greater than story[0]'s at (0)"),
        ([{"at": 0, "prompt": RED}, {"at": 29, "prompt": BLUE}], "story[1]: at 29 points past the video's end (frames 29"),
        ([{"at": 0, "prompt": RED}, {"at": 9, "prompt": "  "}], "story[1] (at 9): empty prompt"),
        ([{"at": 0, "prompt": RED}, {"at": 9, "prompt": "a cat"}], "story[1] prompt 'a cat' is outside the toy model's grammar"),
        ([{"at": 0, "prompt": RED, "when": 2}], "story.parts.0.when: unknown key"),
    ],
)
def test_a_bad_story_exits_2_naming_the_entry_and_rule_with_nothing_written(tmp_path, parts, needle):
    (tmp_path / "story.json").write_text(json.dumps(parts))
    result = runner.invoke(app, ["render", "--story", str(tmp_path / "story.json"), "--frames", "29", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert not (tmp_path / "o").exists(), "nothing written"


def test_a_story_replaces_the_prompt_argument(tmp_path):
    (tmp_path / "s.yaml").write_text(f"- {{at: 0, prompt: {RED}}}\n")
    both = runner.invoke(app, ["render", RED, "--story", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o")])
    neither = runner.invoke(app, ["render", "--out", str(tmp_path / "o")])
    assert both.exit_code == 2 and "leave it out with a story" in both.output
    assert neither.exit_code == 2 and "give a prompt or a story" in neither.output


def story(*parts, **settings):
    return {"parts": [{"at": at, "prompt": p} for at, p in parts], **settings}


def test_job_identity_includes_the_story_and_plain_prompts_keep_theirs():
    plain = load_config(None, [], frames=40)
    assert "story" not in job_identity(RED, plain)["render"]  # ids of plain renders are as before stories existed
    a = load_config(None, [], story=story((0, RED), (20, BLUE)), frames=40)
    b = load_config(None, [], story=story((0, RED), (21, BLUE)), frames=40)
    c = load_config(None, ["story.transition=4"], story=story((0, RED), (20, BLUE)), frames=40)
    ids = {job_id_for(cfg.job_prompt(None), cfg) for cfg in (a, b, c)} | {job_id_for(RED, plain)}
    assert len(ids) == 4
    assert a.job_prompt(None) == f"{RED} -> {BLUE}" and c.story.transition == 4


def test_an_interrupted_story_render_resumes_to_the_same_latents(tmp_path, toy):  # noqa: F811 - the fixture
    cfg = small_config(**{"frames": 29, "sampler.miga.reflect_during": "always"})
    cfg = load_config(None, [], story=story((0, RED), (10, BLUE), (20, GRASS), transition=2), **cfg.model_dump(exclude={"story"}))
    prompt = cfg.job_prompt(None)
    whole = JobRun(LocalStore(tmp_path / "whole"), prompt, cfg, toy).run()
    store = LocalStore(tmp_path / "cut")
    with pytest.raises(Stop):
        JobRun(store, prompt, cfg, toy).run(stop_after(12))
    resumed = JobRun(store, prompt, cfg, toy).run()
    assert resumed.job_id == whole.job_id and resumed.resumed_from
    for i in range(29):
        name = f"latents/{i:06d}.safetensors"
        assert (tmp_path / "whole" / whole.job_id / name).read_bytes() == (tmp_path / "cut" / whole.job_id / name).read_bytes()
    record = read_job(store, whole.job_id)
    assert record.status == "done" and [p["at"] for p in record.config["render"]["story"]["parts"]] == [0, 10, 20]
    status = runner.invoke(app, ["status", str(tmp_path / "cut" / whole.job_id)])
    assert status.exit_code == 0 and f"from frame 10: {BLUE}" in status.output


def test_batch_rows_take_a_story_column(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"id": "plain", "prompt": RED}, {"id": "told", "story": json.dumps([{"at": 0, "prompt": RED}, {"at": 50, "prompt": BLUE}]), "frames": 90}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    jobs = plan_jobs(read_prompts(path), load_config(None, []))
    assert [j.prompt for j in jobs] == [RED, f"{RED} -> {BLUE}"]
    assert jobs[0].cfg.story is None and [p.at for p in jobs[1].cfg.story.parts] == [0, 50]
    bad = [{"prompt": RED, "story": '[{"at": 0, "prompt": "x"}]'}, {"story": '[{"at": 0, "prompt": "a red circle moving over sand"}, {"at": 200, "prompt": "a blue circle moving over sand"}]'}]
    path.write_text("".join(json.dumps(r) + "\n" for r in bad))
    with pytest.raises(PromptFileError, match="row 1: both prompt and story"):
        read_prompts(path)
    path.write_text(json.dumps(bad[1]) + "\n")
    with pytest.raises(PromptFileError, match=r"row 1: .*story\[1\]: at 200 points past the video's end"):
        plan_jobs(read_prompts(path), load_config(None, []))


def test_the_manifest_has_a_story_column(tmp_path):
    store = LocalStore(tmp_path)
    cfg = load_config(None, [], story=story((0, RED), (50, BLUE)), frames=90)
    update_manifest(store, [ManifestRow("told", cfg.job_prompt(None), 0, 90, "done", story=cfg.story_json()),
                            ManifestRow("plain", RED, 0, 90, "done")])  # fmt: skip
    told, plain = read_manifest(store)
    assert json.loads(told.story) == [{"at": 0, "prompt": RED}, {"at": 50, "prompt": BLUE}] and plain.story is None
    with pytest.raises(ConfigError):
        load_config(None, [], story=story((0, RED), (90, BLUE)), frames=90)


def test_the_story_study_measures_how_late_a_switch_is_seen():
    import importlib.util
    from pathlib import Path

    from miga_ray.models.toy_world import parse_prompt, render_clip

    spec = importlib.util.spec_from_file_location("story_study", Path(__file__).resolve().parents[1] / "jobs" / "story_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    entries = [{"at": 0, "prompt": RED}, {"at": 20, "prompt": BLUE}]
    red, blue = (render_clip(parse_prompt(p), 60, 64, 64, seed=1) for p in (RED, BLUE))
    late = np.concatenate([red[:25], blue[25:]])  # the change shows 5 frames after the switch
    first, second = study.score(late, entries)
    assert first["latency"] == 0 and second["latency"] == 5 and second["recognition"] == 1.0
    assert second["subject_consistency"] > 0.9
    never = study.score(red, entries)[1]
    assert never["latency"] == 40 and never["recognition"] == 0.0


def test_a_story_maps_frames_to_the_latents_a_4x_temporal_vae_decodes_them_from(tmp_path):
    from hub_standin import build_pipeline
    from miga_ray.engines import conditioning
    from miga_ray.models.registry import load_model

    build_pipeline().save_pretrained(tmp_path / "wan", safe_serialization=True)
    model = load_model(str(tmp_path / "wan"), torch.device("cpu"), torch.float32)
    assert model.vae_scale[0] == 4
    cfg = load_config(None, ["model.name=" + str(tmp_path / "wan")], story=story((0, "a"), (5, "b"), (9, "c")), frames=21)
    schedule = conditioning(model, cfg, [cfg.job_prompt(None)])
    assert schedule.starts == (0, 2, 3)  # frame 0 -> latent 0, frames 1-4 -> 1, 5-8 -> 2, 9-12 -> 3
    assert not torch.equal(schedule.parts[0].positive, schedule.parts[1].positive)
    same = load_config(None, ["model.name=" + str(tmp_path / "wan")], story=story((0, "a"), (5, "b"), (6, "c")), frames=21)
    with pytest.raises(ConfigError, match=r"story\[2\]: at 6 falls in the same latent as story\[1\] \(at 5\)"):
        conditioning(model, same, [same.job_prompt(None)])
