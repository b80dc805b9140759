"""Recovery on a simulated multi-node cluster (`ray.cluster_utils.Cluster`): two nodes carrying one
GPU-like `miga_gpu` each; removing the node under a running job resumes the job on the other node
from its last checkpoint, with the same clean latents as an uninterrupted run."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time

import pytest
import ray
from ray.cluster_utils import Cluster

from miga_ray.cluster.batch import BatchDriver, introduce
from miga_ray.cluster.jobs import BatchJob
from miga_ray.cluster.worker import CONCURRENCY_GROUPS, RenderWorker, actor_options
from miga_ray.config import load_config
from miga_ray.storage import LocalStore, open_store
from ray_helpers import wait_ready
from toy_model import TOY, toy_latents

BASE = ["model.device=cpu", f"model.name={TOY}", "sampler.num_levels=16", "sampler.miga.stage2_levels=3",
        "sampler.miga.reflect_after=4", "checkpoint.every_latents=2", "video.fps=8"]  # fmt: skip
PROMPT = "a red circle moving over sand"
NODE = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 80 * 2**20, "include_dashboard": False}


class SlowWorker(RenderWorker):
    """A worker that takes its time once a job passes frame 13, so the test sees it mid-run on any machine."""

    def _on_progress(self, p):
        super()._on_progress(p)
        if p.frames_done >= 13:
            time.sleep(0.5)


@pytest.fixture(scope="module")
def nodes():
    """A head without `miga_gpu` and two nodes with one each, token auth on; all shut down after."""
    temp = tempfile.mkdtemp(prefix="/tmp/mn")  # short: Ray's socket paths must fit in 107 bytes
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.setenv("RAY_TMPDIR", temp)  # Ray's address file goes here, not into a /tmp/ray shared with others
        os.makedirs(os.path.join(temp, "ray"))
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("PYTHONPATH", os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))  # SlowWorker
        mp.setenv("RAY_AUTH_TOKEN", os.environ.setdefault("MIGA_TEST_RAY_TOKEN", secrets.token_hex(32)))
        ray._raylet.Config.initialize("")  # this process's Ray config reads the auth mode again, as ray.init does
        cluster = None
        try:
            cluster = Cluster(initialize_head=True, head_node_args={**NODE, "temp_dir": temp})
            gpu_nodes = [cluster.add_node(**NODE, resources={"miga_gpu": 1}) for _ in range(2)]
            cluster.wait_for_nodes()
            cluster.connect()
            yield cluster, gpu_nodes
        finally:
            ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


def latents(root, job_id: str) -> list[bytes]:
    store = open_store(str(root))
    keys = store.list(f"{job_id}/latents/")
    assert len(keys) == toy_latents(29)
    return [store.get_bytes(k) for k in keys]


def test_removing_a_node_mid_job_resumes_it_on_the_other_node(nodes, tmp_path):
    cluster, gpu_nodes = nodes
    cfg = load_config(None, BASE, frames=29)
    cls = ray.remote(concurrency_groups=CONCURRENCY_GROUPS)(SlowWorker)
    workers = [cls.options(**actor_options(num_cpus=0, resources={"miga_gpu": 1})).remote(cfg, i, 2, 1) for i in range(2)]
    introduce(workers)
    infos = wait_ready(workers)
    assert sorted(i.node_id for i in infos) == sorted(n.node_id for n in gpu_nodes), "one worker per GPU node"
    job = BatchJob("job", PROMPT, cfg, 1)
    whole = BatchDriver(workers, str(tmp_path / "whole")).run([job])
    assert whole.states[0].outcome.status == "done"

    removed: list[int] = []

    def remove_node_under_the_job(e):
        if e["event"] == "progress" and e["frames_done"] >= 13 and not removed:
            removed.append(e["worker"])
            cluster.remove_node(next(n for n in gpu_nodes if n.node_id == infos[e["worker"]].node_id))

    result = BatchDriver(workers, str(tmp_path / "cut"), on_event=remove_node_under_the_job, poll_s=0.2).run([job])
    (state,) = result.states
    assert removed and state.attempts == 2 and state.failed_on == {removed[0]}
    assert state.outcome.status == "done" and state.outcome.worker != removed[0]
    assert state.outcome.node_id != infos[removed[0]].node_id
    assert state.outcome.resumed_from is not None and state.outcome.resumed_from > 0
    assert latents(tmp_path / "cut", "job") == latents(tmp_path / "whole", "job")
    assert LocalStore(tmp_path / "cut").exists("job/video.mp4")
    for w in workers:
        ray.kill(w)
