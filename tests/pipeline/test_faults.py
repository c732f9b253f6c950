"""Faults in the middle of a real `signfeat extract` run (a subprocess with its own local Ray):

- an extractor actor killed with SIGKILL mid-job: Ray restarts it and retries its work, the job completes
  and every clip lands in a shard, none in failures because of the kill;
- the driver killed with SIGKILL mid-job (with every process of its Ray): a rerun of the same command skips
  the committed shards, redoes the rest, and ends with no duplicate and no missing key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from shards.store import Store
from shards.verify import verify

CONFIG = {
    "extractors": [{"name": "dinov2", "tiny": True, "num_cpus": 0.5, "actors": 1}],
    "shards": {"samples": 2, "prefix": "f"},
    "clips_per_call": 1,
}
COPIES = 4  # the demo corpus's ok clips, four times over (new ids and keys): a job long enough to hit mid-way


@pytest.fixture(scope="module")
def long_manifest(demo_manifest, tmp_path_factory) -> tuple[Path, list[str]]:
    table = pq.read_table(demo_manifest)
    ok = [r for r in table.to_pylist() if r["status"] == "ok" and r["source_kind"] in ("video", "range")]
    rows = [{**r, "id": f"{r['id']}-c{c}", "key": f"{r['key']}_c{c}"} for c in range(COPIES) for r in ok]
    path = tmp_path_factory.mktemp("faults") / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    return path, [r["key"] for r in rows]


def _start(manifest: Path, out: Path, config: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, not the tests' one
    signfeat = str(Path(sys.executable).parent / "signfeat")
    return subprocess.Popen([signfeat, "extract", "--manifest", str(manifest), "--out", str(out), "--config", str(config), "--no-progress"],
                            env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_shards(out: Path, job: subprocess.Popen, at_least: int, timeout: float = 300) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = len(Store(str(out)).done_shards()) if (out / "_signfeat").exists() else 0
        if done >= at_least:
            return done
        assert job.poll() is None, "the job ended before the fault could be injected"
        time.sleep(0.2)
    raise AssertionError(f"no {at_least} complete shards within {timeout} s")


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def _check_exactly_once(out: Path, planned: list[str]) -> tuple[list[dict], list[dict]]:
    index = pq.read_table(out / "index.parquet").to_pylist()
    failures = pq.read_table(out / "failures.parquet").to_pylist()
    placed = [r["key"] for r in index] + [r["key"] for r in failures]
    assert len(placed) == len(set(placed)), "a key landed twice"
    assert sorted(placed) == sorted(planned), "a planned key is missing"
    report = verify(str(out))
    assert report["ok"], report["problems"]
    return index, failures


def _write_config(path: Path) -> Path:
    path.write_text(yaml.safe_dump(CONFIG))
    return path


@pytest.mark.timeout(600)
def test_a_killed_extractor_actor_is_restarted_and_the_job_completes(long_manifest, tmp_path):
    manifest, planned = long_manifest
    out, log = tmp_path / "features", tmp_path / "job.log"
    job = _start(manifest, out, _write_config(tmp_path / "job.yaml"), log)
    try:
        done_before = _wait_for_shards(out, job, at_least=1)
        # the actor's process title is set by Ray to name its class, e.g. ray::MapWorker(MapBatches(ExtractStream))
        actors = [p for p in _descendants(job.pid) if "ExtractStream" in " ".join(p.cmdline())]
        assert len(actors) == 1, [p.cmdline() for p in _descendants(job.pid)]
        os.kill(actors[0].pid, signal.SIGKILL)
        assert job.poll() is None and done_before < len(planned) // CONFIG["shards"]["samples"], "the kill must land mid-job"
        assert job.wait(timeout=500) == 0, log.read_text()[-4000:]
    finally:
        _kill_all(_descendants(job.pid))
        if job.poll() is None:
            job.kill()
    index, failures = _check_exactly_once(out, planned)
    # the kill is Ray's problem, not the clips': none of them failed because of it
    assert failures == [], failures
    assert len(index) == len(planned)


@pytest.mark.timeout(600)
def test_a_killed_driver_then_a_rerun_gives_every_key_once(long_manifest, tmp_path):
    manifest, planned = long_manifest
    config, out, log = _write_config(tmp_path / "job.yaml"), tmp_path / "features", tmp_path / "job.log"
    job = _start(manifest, out, config, log)
    try:
        _wait_for_shards(out, job, at_least=2)
        ray_processes = _descendants(job.pid)  # its local Ray (GCS, raylet, workers) dies with it
        os.killpg(job.pid, signal.SIGKILL)
        _kill_all(ray_processes)
        job.wait(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    committed = Store(str(out)).done_shards()
    total_shards = -(-len(planned) // CONFIG["shards"]["samples"])
    assert 2 <= len(committed) < total_shards, "the driver must die mid-job"
    assert not (out / "job.json").exists()

    rerun = _start(manifest, out, config, log)
    assert rerun.wait(timeout=500) == 0, log.read_text()[-4000:]
    summary = json.loads((out / "job.json").read_text())
    assert summary["shards_skipped_as_complete"] >= len(committed)  # shards committed before the kill were kept
    index, failures = _check_exactly_once(out, planned)
    assert failures == [] and len(index) == len(planned)
    # no temporary file of the killed run is left where readers look for shards
    assert sorted(p.name for p in out.rglob("*.tar")) == sorted(f"{s.split('/')[-1]}.tar" for s in Store(str(out)).done_shards())
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # half-written files of the killed run are gone


@pytest.mark.timeout(600)
def test_sigterm_stops_the_driver_cleanly_and_a_rerun_completes(long_manifest, tmp_path):
    """SIGTERM (what timeout, Slurm, Kubernetes and systemd send) to the driver alone was answered by the failure
    handler Ray installs in it: a native stack dump ('*** SIGTERM received ... PC: @') and an abort. It now stops
    the job as Ctrl-C does, exit 143, and the local Ray goes with it; a rerun goes on."""
    manifest, planned = long_manifest
    config, out, log = _write_config(tmp_path / "job.yaml"), tmp_path / "features", tmp_path / "job.log"
    job = _start(manifest, out, config, log)
    try:
        _wait_for_shards(out, job, at_least=1)
        ray_processes = _descendants(job.pid)
        job.send_signal(signal.SIGTERM)
        code = job.wait(timeout=120)
        gone, alive = psutil.wait_procs(ray_processes, timeout=60)
    finally:
        _kill_all(_descendants(job.pid))
        if job.poll() is None:
            job.kill()
    text = log.read_text(errors="replace")
    assert code == 143, text[-3000:]
    assert "signfeat: terminated (SIGTERM)" in text and "SIGTERM received" not in text and "Traceback" not in text, text[-3000:]
    assert not [p for p in alive if "ray::" in " ".join(p.cmdline()) or "raylet" in " ".join(p.cmdline())], "its local Ray outlived it"
    assert len(Store(str(out)).done_shards()) < -(-len(planned) // CONFIG["shards"]["samples"]), "the signal must land mid-job"
    rerun = _start(manifest, out, config, log)
    assert rerun.wait(timeout=500) == 0, log.read_text()[-4000:]
    index, failures = _check_exactly_once(out, planned)
    assert failures == [] and len(index) == len(planned)


def test_a_second_sigterm_leaves_at_once_when_the_first_was_swallowed(tmp_path):
    """The first SIGTERM raises Terminated in the driver's main thread; code in its way that catches everything
    (Ray's, during start-up or shutdown) swallowed it, and the driver went on, then hung, deaf to more SIGTERMs."""
    script = (
        "import os, signal, time\n"
        "from pipeline.ray_runtime import stop_on_sigterm\n"
        "stop_on_sigterm()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n"
        "except BaseException as exc:\n"
        "    print('swallowed', type(exc).__name__, flush=True)\n"
        "time.sleep(1.2)\n"  # not the first one's echo (see below)
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(5)\n"
        "print('not reached', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 143 and done.stdout == "swallowed Terminated\n", (done.returncode, done.stdout, done.stderr)
    assert "signfeat: terminated again (SIGTERM): leaving at once" in done.stderr


def test_sigterm_to_the_process_and_its_group_at_once_is_one_stop(tmp_path):
    """GNU timeout sends SIGTERM to the command and then to its process group: the driver got it twice at once and
    left at once with "terminated again", skipping the clean stop."""
    script = (
        "import os, signal, time\n"
        "from pipeline.ray_runtime import stop_on_sigterm\n"
        "stop_on_sigterm()\n"
        "stops = 0\n"
        "for _ in range(2):\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(0.05)\n"
        "    except BaseException as exc:\n"
        "        stops += 1\n"
        "print('stops', stops, flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0 and done.stdout == "stops 1\n", (done.returncode, done.stdout, done.stderr)
