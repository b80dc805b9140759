"""``miga submit``: a batch as a Ray Job. The prompt file and the fully resolved config travel in
the job's ``working_dir``; the entrypoint is ``miga batch`` on the cluster, where ``RAY_ADDRESS``
points it at the cluster it runs in.

Authentication: Ray 2.60 clusters require a token by default. The token comes from ``--token-file``
or ``RAY_AUTH_TOKEN`` and is sent as ``Authorization: Bearer <token>``; it is never put in the
job's runtime env or metadata.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml
from ray.job_submission import JobStatus, JobSubmissionClient

from ..config import ConfigError, RenderConfig
from .prompts import read_prompts

TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
SECRET_PARTS = ("PASS", "SECRET", "TOKEN", "KEY", "CREDENTIAL")  # in a variable's name, whatever the case and separators
_URL_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s]+@")  # scheme://user[:password]@host
CREDENTIALS_HOWTO = (
    "a Ray job's environment is stored in its runtime_env and shown in Ray's logs and dashboard; give the cluster's "
    "nodes their own credentials instead (an instance role or a Kubernetes Secret as in infra/, ~/.aws on every node, "
    "or the environment `ray start` ran with)"
)


def job_env(entries: Sequence[str]) -> dict[str, str]:
    """``--env NAME=VALUE`` entries as a dict; ConfigError (exit 2) for a malformed entry, a name that looks like a
    secret or a URL value carrying credentials, naming the variables but never echoing a value."""
    pairs = [e.partition("=") for e in entries]
    malformed = [name[:40] + "=..." for name, sep, _ in pairs if not name or not sep]
    if malformed:
        raise ConfigError(f"--env: expected NAME=VALUE, got {malformed}")
    named = [n for n, _, _ in pairs if any(p in re.sub(r"[^A-Z0-9]", "", n.upper()) for p in SECRET_PARTS)]
    if named:
        raise ConfigError(f"--env {', '.join(named)}: looks like a secret (a name with {', '.join(SECRET_PARTS)}); {CREDENTIALS_HOWTO}")
    in_urls = [n for n, _, v in pairs if _URL_USERINFO.search(v)]
    if in_urls:
        raise ConfigError(f"--env {', '.join(in_urls)}: its value is a URL with credentials (user:password@); {CREDENTIALS_HOWTO}")
    return {n: v for n, _, v in pairs}


def auth_token(token_file: Path | None = None) -> str | None:
    """The cluster token: the file's content if given, else ``RAY_AUTH_TOKEN``, else None."""
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--token-file {token_file}: {exc.strerror or exc}") from None
        if not token:
            raise ConfigError(f"--token-file {token_file}: empty")
        return token
    return os.environ.get("RAY_AUTH_TOKEN") or None


def client_for(address: str, token: str | None) -> JobSubmissionClient:
    """A job client for the cluster's dashboard address, with the token as a bearer header."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return JobSubmissionClient(address, headers=headers)


def package(prompts: Path, cfg: RenderConfig, into: Path) -> tuple[str, str]:
    """Copy the prompt file and write the resolved config into ``into``; return their names there."""
    name = "prompts" + prompts.suffix.lower()
    shutil.copyfile(prompts, into / name)
    (into / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=True))
    return name, "config.yaml"


def entrypoint(prompt_name: str, config_name: str, out: str, batch_args: Sequence[str]) -> str:
    """The shell command the Ray Job runs on the cluster."""
    args = ["python", "-m", "miga_ray.cli", "batch", prompt_name, "--config", config_name, "--out", out, *batch_args]
    return shlex.join(args)


def submit_batch(
    address: str,
    prompts: Path,
    cfg: RenderConfig,
    out: str,
    batch_args: Sequence[str] = (),
    token: str | None = None,
    env: dict[str, str] | None = None,
    submission_id: str | None = None,
) -> tuple[JobSubmissionClient, str]:
    """Validate locally (bad rows fail here, exit 2), then submit; return the client and the job id."""
    read_prompts(prompts)
    client = client_for(address, token)
    with tempfile.TemporaryDirectory(prefix="miga-submit-") as tmp:
        prompt_name, config_name = package(prompts, cfg, Path(tmp))
        runtime_env = {"working_dir": tmp, "env_vars": {"RAY_USAGE_STATS_ENABLED": "0", **(env or {})}}
        job_id = client.submit_job(
            entrypoint=entrypoint(prompt_name, config_name, out, batch_args),
            runtime_env=runtime_env,
            submission_id=submission_id,
            metadata={"miga": "batch", "out": out},
        )
    return client, job_id


def follow(client: JobSubmissionClient, job_id: str, echo: Callable[[str], None], poll_s: float = 2.0, timeout_s: float | None = None) -> JobStatus:
    """Poll the job until it ends, echoing new log text as it appears; return its final status."""
    shown = 0
    give_up = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        if len(logs) > shown:
            echo(logs[shown:])
            shown = len(logs)
        if status in TERMINAL:
            return status
        if give_up is not None and time.monotonic() > give_up:
            raise TimeoutError(f"Ray job {job_id} still {status} after {timeout_s:.0f} s; it keeps running on the cluster "
                               f"(`ray job logs --follow {job_id}`, `ray job stop {job_id}`)")
        time.sleep(poll_s)
