"""The ``miga`` command: parse, validate once, call one function below. Exit 2 for usage and config
errors, 1 for runtime failures (with the cause, never a bare traceback)."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .config import ConfigError, RenderConfig, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Long, consistent videos from short-clip video diffusion models (MIGA).")
err = Console(stderr=True)
DEMO_PROMPTS = ("a red circle moving over sand", "a yellow square and a blue triangle moving over grass")

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


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[fps]:.2f} fps"),
        TextColumn("reflect {task.fields[reflect]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
    )


def render_jobs(prompts: list[str], cfg: RenderConfig, out: str, job_ids: list[str | None], restart: bool, trace: Path | None) -> list[str]:
    """Render prompts one after another into ``out`` with a progress bar; return where the videos are."""
    from .render import JobRun, load_for
    from .storage import StoreError, open_store

    try:
        store = open_store(out)
        store.check()
    except (StoreError, ValueError, OSError) as exc:
        _fail(2, f"--out {out}: {exc}")
    model = load_for(cfg)
    videos = []
    with ExitStack() as stack, _progress_bar() as bar:
        sink = stack.enter_context(trace.open("a", encoding="utf-8")) if trace else None
        for prompt, job_id in zip(prompts, job_ids):
            run = JobRun(store, prompt, cfg, model, job_id=job_id, restart=restart, trace=sink)
            task = bar.add_task(run.job.job_id[:32], total=cfg.frames, fps=0.0, reflect="-")

            def show(p, task=task):
                r = p.counters.reflections
                bar.update(task, completed=p.frames_done, fps=p.fps, reflect=f"{r.get('triggered', 0)}/{r.get('accepted', 0)}")

            result = run.run(show)
            videos.append(f"{out.rstrip('/')}/{result.job_id}/video.mp4")
    return videos


def _guard(fn, *args, **kwargs):
    """Run a command body: config errors exit 2, anything else exits 1 with its cause."""
    try:
        return fn(*args, **kwargs)
    except typer.Exit:
        raise
    except ConfigError as exc:
        _fail(2, str(exc))
    except KeyboardInterrupt:
        _fail(130, "interrupted; run the same command again to resume from the last checkpoint")
    except Exception as exc:  # noqa: BLE001 - the command line reports every failure as its cause
        logging.getLogger(__name__).debug("failure", exc_info=True)
        _fail(1, f"{type(exc).__name__}: {exc}")


@app.command()
def render(
    prompt: Annotated[str, typer.Argument(help="what to render, e.g. 'a red circle moving over sand'")],
    out: Annotated[str, typer.Option("--out", "-o", help="local directory or s3://bucket/prefix")] = "out",
    frames: Annotated[Optional[int], typer.Option(help="output frames")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="miga | fifo")] = None,
    model: Annotated[Optional[str], typer.Option(help="toy | PATH | HUB_ID | wan2.1-1.3b-random")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda | cuda:N")] = None,
    seed: Annotated[Optional[int], typer.Option(help="random seed")] = None,
    trace: Annotated[Optional[Path], typer.Option(help="write the sampler's call trace (JSON lines) here")] = None,
    job_id: Annotated[Optional[str], typer.Option("--job-id", help="default: from the prompt and seed")] = None,
    restart: Annotated[bool, typer.Option("--restart", help="discard this job's output and checkpoints first")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Render one long video; running the same command again resumes it.

    Example: miga render "a red circle moving over sand" --frames 600 --out out
    """
    overrides = list(set_ or [])
    overrides += [f"sampler.kind={sampler}"] if sampler else []
    overrides += [f"model.name={model}"] if model else []
    overrides += [f"model.device={device}"] if device else []
    cfg = _render_config(config, overrides, frames=frames, seed=seed)
    videos = _guard(render_jobs, [prompt], cfg, out, [job_id], restart, trace)
    print(videos[0])


@app.command()
def demo(
    out: Annotated[str, typer.Option("--out", "-o")] = "out/demo",
    frames: Annotated[Optional[int], typer.Option(help="frames per video (default 600)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Render the toy demo: 2 prompts x 600 frames with MIGA on this machine; prints where the videos are.

    Example: miga demo --config configs/demo.yaml --out out/demo
    """
    cfg = _render_config(config, [], frames=frames or (None if config else 600))
    for video in _guard(render_jobs, list(DEMO_PROMPTS), cfg, out, [None] * len(DEMO_PROMPTS), False, None):
        print(video)


@app.command()
def status(
    uri: Annotated[str, typer.Argument(help="<out>/<job_id>, e.g. out/a-red-circle-moving-over-sand-s0")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
) -> None:
    """Progress of a job, read from storage alone.

    Example: miga status out/a-red-circle-moving-over-sand-s0 --json
    """
    from .storage import open_store, read_job

    base, _, job = uri.rstrip("/").rpartition("/")
    if not job:
        _fail(2, f"{uri}: expected <out>/<job_id>")
    record = _guard(lambda: read_job(open_store(base or "."), job))
    if record is None:
        _fail(1, f"{uri}: no job.json there")
    if as_json:
        print(record.to_json().decode())
    else:
        print(f"{record.job_id}: {record.status}, {record.frames_done}/{record.frames_total} frames" + (f" ({record.error})" if record.error else ""))


bench_app = typer.Typer(help="Benchmarks that print measured numbers (recorded in docs/PERF.md).")
app.add_typer(bench_app, name="bench")


@bench_app.command("sampler")
def bench_sampler(latents: int = 600) -> None:
    """Model calls per output latent and sampler bookkeeping time.

    Example: miga bench sampler --latents 600
    """
    from .benchmarks import sampler

    sys.argv = ["miga bench sampler", "--latents", str(latents)]
    sampler.main()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
