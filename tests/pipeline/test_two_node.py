"""The extraction job on a two-node Ray cluster on this one machine (`ray start --head` + a second
`ray start --address` on loopback): both nodes must do work and the output must verify."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from shards.verify import verify

# Each node offers one "sf_extract" slot and each of the two extractor actors takes one, so Ray must place
# one actor on each node (without it, Ray packs all the work onto one node when it fits there).
CONFIG = {
    "extractors": [{"name": "dinov2", "tiny": True, "num_cpus": 0.5, "actors": 2, "resources": {"sf_extract": 1}}],
    "shards": {"samples": 4, "prefix": "2n"},
    "clips_per_call": 2,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory):
    ray_bin = str(Path(sys.executable).parent / "ray")
    port, dashboard_port = _free_port(), _free_port()
    # Ray 2.60 enables token authentication unless told otherwise; every process of the cluster (both
    # `ray start`s and the driver) must agree, or the second node cannot join.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    # a short temp dir of its own: Ray's unix socket paths must stay under ~107 characters, and this
    # cluster is stopped by killing exactly its processes (`ray stop` would also stop the tests' own Ray)
    temp = Path(tempfile.mkdtemp(prefix="sf2n", dir="/tmp"))
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--temp-dir={temp}", '--resources={"sf_extract": 1}']
    try:
        # the head runs the dashboard: its job server is what `ray job submit` talks to
        # each node's dashboard agent gets a port of its own (its default, 52365, would be taken twice here)
        _ray_start([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dashboard_port}", f"--dashboard-agent-listen-port={_free_port()}", *common], env)
        _ray_start([ray_bin, "start", f"--address=127.0.0.1:{port}", "--num-cpus=2", f"--dashboard-agent-listen-port={_free_port()}", *common], env)
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard_port}", "env": env, "ray": ray_bin}
    finally:
        _kill_cluster(str(temp))
        shutil.rmtree(temp, ignore_errors=True)


def _ray_start(cmd: list[str], env: dict) -> None:
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, f"{' '.join(cmd)} failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"


def _kill_cluster(temp_dir: str) -> None:
    """Kill the processes started for this cluster (their command lines name its temp dir) and their children."""
    import psutil

    roots = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
    procs = {p.pid: p for r in roots for p in [r, *r.children(recursive=True)]}
    for p in procs.values():
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(procs.values()), timeout=30)


def _extract_args(demo_manifest: Path, tmp_path: Path) -> tuple[list[str], Path]:
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    out = tmp_path / "features"
    signfeat = str(Path(sys.executable).parent / "signfeat")
    return [signfeat, "extract", "--manifest", str(demo_manifest), "--out", str(out), "--config", str(config), "--no-progress"], out


def _check_both_nodes_worked(out: Path) -> None:
    job = json.loads((out / "job.json").read_text())
    nodes = job["clips_by_node"]
    assert len(nodes) == 2, nodes
    assert all(n.get("dinov2", 0) > 0 for n in nodes.values()), nodes  # each node's actor extracted clips
    assert sum(n.get("decode", 0) for n in nodes.values()) == job["samples"] + job["failures"] - job["failures_by_class"].get("lost", 0)
    report = verify(str(out))
    assert report["ok"], report["problems"]


@pytest.mark.timeout(600)
def test_extract_with_address_on_a_two_node_cluster(two_node_cluster, demo_manifest, tmp_path):
    args, out = _extract_args(demo_manifest, tmp_path)
    run = subprocess.run([*args, "--address", two_node_cluster["address"]], env=two_node_cluster["env"], capture_output=True, text=True, timeout=540)
    assert run.returncode == 0, run.stderr[-3000:]
    _check_both_nodes_worked(out)


@pytest.mark.timeout(600)
def test_the_same_job_under_ray_job_submit(two_node_cluster, demo_manifest, tmp_path):
    """README's `ray job submit` command: the entrypoint is plain `signfeat extract` (Ray sets RAY_ADDRESS for it)."""
    args, out = _extract_args(demo_manifest, tmp_path)
    submit = [two_node_cluster["ray"], "job", "submit", "--address", two_node_cluster["dashboard"], "--", *args]
    for _ in range(20):
        run = subprocess.run(submit, env=two_node_cluster["env"], capture_output=True, text=True, timeout=540)
        # the head's dashboard agent takes a while to come up after `ray start`; until then, Ray refuses
        # the submission (nothing was started, so trying again is safe)
        if "No available agent" not in run.stderr + run.stdout:
            break
        time.sleep(3)
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])  # `ray job submit` exits 1 when the job fails
    assert "succeeded" in run.stdout
    _check_both_nodes_worked(out)
