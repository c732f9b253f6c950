"""SMPL-X parameter clips (source_kind smplx) in annotation tables, probing and curation."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from manifests.formats import parse_table
from manifests.probe import probe_clip
from motion.synthetic import smooth_random_params


def signavatars_pickle(path, params, fps=None):
    """A SignAvatars-style pickle: {'smplx': (N, 182)} (and its fps when given), as that corpus ships them."""
    p = params
    matrix = np.concatenate([p["global_orient"], p["body_pose"], p["left_hand_pose"], p["right_hand_pose"], p["jaw_pose"],
                             p["betas"], p["expression"], p["transl"]], axis=1)
    data = {"smplx": matrix} if fps is None else {"smplx": matrix, "fps": fps}
    path.write_bytes(pickle.dumps(data, protocol=4))
    return path


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious_pickle(path, marker):
    path.write_bytes(pickle.dumps({"smplx": _Exploit(marker)}))
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_table_rows_of_parameters_are_smplx(tmp_path, suffix):
    params = smooth_random_params(5, seed=1)
    signavatars_pickle(tmp_path / "a.pkl", params)
    np.savez(tmp_path / "b.npz", **params)
    (tmp_path / "per_frame").mkdir()
    np.savez(tmp_path / "per_frame" / "000001.npz", smplx_root_pose=params["global_orient"][0], smplx_body_pose=params["body_pose"][0])
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "000001.png").write_bytes(b"")
    recs = [
        {"id": "inferred_pkl", "path": "a.pkl", "text": "a"},
        {"id": "inferred_npz", "path": "b.npz", "text": "b", "fps": "30"},
        {"id": "inferred_folder", "path": "per_frame", "text": "c"},
        {"id": "frames", "path": "frames", "text": "d"},
        {"id": "explicit", "path": "motion/clip.params", "text": "e", "source_kind": "SMPLX"},  # any name, when the kind is given
        {"id": "explicit_video", "path": "v.mp4", "text": "f", "source_kind": "video"},
        {"id": "bad_kind", "path": "a.pkl", "text": "g", "source_kind": "mocap"},
        {"id": "ranged", "path": "a.pkl", "text": "h", "start": "1.0"},
    ]
    cols = ["id", "path", "text", "fps", "start", "source_kind"]
    ann = tmp_path / f"corpus{suffix}"
    if suffix == ".jsonl":
        ann.write_text("".join(json.dumps(r) + "\n" for r in recs))
    else:
        sep = "," if suffix == ".csv" else "\t"
        ann.write_text("\n".join([sep.join(cols)] + [sep.join(r.get(c, "") for c in cols) for r in recs]) + "\n")
    by_id = {r["id"]: r for r in parse_table(ann, root=tmp_path)}
    assert len(by_id) == len(recs)
    for clip in ("inferred_pkl", "inferred_npz", "inferred_folder", "explicit"):
        assert by_id[clip]["source_kind"] == "smplx" and by_id[clip]["status"] is None, by_id[clip]
    assert by_id["inferred_npz"]["fps"] == 30.0 and by_id["explicit"]["path"] == str(tmp_path / "motion/clip.params")
    assert by_id["frames"]["source_kind"] == "frames" and by_id["explicit_video"]["source_kind"] == "video"
    assert by_id["bad_kind"]["status"] == "bad_annotation" and "mocap" in by_id["bad_kind"]["error"]
    assert by_id["ranged"]["status"] == "bad_annotation" and "whole file" in by_id["ranged"]["error"]


def _row(path, fps=None):
    return {"id": "x", "source_kind": "smplx", "path": str(path), "start_s": None, "end_s": None, "fps": fps}


def test_probe_reads_parameters_instead_of_decoding(tmp_path):
    params = smooth_random_params(12, seed=2)
    own = probe_clip(_row(signavatars_pickle(tmp_path / "own.pkl", params, fps=24.0), fps=50.0))
    assert own["status"] == "ok", own
    assert (own["num_frames"], own["fps"], own["duration_s"], own["codec"]) == (12, 24.0, 0.5, "smplx:signavatars")  # the file's fps wins
    assert own["width"] is None and own["height"] is None and own["bytes"] == (tmp_path / "own.pkl").stat().st_size
    np.savez(tmp_path / "named.npz", **params)
    given = probe_clip(_row(tmp_path / "named.npz", fps=30.0))
    assert (given["status"], given["num_frames"], given["fps"], given["codec"]) == ("ok", 12, 30.0, "smplx:named")  # no fps in the file
    none = probe_clip(_row(tmp_path / "named.npz"))
    assert none["status"] == "no_fps" and "fps column" in none["error"]
    np.savez(tmp_path / "same.npz", **params)
    assert probe_clip(_row(tmp_path / "same.npz", fps=30.0))["content_hash"] == given["content_hash"]  # equal bytes, equal hash
    folder = tmp_path / "frames_params"
    folder.mkdir()
    for i in range(3):
        np.savez(folder / f"{i}.npz", smplx_root_pose=params["global_orient"][i], smplx_body_pose=params["body_pose"][i])
    per_frame = probe_clip(_row(folder, fps=25.0))
    assert (per_frame["status"], per_frame["num_frames"], per_frame["codec"]) == ("ok", 3, "smplx:smplerx")


def test_probe_turns_bad_and_malicious_files_into_a_status(tmp_path):
    marker = tmp_path / "pwned"
    evil = probe_clip(_row(malicious_pickle(tmp_path / "evil.pkl", marker), fps=25.0))
    assert evil["status"] == "unsafe_pickle" and "refusing to unpickle" in evil["error"]
    assert not marker.exists()  # refused before anything ran
    (tmp_path / "garbage.pkl").write_bytes(b"\x80\x04not a pickle")
    assert probe_clip(_row(tmp_path / "garbage.pkl", fps=25.0))["status"] == "bad_params"
    (tmp_path / "truncated.npz").write_bytes(b"PK\x03\x04 truncated")
    assert probe_clip(_row(tmp_path / "truncated.npz", fps=25.0))["status"] == "bad_params"
    np.savez(tmp_path / "nothing.npz", colour=np.zeros(3))
    assert probe_clip(_row(tmp_path / "nothing.npz", fps=25.0))["status"] == "bad_params"
    assert probe_clip(_row(tmp_path / "missing.pkl", fps=25.0))["status"] == "missing_file"
    # no frames at all (a SignAvatars matrix or a Motion-X array of 0 rows) was ok, and a ValueError in the job
    (tmp_path / "empty.pkl").write_bytes(pickle.dumps({"smplx": np.zeros((0, 182), np.float32), "fps": 25.0}, protocol=4))
    np.save(tmp_path / "empty.npy", np.zeros((0, 322), np.float32))
    for name in ("empty.pkl", "empty.npy"):
        empty = probe_clip(_row(tmp_path / name, fps=25.0))
        assert (empty["status"], empty["error"]) == ("no_frames", f"{tmp_path / name} holds no frames of SMPL-X parameters"), name
