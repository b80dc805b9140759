"""The ``miga`` command: parse, validate once, call one function below. Exit 2 for usage and config
errors, 1 for runtime failures (with the cause, never a bare traceback)."""

from __future__ import annotations

import importlib
import json
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Column

from .config import ConfigError, RenderConfig, load_config, load_story

if TYPE_CHECKING:
    from .continuation import Start
    from .job import JobSpec
    from .render import Progress as RenderProgress

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Long, consistent videos from short-clip video diffusion models (MIGA).")
err = Console(stderr=True)
DEMO_PROMPT = ("red-circle", "a red circle moving over sand")  # readable job id (before "-<sampler>-s<seed>"), prompt
DEMO_SAMPLERS = ("fifo", "miga")  # the baseline first: the verdict says whether the second is ahead of it

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (see configs/)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override a config key, e.g. --set sampler.miga.group=7")]


def _fail(code: int, message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _render_config(config: Path | None, overrides: list[str] | None, **fields) -> RenderConfig:
    try:
        return load_config(config, overrides or (), **fields)
    except ConfigError as exc:
        _fail(2, str(exc))
        raise AssertionError  # unreachable


TICK_S = 0.5  # progress between clean latents at most this often


def _progress_bar(console: Console = err) -> Progress:
    """One row per job: id (shortened to fit), work bar, % of the sampler's work, frames, this run's fps, elapsed, ETA.

    Fits 80 columns: only the job id gives way. Paths printed on stdout do not pass through it.
    """
    return Progress(
        TextColumn("{task.description}", table_column=Column(ratio=1, min_width=8, no_wrap=True, overflow="ellipsis")),
        BarColumn(bar_width=12),
        TaskProgressColumn(),
        TextColumn("{task.fields[frames]} fr", table_column=Column(no_wrap=True)),
        TextColumn("{task.fields[fps]}", table_column=Column(no_wrap=True)),
        TimeElapsedColumn(table_column=Column(no_wrap=True)),
        TextColumn("eta {task.fields[eta]}", table_column=Column(no_wrap=True)),
        console=console,
        expand=True,
        redirect_stdout=False,
        redirect_stderr=False,
    )


def _clock(seconds: float | None) -> str:
    """``h:mm:ss``, or ``-:--:--`` when unknown."""
    return "-:--:--" if seconds is None else str(timedelta(seconds=round(seconds)))


def _bar_fields(p: dict[str, Any]) -> dict[str, Any]:
    """A job's progress (``render.Progress.as_dict``) as bar fields: work done of work needed, frames, this run's rate, ETA."""
    work = bool(p.get("work_total"))
    return {
        "total": p["work_total"] if work else p["frames_total"],
        "completed": p["work_done"] if work else p["frames_done"],
        "frames": f"{p['frames_done']}/{p['frames_total']}",
        "fps": f"{p['fps']:.1f} fps" if p["fps"] else "- fps",
        "eta": _clock(p.get("eta")),
    }


def _s3_endpoint_note(out: str) -> str:
    """`` (endpoint URL)`` for an s3:// output, as boto3 resolves it (AWS_ENDPOINT_URL, config files), else ""."""
    if not out.startswith("s3://"):
        return ""
    try:
        import boto3

        return f" (endpoint {boto3.session.Session().client('s3').meta.endpoint_url})"
    except Exception:  # noqa: BLE001 - only decorates an error message; the store error is what matters
        return ""


def _print_path(bar: Progress, path: str) -> None:
    """A finished video's path on stdout at once (above the live bar when both share a terminal)."""
    if bar.live.is_started and bar.console.is_terminal and sys.stdout.isatty():
        bar.console.print(path, markup=False, highlight=False, soft_wrap=True)
    else:
        print(path, flush=True)


def render_jobs(
    prompts: list[str], cfg: RenderConfig, out: str, job_ids: list[str | None], restart: bool, trace: Path | None, side_by_side: bool = False,
    start: Start | None = None, workers: int | None = None,
) -> list[str]:
    """Render prompts into ``out`` (``side_by_side``: as many at once as there are CPUs) with a progress bar;
    print each video's path on stdout the moment it is finished and return them all. ``start``: what the
    videos continue (an init video, or the finished job an extension continues). ``workers``: each render's
    model calls split over that many Ray workers (the same video)."""
    from .job import JobSpec

    return render_specs([JobSpec(prompt, cfg, start) for prompt in prompts], out, job_ids, restart, trace, side_by_side, workers)


def render_specs(
    specs: list[JobSpec], out: str, job_ids: list[str | None], restart: bool, trace: Path | None, side_by_side: bool = False,
    workers: int | None = None,
) -> list[str]:
    """``render_jobs`` for jobs given whole (each its own settings, one model for all, e.g. FIFO beside MIGA)."""
    for spec in specs:
        spec.cfg.check_prompt(spec.prompt)
    with ExitStack() as cluster:
        split = None
        if workers is not None:
            from .cluster.split import split_workers  # Ray: joined or started before anything is written

            split = cluster.enter_context(split_workers(workers, specs[0].cfg))
        return _render_jobs(specs, out, job_ids, restart, trace, side_by_side, split)


def _render_jobs(
    specs: list[JobSpec], out: str, job_ids: list[str | None], restart: bool, trace: Path | None, side_by_side: bool,
    split: list | None,
) -> list[str]:
    """``render_specs`` once its workers (if any) have started."""
    from .storage import StoreError, open_store

    try:
        store = open_store(out)  # checks the store is usable
    except (StoreError, ValueError, OSError) as exc:
        _fail(2, f"--out {out}{_s3_endpoint_note(out)}: {exc}")
    from .engines import load_for
    from .job import render_job
    from .render import check_identity, cpu_threads, usable_cpus  # bad input has failed before torch loads

    ids = [job_id or spec.default_id() for spec, job_id in zip(specs, job_ids)]
    if not restart:
        for spec, job_id in zip(specs, ids):
            check_identity(store, job_id, spec)  # a job holding another render fails before the model loads
    model = load_for(specs[0].cfg)  # one model for every job (their model settings are the same)
    at_once = min(len(specs), usable_cpus()) if side_by_side else 1
    if model.device.type == "cpu":
        import torch

        threads, why = cpu_threads(at_once)
        torch.set_num_threads(threads)
        err.print(f"{at_once} render{'s' * (at_once > 1)} at once, {threads} CPU thread{'s' * (threads > 1)} each ({why})", highlight=False)
    stop: list[str] = []  # the signal that stops every render (at its next progress tick)
    with ExitStack() as stack, _progress_bar() as bar:
        sink = stack.enter_context(trace.open("a", encoding="utf-8")) if trace else None

        def one(spec: JobSpec, job_id: str) -> str:
            splitting = None
            if split:
                import ray

                from .cluster.split import splitter

                splitting = splitter(split, ray.put((spec.cfg, spec.prompt)))
            frames = spec.cfg.frames
            task = bar.add_task(job_id, total=None, completed=0, frames=f"0/{frames}", fps="- fps", eta=_clock(None))

            def show(p: RenderProgress) -> None:
                if stop:
                    raise KeyboardInterrupt(stop[0])
                bar.update(task, **_bar_fields(p.as_dict()))

            result = render_job(store, spec, model, job_id, on_progress=show, tick_s=TICK_S, restart=restart, trace=sink, split=splitting)
            if result.not_evaluated:  # another process took the job over at once: the video is done all the same
                bar.console.print(f"{result.job_id}: not evaluated: {result.not_evaluated}", highlight=False, markup=False)
            path = f"{out.rstrip('/')}/{result.job_id}/video.mp4"
            if result.skipped:
                bar.update(task, total=1, completed=1, frames=f"{frames}/{frames}", eta="done")
                bar.console.print(f"{result.job_id}: already done ({result.record.frames_done} frames)", highlight=False)
            _print_path(bar, path)
            return path

        with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="render") as pool:
            futures = [pool.submit(one, s, j) for s, j in zip(specs, ids)]
            try:
                return [f.result() for f in futures]
            except KeyboardInterrupt as exc:
                stop.append(str(exc) or "SIGINT")  # every render records 'interrupted' and stops
                raise


def _guard(fn, *args, **kwargs):
    """Run a command body: config errors exit 2, anything else exits 1 with its cause."""
    try:
        return fn(*args, **kwargs)
    except typer.Exit:
        raise
    except ConfigError as exc:
        _fail(2, str(exc))
    except KeyboardInterrupt as exc:
        sig = signal.Signals.__members__.get(str(exc), signal.SIGINT)  # KeyboardInterrupt("SIGTERM") from _raise_interrupt
        _fail(128 + sig.value, f"interrupted ({sig.name}); run the same command again to resume from the last checkpoint")
    except Exception as exc:  # noqa: BLE001 - the command line reports every failure as its cause
        logging.getLogger(__name__).debug("failure", exc_info=True)
        _fail(1, f"{type(exc).__name__}: {exc}")


@app.command()
def render(
    prompt: Annotated[Optional[str], typer.Argument(help="what to render, e.g. 'a red circle moving over sand' (left out with --story)")] = None,
    out: Annotated[str, typer.Option("--out", "-o", help="local directory or s3://bucket/prefix")] = "out",
    story: Annotated[Optional[Path], typer.Option("--story", help="a prompt schedule (YAML or JSON): a list of {at: FRAME, prompt: TEXT}, the first at 0")] = None,
    frames: Annotated[Optional[int], typer.Option(help="output frames")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="miga | fifo")] = None,
    model: Annotated[Optional[str], typer.Option(help="toy | wan2.1-1.3b-random | vc2-random | HUB_ID | DIR (diffusers Wan) | FILE.ckpt (VideoCrafter2)")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda | cuda:N")] = None,
    seed: Annotated[Optional[int], typer.Option(help="random seed")] = None,
    trace: Annotated[Optional[Path], typer.Option(help="write the sampler's call trace (JSON lines) here")] = None,
    job_id: Annotated[Optional[str], typer.Option("--job-id", help="default: a slug of the prompt plus a hash of prompt, seed and settings")] = None,
    restart: Annotated[bool, typer.Option("--restart", help="discard this job's output and checkpoints first")] = False,
    init_video: Annotated[Optional[Path], typer.Option("--init-video", help="continue this video file or image: the output starts with its frames as they are (scaled to the render), the sampler continues them")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="split the render's model calls over N Ray workers, each a model replica (a local Ray, or the cluster at RAY_ADDRESS; one GPU each where it has GPUs): the same video, faster")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Render one long video; running the same command again resumes it (on any number of --workers).

    Example: miga render "a red circle moving over sand" --frames 600 --out out
    """
    if workers is not None and workers < 1:
        _fail(2, f"--workers: must be at least 1 (got {workers})")
    overrides = list(set_ or [])
    overrides += [f"sampler.kind={sampler}"] if sampler else []
    overrides += [f"model.name={model}"] if model else []
    overrides += [f"model.device={device}"] if device else []
    try:
        cfg = load_config(config, overrides, story=load_story(story) if story else None, frames=frames, seed=seed)
        prompt = cfg.job_prompt(prompt)
    except ConfigError as exc:
        _fail(2, str(exc))
    if job_id is not None:
        from .storage import check_job_id

        try:
            check_job_id(job_id)
        except ValueError as exc:
            _fail(2, f"--job-id: {exc}")
    start = None
    if init_video is not None:
        from .continuation import InitVideo
        from .storage.clips import probe_clip

        try:
            start = InitVideo(probe_clip(init_video, max_frames=cfg.frames))
        except ValueError as exc:
            _fail(2, f"--init-video {exc}")
        if start.clip.count >= cfg.frames:
            _fail(2, f"--frames: must exceed the frames of --init-video {init_video} (it has {cfg.frames} or more; got {cfg.frames})")
    _guard(render_jobs, [prompt], cfg, out, [job_id], restart, trace, start=start, workers=workers)


@app.command()
def extend(
    job: Annotated[str, typer.Argument(help="<out>/<job_id> of a finished job (local or s3://), as miga status takes it")],
    frames: Annotated[int, typer.Option(help="the length to extend it to (more than it has)")],
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda | cuda:N (default: the job's)")] = None,
) -> None:
    """Continue a finished job to more frames, in place, from its stored clean latents; running it again resumes it.

    Example: miga extend out/a-red-circle-moving-over-sand-7978b9cceb34 --frames 600
    """
    _guard(_extend, job, frames, device)


def _extend(uri: str, frames: int, device: str | None) -> None:
    """``miga extend``: the job's prompt and settings at the new length, continuing its clean latents."""
    from .config import build_config
    from .continuation import Extension, check_length
    from .job import StoredJob
    from .storage import open_store, read_job

    base, _, job_id = uri.rstrip("/").rpartition("/")
    if not job_id:
        _fail(2, f"{uri}: expected <out>/<job_id>")
    out = base or "."
    record = read_job(open_store(out, check=False), job_id)
    if record is None:
        _fail(2, f"{uri}: no job there (no job.json)")
    assert record is not None
    stored = StoredJob.of(record)
    if stored.prompt is None or not stored.settings or stored.identity is None or stored.frames is None:
        raise ConfigError(f"{uri}: its job.json records no prompt and settings this version can read")
    if (extension := stored.extension()) is not None and stored.frames == frames:  # this very extension, interrupted or done
        start = extension
    elif record.status != "done":
        raise ConfigError(f"job {job_id} is {record.status}, not done: finish it (run its command again) before extending it")
    else:
        start = Extension(stored.identity, stored.frames)
    check_length(start, frames)
    settings = stored.settings | {"frames": frames}
    if device is not None:
        settings["model"] = {**settings.get("model", {}), "device": device}
    render_jobs([stored.prompt], build_config(settings), out, [job_id], False, None, start=start)


@app.command()
def demo(
    out: Annotated[str, typer.Option("--out", "-o")] = "out/demo",
    frames: Annotated[Optional[int], typer.Option(help="frames per video (default 600)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Render the toy demo: one prompt with FIFO-Diffusion and with MIGA, 600 frames each, side by side on this
    machine's CPUs; prints each video's path as soon as it is finished, then the numbers that compare them
    (the toy world's consistency and drift figures) and whether MIGA is ahead on them.

    Example: miga demo --config configs/demo.yaml --out out/demo
    """
    from .job import JobSpec

    name, prompt = DEMO_PROMPT
    cfgs = [_render_config(config, [f"sampler.kind={kind}"], frames=frames or (None if config else 600)) for kind in DEMO_SAMPLERS]
    specs = [JobSpec(prompt, cfg) for cfg in cfgs]
    job_ids: list[str | None] = [f"{name}-{cfg.sampler.kind}-s{cfg.seed}" for cfg in cfgs]
    _guard(render_specs, specs, out, job_ids, False, None, side_by_side=True)
    if all(cfg.evaluation.enabled for cfg in cfgs):
        print(_guard(_demo_comparison, out, {cfg.sampler.kind.upper(): job_id for cfg, job_id in zip(cfgs, job_ids) if job_id}))


def _demo_comparison(out: str, jobs: dict[str, str]) -> str:
    """The demo's jobs (name -> job id) side by side: their toy-world means and drift figures, and the verdict."""
    from .evaluation.compare import CONSISTENCY, Variant, table, verdict
    from .storage import open_store, read_job
    from .storage.quality import EVALUATION

    store = open_store(out)
    variants = [Variant(name, [read_job(store, job_id).metrics[EVALUATION]["drift"]]) for name, job_id in jobs.items()]
    return "\n".join([table(variants, list(CONSISTENCY)), verdict(*variants),
                      "(one prompt, one seed, the shipped toy model; the study over many prompts: docs/RESULTS.md)"])


@app.command()
def status(
    uri: Annotated[str, typer.Argument(help="<out>/<job_id>, e.g. out/a-red-circle-moving-over-sand-7978b9cceb34, or <out> for every job of a run")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
) -> None:
    """Progress of a job, read from storage alone (status never writes).

    Example: miga status out/a-red-circle-moving-over-sand-7978b9cceb34 --json
    """
    from .storage import JobLayout, open_store, read_job, video_problem

    text = uri.rstrip("/")
    base, _, job = text.rpartition("/")
    if not job:
        _fail(2, f"{uri}: expected <out>/<job_id>")
    bucket_root = text.startswith("s3://") and "/" not in text.removeprefix("s3://")
    store = None if bucket_root else _guard(open_store, base or ".", False)
    record = None if store is None else _guard(lambda: read_job(store, job))
    if record is None:
        _print_run_status(uri, as_json)  # not a job: maybe a run directory (manifest and/or jobs)
        return
    damage = _guard(video_problem, store, JobLayout(job)) if record.status == "done" else None
    if as_json:
        print(json.dumps(json.loads(record.to_json()) | ({"damage": damage} if damage else {}), indent=2, sort_keys=True))
    else:
        from .cluster.report import story_of

        print(f"{record.job_id}: {record.status}, {record.frames_done}/{record.frames_total} frames" + (f" ({record.error})" if record.error else ""))
        if split := record.metrics.get("split"):
            print(f"  split over {split['workers']} workers ({split['live']} live): {split['calls_in_flight']} calls in flight, "
                  f"{split['calls_done']} done, {split['calls_retried']} run again (as of the last checkpoint)")
        _print_story(story_of(record))
    if damage:
        _fail(1, f"job {job} is done but damaged: {damage}; run its render command again to rebuild it from the stored latents")


def _print_story(story: list[dict] | None) -> None:
    """A story job's parts, one line each under its status line."""
    for part in story or []:
        print(f"  from frame {part['at']}: {part['prompt']}")


def _print_run_status(uri: str, as_json: bool) -> None:
    """Every job of a run directory (its manifest plus any job.json), or exit 1 if there are none."""
    from .cluster.report import run_status
    from .storage import open_store

    jobs = _guard(lambda: run_status(open_store(uri, check=False)))
    if not jobs:
        _fail(1, f"{uri}: no job.json there, and no manifest.parquet or job directories")
    if as_json:
        print(json.dumps([vars(j) for j in jobs], indent=2))
    else:
        for j in jobs:
            print(f"{j.job_id}: {j.status}, {j.frames_done}/{j.frames_total} frames" + (f" ({j.error})" if j.error else ""))
            _print_story(j.story)
    if problems := [j.job_id for j in jobs if j.status == "problem"]:
        _fail(1, f"{len(problems)} job(s) with a problem: {', '.join(problems)}")


WorkersOpt = Annotated[Optional[int], typer.Option("--workers", "-w", min=1, help="worker actors (default: one per GPU in the cluster, else 1)")]
AddressOpt = Annotated[Optional[str], typer.Option(help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray on 127.0.0.1)")]
ResourceOpt = Annotated[Optional[str], typer.Option(help="custom Ray resource each worker claims one of, instead of a GPU or a CPU share")]
CpusOpt = Annotated[float, typer.Option(min=0.01, help="CPUs per worker on a cluster without GPUs")]
FanoutOpt = Annotated[int, typer.Option(min=0, help="peer workers a worker may send reflection candidates to")]
AttemptsOpt = Annotated[int, typer.Option(min=1, help="attempts per job before it is reported failed")]
PerJobOpt = Annotated[int, typer.Option("--workers-per-job", help="workers each job is split over (teams of this many; the same videos)")]


def _check_per_job(per_job: int, workers: int | None) -> None:
    """Exit 2 naming --workers-per-job when it is below 1 or above --workers."""
    if per_job < 1 or (workers is not None and per_job > workers):
        _fail(2, f"--workers-per-job {per_job}: must be from 1 to --workers ({workers if workers is not None else 'one per GPU'})")


def _batch_bar_events(bar: Progress):
    """A batch event handler that keeps one progress-bar row per job."""
    tasks: dict[str, int] = {}

    def on_event(e: dict) -> None:
        job = e.get("job_id")
        if job is None:
            return
        if job not in tasks:
            tasks[job] = bar.add_task(job, total=None, frames="-", fps="- fps", eta=_clock(None))
        task = tasks[job]
        if e["event"] == "progress":
            bar.update(task, **_bar_fields(e))
        elif e["event"] == "done":
            bar.update(task, total=bar.tasks[task].total or 1, completed=bar.tasks[task].total or 1, eta="done")
        elif e["event"] in ("retry", "failed"):
            bar.console.print(f"{job}: {e['event']} after failing on worker {e['worker']}: {escape(e['error'])}", highlight=False)

    return on_event


@app.command()
def batch(
    prompts: Annotated[Path, typer.Argument(help="Parquet, JSONL or CSV with columns id, prompt (or story: a JSON list of {at, prompt}) and optionally frames, seed, negative_prompt")],
    out: Annotated[str, typer.Option("--out", "-o", help="local directory or s3://bucket/prefix")] = "out",
    workers: WorkersOpt = None,
    address: AddressOpt = None,
    resource: ResourceOpt = None,
    cpus: CpusOpt = 0.5,
    fanout: FanoutOpt = 2,
    max_attempts: AttemptsOpt = 3,
    workers_per_job: PerJobOpt = 1,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Render a prompt set on Ray workers, longest first; failed jobs resume on another worker.

    Bad rows are all reported (with row numbers) before anything renders. Running the same command
    again skips finished jobs and resumes partial ones. Writes <out>/manifest.parquet.

    Example: miga batch prompts.jsonl --config configs/demo.yaml --out out/batch --workers 2
    """
    from .cluster.report import summary
    from .cluster.run import run_batch

    _check_per_job(workers_per_job, workers)
    cfg = _render_config(config, list(set_ or []))
    with _progress_bar() as bar:
        result = _guard(run_batch, prompts, cfg, out, workers, address, resource, cpus, fanout, max_attempts, _batch_bar_events(bar), workers_per_job)
    print(summary(result))
    print(f"{out.rstrip('/')}/manifest.parquet")
    print(f"{out.rstrip('/')}/index.html")
    if result.failed:
        raise typer.Exit(1)


@app.command()
def submit(
    prompts: Annotated[Path, typer.Argument(help="Parquet, JSONL or CSV prompt set (shipped with the job)")],
    address: Annotated[str, typer.Option(envvar="RAY_API_SERVER_ADDRESS", help="the cluster's dashboard, e.g. http://head:8265")],
    out: Annotated[str, typer.Option("--out", "-o", help="s3://bucket/prefix (or a path on the cluster's shared disk)")],
    workers: WorkersOpt = None,
    resource: ResourceOpt = None,
    cpus: CpusOpt = 0.5,
    fanout: FanoutOpt = 2,
    max_attempts: AttemptsOpt = 3,
    workers_per_job: PerJobOpt = 1,
    token_file: Annotated[Optional[Path], typer.Option(help="file holding the cluster's auth token (default: RAY_AUTH_TOKEN)")] = None,
    env: Annotated[Optional[list[str]], typer.Option(help="NAME=VALUE for the job's environment, e.g. AWS_ENDPOINT_URL=...; not for secrets")] = None,
    submission_id: Annotated[Optional[str], typer.Option(help="Ray job id (default: generated)")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="follow the job's logs until it ends")] = True,
    timeout: Annotated[Optional[float], typer.Option(min=1, help="stop following after this many seconds (exit 1; the job keeps running)")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Run `miga batch` on a Ray cluster as a Ray Job; prints the job id, then its logs and final status.

    Example: miga submit prompts.parquet --address http://head:8265 --out s3://bucket/runs --config configs/wan2.1-1.3b-miga.yaml
    """
    from .cluster.submit import auth_token, follow, job_env, submit_batch

    cfg = _render_config(config, list(set_ or []))
    variables = _guard(job_env, env or [])
    _check_per_job(workers_per_job, workers)
    args = ["--cpus", str(cpus), "--fanout", str(fanout), "--max-attempts", str(max_attempts), "--workers-per-job", str(workers_per_job)]
    args += (["--workers", str(workers)] if workers else []) + (["--resource", resource] if resource else [])
    token = _guard(auth_token, token_file)
    client, job_id = _guard(submit_batch, address, prompts, cfg, out, args, token, variables, submission_id)
    print(job_id, flush=True)
    if not wait:
        return
    final = _guard(follow, client, job_id, lambda text: err.print(text, end="", markup=False, highlight=False), timeout_s=timeout)
    print(f"{job_id}: {final}")
    if final != "SUCCEEDED":
        raise typer.Exit(1)


def _eval_run(out: str, dino: Path | None, clip: Path | None, bins: int) -> None:
    """``miga eval OUT``: evaluate every done job of OUT that lacks numbers, rewrite its manifest and gallery;
    exit 1 after all of it when a job has a missing or corrupt job.json or video."""
    from .config import EvaluationSettings
    from .evaluation.job import evaluate_run
    from .gallery import write_gallery
    from .storage import open_store

    settings = EvaluationSettings(dino=str(dino) if dino else None, clip=str(clip) if clip else None, bins=bins)
    store = open_store(out, check=False)
    if store.exists("video.m3u8") or store.exists("video.mp4"):
        _fail(1, f"{out}: a job directory whose job.json is missing; nothing to evaluate it against")
    said = {"evaluated": "evaluated", "had": "already evaluated", "not done": "not done", "busy": "being written, skipped", "problem": "PROBLEM"}
    results = evaluate_run(store, settings, lambda r: print(f"{r.job_id}: {said[r.outcome]}" + (f" ({r.detail})" if r.detail else ""), flush=True))
    if not results:
        raise ConfigError(f"{out}: neither a video file, a job (<out>/<job_id> with a job.json), nor an output directory with jobs")
    problems = {r.job_id: r.detail for r in results if r.outcome == "problem"}
    write_gallery(store, problems)
    print(f"{out.rstrip('/')}/manifest.parquet\n{out.rstrip('/')}/index.html")
    if problems:
        _fail(1, f"{len(problems)} job(s) could not be evaluated: {', '.join(problems)}")


def _is_run_directory(target: str) -> bool:
    """Whether ``miga eval`` was given an output directory (an existing directory or a bucket prefix, not a job)."""
    from .storage import open_store

    exists = target.startswith("s3://") or Path(target).is_dir()
    return exists and not open_store(target, check=False).exists("job.json")


@app.command("eval")
def eval_(
    target: Annotated[str, typer.Argument(help="a video file, a job as <out>/<job_id>, or a whole output directory or bucket prefix")],
    prompt: Annotated[Optional[str], typer.Option(help="for a bare video: its prompt (enables the toy-world analyzer)")] = None,
    dino: Annotated[Optional[Path], typer.Option(help="local DINO ViT-B/16 weights directory (subject consistency)")] = None,
    clip: Annotated[Optional[Path], typer.Option(help="local CLIP ViT-B/32 weights directory (background consistency)")] = None,
    bins: Annotated[int, typer.Option(min=1, help="toy-world drift curves: bins of frames (at most one per frame)")] = 10,
) -> None:
    """VBench-form consistency numbers of a video or a finished job (JSON on stdout), or of every job of an
    output directory (recorded in each job.json, the manifest and index.html; exit 1 if a job is broken).

    Without --dino/--clip a weight-free pixel fallback is used and labelled as such. For a toy-world
    prompt the analyzer's ground truth follows, and a drift section: per measure its mean, a curve over
    --bins bins of frames and the drift figure (mean over the last quarter minus the first); save it and
    compare variants with `miga compare`.
    Example: miga eval out/a-red-circle-moving-over-sand-7978b9cceb34 > a.json; miga eval out/batch
    """
    from .evaluation.report import evaluate

    if _guard(_is_run_directory, target):
        _guard(_eval_run, target, dino, clip, bins)
        return

    report = _guard(evaluate, target, prompt, str(dino) if dino else None, str(clip) if clip else None, bins)
    if isinstance(report.get("toy_world"), str):
        err.print(f"note: {escape(report['toy_world'])}", highlight=False, soft_wrap=True)
    print(json.dumps(report, indent=2))


@app.command()
def compare(
    files: Annotated[list[Path], typer.Argument(help="one JSON file per variant: `miga eval` output or drift summaries (a list or .jsonl: one per video)")],
    png: Annotated[Optional[Path], typer.Option(help="draw every metric's curves, one line per variant, into this PNG")] = None,
    metric: Annotated[Optional[list[str]], typer.Option(help="a metric to show (repeatable); default: subject and background consistency and the colour, shape, size and count rates")] = None,
) -> None:
    """Toy-world drift of several variants side by side: a table of means and drift figures, and curves in one PNG.

    Example: miga eval fifo.mp4 --prompt "a red circle moving over sand" > fifo.json; (the same for miga.json);
    miga compare fifo.json miga.json --png drift.png
    """
    from .evaluation.compare import compare as compare_variants

    print(_guard(compare_variants, files, png, metric))
    if png is not None:
        print(png)


@app.command()
def gallery(
    out: Annotated[str, typer.Argument(help="output directory or s3://bucket/prefix of a run")],
    presign: Annotated[Optional[float], typer.Option(min=0.01, max=168, help="HOURS: for a private bucket, write index.presigned.html whose links are presigned for this long, and print its URL")] = None,
) -> None:
    """(Re)write the run's gallery page, <out>/index.html: a card per job, sortable, filterable, each playing its video.

    Example: miga gallery out/batch; miga gallery s3://bucket/runs --presign 24
    """
    from .gallery import write_gallery
    from .storage import S3Store, open_store, run_job_ids

    if presign is not None and not out.startswith("s3://"):
        _fail(2, f"--presign: only for an s3:// output (a local gallery links its files relatively), got {out}")
    store = _guard(open_store, out, False)
    if not _guard(run_job_ids, store):
        _fail(2, f"{out}: no jobs there (no manifest.parquet and no job directories)")
    key = _guard(write_gallery, store, None, None if presign is None else round(presign * 3600))
    print(store.presigned_url(key, round(presign * 3600)) if isinstance(store, S3Store) and presign is not None else f"{out.rstrip('/')}/{key}")


bench_app = typer.Typer(help="Benchmarks that print measured numbers (recorded in docs/PERF.md).")
app.add_typer(bench_app, name="bench")
BENCHES = {
    "sampler": "Model calls per output latent and sampler bookkeeping time, with a zero-cost model.",
    "frames": "Model forwards and wall time per output frame: the base sampler, FIFO and MIGA with the real model.",
    "memory": "Peak process memory of whole renders at two lengths, each in a fresh process.",
    "overhead": "Share of a render's wall time outside the model forward and the VAE decode.",
    "storage": "S3 (SeaweedFS on loopback) against a local directory: render time, checkpoints, restarts.",
    "cluster": "Ray on this machine: throughput with 1 vs 2 workers, driver overhead, reflection fan-out.",
    "split": "One render's true schedule split over N Ray workers with a stand-in model that sleeps: predicted and measured speedups.",
    "gpu": "Wan2.1-1.3B architecture with random weights: one forward, seconds per frame, peak GPU memory.",
    "vc2": "VideoCrafter2 architecture with random weights: parameters and one window forward at a reduced size.",
}
# a benchmark's options and --help are those of its module: everything after the name goes to it
BENCH_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _add_bench(name: str, summary: str) -> None:
    """Register ``miga bench <name>``, which runs ``python -m miga_ray.benchmarks.<name>`` with the same arguments."""

    def command(ctx: typer.Context) -> None:
        module = importlib.import_module(f"miga_ray.benchmarks.{name}")
        _guard(module.main, ctx.args, prog=f"miga bench {name}")

    bench_app.command(name, help=f"{summary} Options and an example: miga bench {name} --help", context_settings=BENCH_CONTEXT)(command)


for _name, _summary in BENCHES.items():
    _add_bench(_name, _summary)


def _raise_interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops a render as Ctrl-C does: job.json says 'interrupted' and how to resume."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    app()


if __name__ == "__main__":
    main()
