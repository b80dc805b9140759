"""Helpers shared by the Ray tests."""

from __future__ import annotations

import time

import ray


def wait_ready(workers, timeout_s: float = 300.0):
    """Each worker's info once it answers (a restarting actor refuses calls until it is back; on a loaded
    2-core machine a restart, which reloads the model, took over 120 s)."""
    give_up = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get([w.ready.remote() for w in workers], timeout=timeout_s)
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > give_up:
                raise
            time.sleep(0.5)
