"""Starting or joining Ray: what fails there is one line, not Ray's traceback."""

from __future__ import annotations

import pytest

from pipeline.errors import SignfeatError
from pipeline.ray_runtime import ensure_ray


@pytest.fixture()
def ray_down(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return ray


def test_a_local_instance_that_does_not_start_is_one_line(ray_down, monkeypatch):
    """On a busy machine the raylet gives up waiting for its agents, and ray.init raised a bare Exception."""
    def init(**kwargs):
        raise Exception("The current node timed out during startup. This could happen because some of the raylet failed to startup "
                        "or the GCS has become overloaded.")

    monkeypatch.setattr(ray_down, "init", init)
    with pytest.raises(SignfeatError, match=r"local Ray instance did not start in time.*--address auto"):
        ensure_ray(num_cpus=2)


def test_a_cluster_nobody_answers_at_is_one_line(ray_down, monkeypatch):
    def init(**kwargs):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to")

    monkeypatch.setattr(ray_down, "init", init)
    with pytest.raises(SignfeatError, match=r"cannot join the Ray cluster at 10\.0\.0\.9:6379 \(Could not find any running Ray instance"):
        ensure_ray(address="10.0.0.9:6379")


def test_other_errors_are_not_hidden(ray_down, monkeypatch):
    def init(**kwargs):
        raise ValueError("num_cpus must be positive")

    monkeypatch.setattr(ray_down, "init", init)
    with pytest.raises(ValueError, match="num_cpus"):
        ensure_ray(num_cpus=2)
