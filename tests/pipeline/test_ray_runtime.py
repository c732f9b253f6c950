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
    monkeypatch.setattr("pipeline.ray_runtime.check_address", lambda address: None)  # it answers, then Ray gives up
    with pytest.raises(SignfeatError, match=r"cannot join the Ray cluster at 10\.0\.0\.9:6379 \(Could not find any running Ray instance"):
        ensure_ray(address="10.0.0.9:6379")


def test_other_errors_are_not_hidden(ray_down, monkeypatch):
    def init(**kwargs):
        raise ValueError("num_cpus must be positive")

    monkeypatch.setattr(ray_down, "init", init)
    with pytest.raises(ValueError, match="num_cpus"):
        ensure_ray(num_cpus=2)


def test_an_address_nobody_answers_at_is_said_at_once():
    """ray.init(address=HOST:PORT) with nothing listening retried for minutes ("Failed to connect to GCS") and never
    raised; a malformed address was a ValueError traceback."""
    import socket

    from pipeline.ray_runtime import check_address

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens on it now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(SignfeatError, match=rf"cannot reach the Ray cluster at 127\.0\.0\.1:{port} \("):
        check_address(f"127.0.0.1:{port}", timeout_s=5)
    for bad in ("garbage", "127.0.0.1:", ":6379", "host:port"):
        with pytest.raises(SignfeatError, match="expected HOST:PORT"):
            check_address(bad)
    with socket.socket() as server:  # something listening: passed on to Ray
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_address(f"127.0.0.1:{server.getsockname()[1]}")
    check_address("auto")
    check_address("local")  # ray.init's own word for "start one here"
    check_address("ray://10.0.0.1:10001")


def test_a_malformed_address_that_ray_refuses_is_one_line(ray_down, monkeypatch):
    def init(**kwargs):
        raise ValueError("Invalid Ray address: http://127.0.0.1:8265")

    monkeypatch.setattr(ray_down, "init", init)
    monkeypatch.setattr("pipeline.ray_runtime.check_address", lambda address: None)
    with pytest.raises(SignfeatError, match=r"--address http://127\.0\.0\.1:8265: Invalid Ray address"):
        ensure_ray(address="http://127.0.0.1:8265")
