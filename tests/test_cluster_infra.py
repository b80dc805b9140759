"""infra/: the KubeRay RayJob runs a valid `miga batch` with S3 credentials from a Secret on GPU
workers, and the Dockerfile installs CUDA torch at the project's pinned version."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import typer
import yaml

from miga_ray.cli import app
from miga_ray.cluster.prompts import read_prompts
from miga_ray.config import load_config

INFRA = Path(__file__).resolve().parents[1] / "infra"


def manifest():
    docs = {d["kind"]: d for d in yaml.safe_load_all((INFRA / "kuberay-rayjob.yaml").read_text())}
    return docs["ConfigMap"], docs["RayJob"]


def test_rayjob_entrypoint_is_a_valid_batch_on_its_configmap(tmp_path):
    config_map, job = manifest()
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text)
    args = shlex.split(job["spec"]["entrypoint"])
    assert args[:4] == ["python", "-m", "miga_ray.cli", "batch"]
    assert args[args.index("--out") + 1].startswith("s3://")
    assert len(read_prompts(tmp_path / Path(args[4]).name)) == 2
    local = [str(tmp_path / Path(a).name) if a.startswith("/miga/input/") else a for a in args[4:]]
    batch = typer.main.get_command(app).commands["batch"]
    params = batch.make_context("batch", local).params  # click parses and type-checks every option
    assert params["workers"] == 4 and params["max_attempts"] == 3
    assert load_config(params["config"]).model.device == "cuda"


def test_pods_get_s3_from_a_secret_and_the_ray_token_and_workers_get_gpus():
    _, job = manifest()
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    for container in (head, worker):
        assert {"secretRef": {"name": "miga-s3"}} in container["envFrom"]
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    submitter = {e["name"] for e in job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["env"]}
    assert "RAY_AUTH_TOKEN" in submitter
    assert "AWS_ENDPOINT_URL" in (INFRA / "kuberay-rayjob.yaml").read_text()


def test_dockerfile_installs_the_pinned_torch_from_a_cuda_index():
    docker = (INFRA / "Dockerfile").read_text()
    pin = re.search(r'"torch==([\d.]+)"', (INFRA.parent / "pyproject.toml").read_text()).group(1)
    assert f"ARG TORCH_VERSION={pin}" in docker
    assert re.search(r"ARG TORCH_INDEX=https://download\.pytorch\.org/whl/cu\d+", docker)
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}", docker, re.M) and "nvidia/cuda:" in docker
    assert "pip install ." in docker
