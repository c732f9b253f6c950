"""The benchmark scripts still run against the code they measure (they are not imported by anything else, so a
renamed function broke bench/decode_ranges.py without a test noticing), from any working directory."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_every_bench_script_starts_outside_the_repository(script, tmp_path):
    run = subprocess.run([sys.executable, str(BENCH / script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "usage:" in run.stdout, run.stderr[-2000:]


def test_every_bench_script_keeps_its_folder_off_the_import_path(tmp_path):
    """bench/pipeline.py, extractors.py and motion.py are named like the packages: with the script's folder on
    sys.path, Ray handed it to its workers, which then imported bench/pipeline.py as `pipeline` and failed."""
    for script in sorted(BENCH.glob("*.py")):
        # as `python bench/x.py` starts: the script's folder first on sys.path
        probe = f"import runpy, sys; sys.argv = [{str(script)!r}, '--help']; sys.path.insert(0, {str(BENCH)!r})\ntry:\n    runpy.run_path({str(script)!r}, run_name='__main__')\nexcept SystemExit:\n    pass\nimport pipeline, extractors, motion\nprint([m.__file__ for m in (pipeline, extractors, motion)])"
        run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        assert all(path.endswith("__init__.py") for path in json.loads(run.stdout.splitlines()[-1].replace("'", '"'))), (script.name, run.stdout)


def test_decode_ranges_bench_runs_and_all_arms_decode_the_same_frames(tmp_path):
    run = subprocess.run([sys.executable, str(BENCH / "decode_ranges.py"), "--seconds", "6", "--size", "96x64", "--ranges", "2"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    assert result["same_frames_everywhere"] is True and set(result["ratio_to_decord"]) == {
        "decord_seeking", "decode_clip_pyav_from_key_frame", "pyav_from_start"}
