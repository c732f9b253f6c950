"""The command line as a user runs it: real subprocesses, the steps of ``make demo`` end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

SIGNFEAT = Path(sys.executable).parent / "signfeat"


def run(*args, cwd=None):
    cmd = [str(SIGNFEAT)] if SIGNFEAT.exists() else [sys.executable, "-m", "pipeline.cli"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["manifest", "build", "--annotations", "/no/such/file.csv", "--out", "m.parquet"], "annotation file not found"),
        (["manifest", "build", "--format", "elan", "--annotations", "a.csv", "--out", "m.parquet"], "invalid choice"),
        (["manifest", "curate", "/no/manifest.parquet", "--out", "c.parquet", "--report", "r"], "manifest not found"),
        (["manifest", "curate", "m.parquet", "--out", "c.parquet", "--report", "r", "--min-frames", "ten"], "expected an integer"),
        (["manifest", "curate", "m.parquet", "--out", "c.parquet", "--report", "r", "--split-ratios", "train:0.5"], "bad --split-ratios"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, args, needle):
    (tmp_path / "m.parquet").write_bytes(b"")  # exists but is not a manifest
    res = run(*args, cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("signfeat: error:"), res.stderr
    assert needle in lines[0]
    assert "Traceback" not in res.stderr


def test_make_demo_steps_end_to_end(tmp_path):
    corpus, manifest, curated, report = tmp_path / "corpus", tmp_path / "m.parquet", tmp_path / "c.parquet", tmp_path / "report"
    res = run("demo-corpus", corpus, "--clips", "16", "--seed", "1")
    assert res.returncode == 0, res.stderr
    summary = json.loads((corpus / "demo_corpus.json").read_text())
    res = run("manifest", "build", "--annotations", *summary["annotations"], "--root", corpus, "--out", manifest, "--num-cpus", "2", "--no-progress")
    assert res.returncode == 0, res.stderr
    built = json.loads(res.stdout)
    assert built["rows"] == pq.read_metadata(manifest).num_rows
    ok_truth = sum(1 for t in summary["truth"].values() if t["status"] == "ok")
    assert built["status"]["ok"] == ok_truth
    res = run("manifest", "curate", manifest, "--out", curated, "--report", report, "--group-by-signer")
    assert res.returncode == 0, res.stderr
    rep = json.loads((report / "report.json").read_text())
    assert rep["kept"] == ok_truth - 1  # the byte-identical copy is dropped
    assert pq.read_metadata(curated).num_rows == rep["kept"]
    assert (report / "overview.png").exists()
