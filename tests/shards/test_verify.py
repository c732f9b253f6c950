"""``signfeat verify`` / ``stats`` on damaged outputs: every damage is a problem naming the file, shard or key,
never a traceback. The output is written by the job's own shard writer and finaliser (no Ray, fake features)."""

import io
import json
import shutil
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.config import parse_job_config
from pipeline.errors import SignfeatError
from pipeline.extract import finalize, write_shard
from pipeline.plan import plan_hash, plan_shards
from shards.store import Store
from shards.verify import stats, verify

CONFIG = parse_job_config({"extractors": [{"name": "clip_s2", "tiny": True}, {"name": "dinov2", "tiny": True}], "shards": {"samples": 2, "prefix": "t"}})
STREAMS = ["clip_s2", "dinov2"]
WIDTH = {"clip_s2": 6, "dinov2": 4}
SHARD = "train/t-000000"  # holds k0 and k1
KEY = "k0"


def _row(i: int, split: str) -> dict:
    return {"id": f"k{i}", "key": f"k{i}", "dataset": "d", "split": split, "signer": "s", "text": f"text {i}", "source_kind": "video",
            "path": f"/videos/{i}.mp4", "start_s": None, "end_s": None, "fps": 25.0, "num_frames": 3 + i, "status": "ok"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A finished output: train (5 clips, one of them failed) in 3 shards, test (1 clip)."""
    manifest = [_row(i, "train") for i in range(5)] + [_row(5, "test")]
    plans = plan_shards(manifest, CONFIG.shards)
    out = tmp_path_factory.mktemp("out") / "features"
    store = Store(str(out))
    identity = {"config_hash": CONFIG.output_hash(), "plan_hash": plan_hash(plans), "streams": STREAMS}
    store.write_json("_signfeat/identity.json", identity)
    store.write_table("_signfeat/plan.parquet", pa.Table.from_pylist([{"shard": p.name, "key": r["key"], "id": r["id"]} for p in plans for r in p.rows]))
    rng = np.random.default_rng(0)
    for p in plans:
        rows = []
        for r in p.rows:
            row = {**r, "decoded_fps": 25.0, "decoded_frames": r["num_frames"], "error_class": None}
            if r["key"] == "k3":
                row.update(error_class="corrupt", error_stage="decode", error_message="bad bytes")
            for s in STREAMS:
                row[f"feat_{s}"] = rng.standard_normal((r["num_frames"], WIDTH[s])).astype(np.float16)
                row[f"meta_{s}"] = json.dumps({"extractor": s, "dtype": "float16", "width": WIDTH[s], "settings": {}})
            rows.append(row)
        write_shard(store, p, rows, STREAMS, identity["config_hash"])
    finalize(store, plans, STREAMS, CONFIG, identity, 0.0, {})
    return out


@pytest.fixture
def out(pristine, tmp_path):
    dst = tmp_path / "features"
    shutil.copytree(pristine, dst)
    return dst


def _members(path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]


def _write_tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _replace(out, name: str, data: bytes) -> None:
    path = out / f"{SHARD}.tar"
    _write_tar(path, [(n, data if n == name else d) for n, d in _members(path)])


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def _problems(out) -> list[str]:
    report = verify(str(out))
    assert not report["ok"] and report["problems"]
    return report["problems"]


def test_pristine_output_verifies(out, capsys):
    assert verify(str(out))["ok"], verify(str(out))["problems"]
    assert main(["verify", str(out)]) == 0
    capsys.readouterr()
    assert main(["stats", str(out)]) == 0
    assert stats(str(out))["samples"] == 5
    assert f"{stats(str(out))['planned']} clips planned" in capsys.readouterr().out


@pytest.mark.parametrize("damage, expected", [
    (b"{not json", f"{SHARD}:{KEY}: json member unreadable"),
    (b"[1, 2]", f"{SHARD}:{KEY}: json member unreadable: a JSON list"),
    (json.dumps({"key": KEY, "id": KEY, "split": "train", "num_frames": 3}).encode(), f"{SHARD}:{KEY}: json has no metadata for stream clip_s2"),
    (json.dumps({"key": KEY, "id": KEY, "split": "train", "num_frames": 3, "streams": {"clip_s2": {"width": 6}, "dinov2": {}}}).encode(),
     f"{SHARD}:{KEY}: json metadata of stream clip_s2 lacks ['dtype']"),
])
def test_damaged_json_member_is_a_problem(out, damage, expected):
    _replace(out, f"{KEY}.json", damage)
    assert any(p.startswith(expected) for p in _problems(out)), _problems(out)


@pytest.mark.parametrize("array, expected", [
    (np.float16(1.0), "dinov2 is float16 ()"),  # 0-d: no rows to count
    (np.array([["abc"]]), "dinov2 is <U3 (1, 1)"),  # not numbers: no finiteness to test
    (np.zeros((3, 4), np.float64), "dinov2 is float64 (3, 4), expected float16"),
    (np.zeros((3, 5), np.float16), "dinov2 is float16 (3, 5), expected float16 [*, 4]"),
    (np.full((3, 4), np.inf, np.float16), "dinov2 has non-finite values"),
    (np.array([{"a": 1}], dtype=object), "dinov2.npy unreadable without pickle"),
])
def test_damaged_array_is_a_problem(out, array, expected):
    _replace(out, f"{KEY}.dinov2.npy", _npy(array))
    assert any(p.startswith(f"{SHARD}:{KEY}: {expected}") for p in _problems(out)), _problems(out)


def test_unexpected_member_is_named(out):
    path = out / f"{SHARD}.tar"
    _write_tar(path, [*_members(path)[:3], (f"{KEY}.extra.npy", _npy(np.zeros((1, 1), np.float16))), *_members(path)[3:]])
    assert f"{SHARD}:{KEY}: unexpected members ['extra.npy']" in _problems(out)


@pytest.mark.parametrize("name", ["index.parquet", "failures.parquet", "_signfeat/plan.parquet", "_signfeat/identity.json", "job.json"])
@pytest.mark.parametrize("content", [b"", b"not what it should be"])
def test_unreadable_job_file_is_a_problem_and_a_stats_error(out, name, content, capsys):
    (out / name).write_bytes(content)
    problems = _problems(out)
    assert problems == [f"{out}: {name} is unreadable: " + problems[0].split(" is unreadable: ", 1)[-1]]
    assert main(["verify", str(out)]) == 1
    assert main(["stats", str(out)]) == 2  # a one-line error, no traceback
    assert f"{name} is unreadable" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["index.parquet", "failures.parquet", "_signfeat/plan.parquet", "_signfeat/identity.json", "job.json"])
def test_missing_job_file_is_a_stats_error(out, name, capsys):
    (out / name).unlink()
    assert main(["stats", str(out)]) == 2
    assert f"missing {name}" in capsys.readouterr().err


def _rewrite_index(out, fn) -> None:
    table = pq.read_table(out / "index.parquet")
    pq.write_table(pa.Table.from_pylist(fn(table.to_pylist()), schema=table.schema), out / "index.parquet")


def test_index_row_listed_twice_is_a_problem(out):
    _rewrite_index(out, lambda rows: rows + [r for r in rows if r["key"] == KEY])
    assert f"index.parquet lists key {KEY} 2 times" in _problems(out)


@pytest.mark.parametrize("column, value", [("num_frames", 30), ("split", "test"), ("id", "other"), ("duration_s", 99.0)])
def test_index_disagreeing_with_sample_json_is_a_problem(out, column, value):
    _rewrite_index(out, lambda rows: [dict(r, **{column: value}) if r["key"] == KEY else r for r in rows])
    assert any(p.startswith(f"{SHARD}:{KEY}: json {column} ") and "differs from index.parquet" in p for p in _problems(out)), _problems(out)


UNPLANNED = "shard not in the plan (renamed, copied or left from another job?); anything globbing {split}/*.tar reads it as split"


def test_shard_not_in_the_plan_is_a_problem(out):
    # a copy (or a rename) under {split}/ is read by anything globbing {split}/*.tar, e.g. the trainer; so is one
    # in a folder of a split the plan does not have (the trainer's dev split would be it)
    shutil.copyfile(out / f"{SHARD}.tar", out / "train" / "t-000009.tar")
    (out / "dev").mkdir()
    shutil.copyfile(out / f"{SHARD}.tar", out / "dev" / "t-000000.tar")
    (out / "dev" / "deep").mkdir()
    (out / "dev" / "deep" / "x.tar").write_bytes(b"a user's file, not at a split's depth")
    assert sorted(_problems(out)) == [f"dev/t-000000.tar: {UNPLANNED} 'dev'", f"train/t-000009.tar: {UNPLANNED} 'train'"]


def test_renamed_shard_is_missing_and_unplanned(out):
    (out / f"{SHARD}.tar").rename(out / "train" / "t-000009.tar")
    problems = _problems(out)
    assert f"shard {SHARD}: {SHARD}.tar is missing (its completion marker exists)" in problems
    assert f"train/t-000009.tar: {UNPLANNED} 'train'" in problems


def test_stale_temporary_files_are_problems(out):
    (out / f"{SHARD}.tar.tmp-0123abcd").write_bytes(b"half")
    (out / "_signfeat" / "done" / "train" / "t-000001.json.tmp-89abcdef").write_bytes(b"")
    assert sorted(_problems(out)) == [f"_signfeat/done/train/t-000001.json.tmp-89abcdef: half-written temporary file of an interrupted run",
                                      f"{SHARD}.tar.tmp-0123abcd: half-written temporary file of an interrupted run"]


@pytest.mark.parametrize("damage", ["truncated", "deleted", "extra_key_elsewhere"])
def test_shard_damage_names_the_shard(out, damage):
    path = out / f"{SHARD}.tar"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    elif damage == "deleted":
        path.unlink()
    else:  # k0 also in the next shard
        other = out / "train" / "t-000001.tar"
        _write_tar(other, _members(other) + [m for m in _members(path) if m[0].startswith(f"{KEY}.")])
    problems = _problems(out)
    assert any(SHARD in p for p in problems) or any(KEY in p for p in problems), problems
    assert "index.parquet lists k1 but no shard holds it" in problems or damage == "extra_key_elsewhere"


def test_clip_in_both_index_and_failures(out):
    failures = pq.read_table(out / "failures.parquet")
    extra = {"id": KEY, "key": KEY, "shard": SHARD, "split": "train", "stage": "decode", "error_class": "corrupt", "message": "x"}
    pq.write_table(pa.Table.from_pylist(failures.to_pylist() + [extra], schema=failures.schema), out / "failures.parquet")
    assert f"clip {KEY}: in index 1x and in failures 1x (must be exactly once)" in _problems(out)


def test_problems_beyond_the_listed_ones_are_counted(out, capsys):
    (out / f"{SHARD}.tar").unlink()
    for i in range(5):
        (out / f"{SHARD}.tar.tmp-0000000{i}").write_bytes(b"")
    report = verify(str(out), max_problems=3)
    assert len(report["problems"]) == 3 and report["problems_total"] == 8  # the missing tar, its 2 keys, 5 temporaries
    from pipeline.cli import _problem_count

    assert _problem_count(report) == "8 problems (the first 3 listed)"
    assert main(["verify", str(out)]) == 1
    assert "8 problems" in capsys.readouterr().out


def test_reader_keys_members_in_a_folder_as_webdataset_does(out):
    from webdataset.tariterators import group_by_keys, tar_file_expander  # the trainer's reader

    from shards.reader import read_samples

    path = out / f"{SHARD}.tar"
    _write_tar(path, [(f"sub/{n}" if n.startswith(f"{KEY}.") else n, d) for n, d in _members(path)])
    ours = [s["key"] for s in read_samples(path.read_bytes())]
    with path.open("rb") as f:
        theirs = [s["__key__"] for s in group_by_keys(tar_file_expander([{"url": str(path), "stream": f}]))]
    assert ours == theirs == [f"sub/{KEY}", "k1"]
    assert f"{SHARD}:sub/{KEY}: sample not in index.parquet" in _problems(out)  # was passed as k0


def test_a_sample_made_with_another_config_is_a_problem(out):
    """A shard copied in from another job's output (another config) must not pass as this job's."""
    meta = json.loads(dict(_members(out / f"{SHARD}.tar"))[f"{KEY}.json"])
    meta["job"]["config_hash"] = "0123456789abcdef"
    _replace(out, f"{KEY}.json", json.dumps(meta).encode())
    assert f"{SHARD}:{KEY}: made with config hash '0123456789abcdef', this output's is '{CONFIG.output_hash()}' (_signfeat/identity.json)" in _problems(out)


def test_stats_lists_a_split_whose_clips_all_failed(out):
    failures = pq.read_table(out / "failures.parquet")
    extra = {"id": "k9", "key": "k9", "shard": "dev/t-000000", "split": "dev", "stage": "decode", "error_class": "corrupt", "message": "x"}
    pq.write_table(pa.Table.from_pylist(failures.to_pylist() + [extra], schema=failures.schema), out / "failures.parquet")
    s = stats(str(out))
    assert s["splits"]["dev"]["samples"] == 0 and s["splits"]["dev"]["failures"] == 1
    for column in ("samples", "failures", "frames", "bytes"):
        assert sum(e[column] for e in s["splits"].values()) == s[column]


def test_index_duration_is_the_source_span_not_frames_over_the_subsampled_rate(tmp_path):
    """With decode.max_frames the clip keeps few frames at a low rate; frames / fps overstates its length."""
    plan = plan_shards([_row(0, "train")], CONFIG.shards)[0]
    row = {**plan.rows[0], "decoded_fps": 25 / 21, "decoded_frames": 2, "decoded_duration_s": 0.88, "error_class": None}
    for s in STREAMS:
        row[f"feat_{s}"] = np.zeros((2, WIDTH[s]), np.float16)
        row[f"meta_{s}"] = json.dumps({"extractor": s, "dtype": "float16", "width": WIDTH[s], "settings": {}})
    store = Store(str(tmp_path / "o"))
    write_shard(store, plan, [row], STREAMS, CONFIG.output_hash())
    assert store.read_table(f"_signfeat/parts/{plan.name}.index.parquet").column("duration_s").to_pylist() == [0.88]


# ------------------------------------------------------------------ what a rerun skips, replaces or deletes


@pytest.mark.parametrize("damage", ["tar deleted", "tar truncated", "index part deleted", "failures part damaged", "marker damaged"])
def test_a_shard_with_a_missing_tar_or_a_damaged_part_is_redone(out, damage):
    from pipeline.extract import shards_to_skip

    files = {"tar deleted": f"{SHARD}.tar", "tar truncated": f"{SHARD}.tar", "index part deleted": f"_signfeat/parts/{SHARD}.index.parquet",
             "failures part damaged": f"_signfeat/parts/{SHARD}.failures.parquet", "marker damaged": Store.marker(SHARD)}
    path = out / files[damage]
    if damage.endswith("deleted"):
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:20])
    store = Store(str(out))
    plans = plan_shards([_row(i, "train") for i in range(5)] + [_row(5, "test")], CONFIG.shards)
    assert not store.shard_is_complete(SHARD)
    assert shards_to_skip(store, plans) == {p.name for p in plans} - {SHARD}
    assert not (out / Store.marker(SHARD)).exists()  # its stale marker cannot vouch for the redone files


def test_overwrite_deletes_only_what_signfeat_wrote(out):
    (out / "my_data").mkdir()
    (out / "my_data" / "precious.tar").write_bytes(b"mine")
    (out / "train" / "mine.tar").write_bytes(b"mine too")
    Store(str(out)).clear()
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == ["my_data/precious.tar", "train/mine.tar"]


def test_overwrite_of_a_folder_without_a_job_record_is_refused(tmp_path):
    (tmp_path / "data.tar").write_bytes(b"not signfeat's")
    with pytest.raises(SignfeatError, match="no signfeat job record"):
        Store(str(tmp_path)).clear()
    assert (tmp_path / "data.tar").exists()
    Store(str(tmp_path / "new")).clear()  # nothing there: nothing to refuse


def test_another_job_is_refused_only_while_its_output_holds_a_complete_shard(out):
    """A job that died before its first shard (a bad setting found on the actors) must not lock OUT to its config."""
    from pipeline.extract import claim_output

    plans = plan_shards([_row(i, "train") for i in range(5)] + [_row(5, "test")], CONFIG.shards)
    other = {"config_hash": "0123456789abcdef", "plan_hash": plan_hash(plans), "streams": STREAMS}
    store = Store(str(out))
    with pytest.raises(SignfeatError, match="holds a job with config hash"):
        claim_output(store, other, plans, overwrite=False)
    for marker in store.list_files("_signfeat/done"):
        store.delete(marker)  # no shard complete any more
    claim_output(store, other, plans, overwrite=False)
    assert store.read_json("_signfeat/identity.json") == other
    assert not list(out.rglob("*.tar"))  # the old job's unfinished shards went with it


def test_job_rates_count_only_this_runs_clips(out):
    plans = plan_shards([_row(i, "train") for i in range(5)] + [_row(5, "test")], CONFIG.shards)
    identity = Store(str(out)).read_json("_signfeat/identity.json")
    summary = finalize(Store(str(out)), plans, STREAMS, CONFIG, identity, 0.0, {}, skipped={p.name for p in plans})
    assert summary["clips_this_run"] == summary["frames_this_run"] == summary["clips_per_s"] == summary["frames_per_s"] == 0
    assert summary["clips_skipped_as_complete"] == 6 and summary["shards_skipped_as_complete"] == 4
    summary = finalize(Store(str(out)), plans, STREAMS, CONFIG, identity, 0.0, {}, skipped={SHARD})
    assert summary["clips_this_run"] == 4 and summary["frames_this_run"] == summary["frames"] - (3 + 4)


def test_a_run_names_tars_not_in_its_plan_and_job_json_keeps_every_runs_record(out):
    """A stray .tar in a split folder: the run said nothing, exited 0 and printed {split}/*.tar, which reads it
    (verify failed on it). A rerun that skipped everything replaced job.json's nodes and stage seconds with {}."""
    plans = plan_shards([_row(i, "train") for i in range(5)] + [_row(5, "test")], CONFIG.shards)
    store = Store(str(out))
    identity = store.read_json("_signfeat/identity.json")
    shutil.copyfile(out / f"{SHARD}.tar", out / "train" / "extra.tar")
    work = {"busy_seconds": {"decode": 1.5}, "clips_by_node": {"node-a": {"decode": 6}}}
    first = finalize(store, plans, STREAMS, CONFIG, identity, 100.0, work)
    assert first["tars_not_in_plan"] == ["train/extra.tar"] and first["started_at"] == "1970-01-01T00:01:40+00:00"
    (out / "train" / "extra.tar").unlink()
    second = finalize(store, plans, STREAMS, CONFIG, identity, 200.0, {}, skipped={p.name for p in plans})
    assert second["tars_not_in_plan"] == [] and len(second["runs"]) == len(first["runs"]) + 1
    assert second["runs"][-2] == first["runs"][-1] and first["runs"][-1]["clips_by_node"] == work["clips_by_node"]
    assert second["runs"][-1]["started_at"] == "1970-01-01T00:03:20+00:00" and second["runs"][-1]["clips_this_run"] == 0
    assert json.loads((out / "job.json").read_text())["runs"] == second["runs"]
    other = dict(identity, plan_hash="another")  # another job's record is not this job's history
    assert len(finalize(store, plans, STREAMS, CONFIG, other, 300.0, {})["runs"]) == 1


def test_a_missing_job_record_with_complete_shards_is_refused(out):
    """With identity.json gone, the check was skipped and another job's shards were adopted as complete
    (a corrected text stayed stale, a changed config went unnoticed)."""
    from pipeline.extract import claim_output

    plans = plan_shards([_row(i, "train") for i in range(5)] + [_row(5, "test")], CONFIG.shards)
    (out / "_signfeat" / "identity.json").unlink()
    store = Store(str(out))
    with pytest.raises(SignfeatError, match=r"holds complete shards of another job \(its job record _signfeat/identity.json is missing"):
        claim_output(store, {"config_hash": "0123456789abcdef", "plan_hash": plan_hash(plans), "streams": STREAMS}, plans, overwrite=False)


def test_a_user_file_named_like_a_temporary_survives_every_run(out):
    """Every run deleted any file ending in .tmp- and 8 hex digits, anywhere under OUT."""
    store = Store(str(out))
    shard = sorted(store.done_shards())[0]
    ours = [f"{shard}.tar.tmp-0123abcd", "_signfeat/identity.json.tmp-89abcdef", "job.json.tmp-deadbeef"]
    for rel in ours:
        (out / rel).write_bytes(b"half")
    (out / "my_notes").mkdir()
    (out / "my_notes" / "backup.tmp-20261124").write_bytes(b"mine")
    (out / "train" / "other.tar.tmp-0123abcd").write_bytes(b"not a planned shard")
    assert store.remove_temporaries() == 3
    assert not any((out / rel).exists() for rel in ours)
    assert (out / "my_notes" / "backup.tmp-20261124").exists() and (out / "train" / "other.tar.tmp-0123abcd").exists()


def test_an_overwrite_killed_half_way_can_be_run_again(out, tmp_path, monkeypatch):
    """The job record went before the merged files: an --overwrite killed between them left signfeat's own
    files, which the same --overwrite then refused as 'files but no job record'. Killed after each deletion in
    turn, the rerun must clear what is left."""
    import shutil

    real_delete = Store.delete
    kill_at = 0
    while True:
        copy = tmp_path / f"out{kill_at}"
        shutil.copytree(out, copy)
        deleted = []

        def dies(self, rel):
            if len(deleted) == kill_at:
                raise KeyboardInterrupt
            deleted.append(rel)
            real_delete(self, rel)

        monkeypatch.setattr(Store, "delete", dies)
        try:
            Store(str(copy)).clear()
            finished = True
        except KeyboardInterrupt:
            finished = False
        monkeypatch.setattr(Store, "delete", real_delete)
        Store(str(copy)).clear()
        assert not [p for p in copy.rglob("*") if p.is_file()], kill_at
        if finished:
            break
        kill_at += 1
    assert kill_at > 3


def test_a_user_s_files_outside_the_split_folders_are_not_problems(out):
    """After an --overwrite that kept them on purpose, verify failed the output for a user's own tar."""
    (out / "my_data").mkdir()
    (out / "my_data" / "precious.tar").write_bytes(b"mine")
    (out / "my_data" / "notes.tmp-20261124").write_bytes(b"mine")
    assert verify(str(out))["ok"], verify(str(out))["problems"]
    (out / "train" / "copy.tar").write_bytes(b"a copy in a split folder is still read by {split}/*.tar globs")
    assert _problems(out) == [f"train/copy.tar: {UNPLANNED} 'train'"]


def test_a_member_repeated_within_a_sample_is_a_problem(out):
    # signfeat's reader kept the last of the two (verify said OK) where webdataset and the trainer fail
    path = out / f"{SHARD}.tar"
    members = _members(path)
    _write_tar(path, [members[0], members[0], *members[1:]])
    assert any(f"unreadable tar: sample {KEY}: member {members[0][0]} appears twice" in p for p in _problems(out)), _problems(out)


def test_swapped_shards_are_problems(out):
    # two tars swapped (same number of samples): every sample was intact, but index.parquet misplaced them
    a, b = out / f"{SHARD}.tar", out / "train" / "t-000001.tar"
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    problems = _problems(out)
    assert f"{SHARD}:k2: index.parquet places it in shard train/t-000001" in problems, problems


def test_a_compressed_tar_is_a_problem(out):
    # a gzip under the .tar name read fine through tarfile's "r|*"; the trainer opens shards as plain tars
    import gzip

    path = out / f"{SHARD}.tar"
    path.write_bytes(gzip.compress(path.read_bytes()))
    problems = _problems(out)
    assert any(p.startswith(f"shard {SHARD}: {SHARD}.tar is ") and "completion marker says" in p for p in problems), problems
    assert any(p.startswith(f"shard {SHARD}: unreadable tar") for p in problems), problems


@pytest.mark.parametrize("marker", ["[1, 2]", "{broken"])
def test_a_damaged_completion_marker_is_named_as_such(out, marker):
    """A marker that was JSON but not an object was reported as an unreadable tar, and its intact samples as
    index.parquet keys no shard holds."""
    (out / Store.marker(SHARD)).write_text(marker)
    problems = _problems(out)
    assert any(p.startswith(f"shard {SHARD}: its completion marker") and "damaged" in p for p in problems), problems
    assert not any("unreadable tar" in p or "no shard holds it" in p for p in problems), problems


def _fake_rows(plan, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for r in plan.rows:
        row = {**r, "decoded_fps": 25.0, "decoded_frames": r["num_frames"], "error_class": None}
        for s in STREAMS:
            row[f"feat_{s}"] = rng.standard_normal((r["num_frames"], WIDTH[s])).astype(np.float16)
            row[f"meta_{s}"] = json.dumps({"extractor": s, "dtype": "float16", "width": WIDTH[s], "settings": {}})
        rows.append(row)
    return rows


def test_two_drivers_on_one_out_cannot_both_report_a_complete_mixed_output(tmp_path):
    """Job A claims OUT, job B (another config) claims it before A's first shard and clears it: A must stop at its
    next commit, not write its shards into B's output (both exited 0; verify then failed on every sample)."""
    from pipeline.extract import claim_output, shards_to_skip

    manifest = [_row(i, "train") for i in range(4)]
    plans = plan_shards(manifest, CONFIG.shards)
    store = Store(str(tmp_path / "out"))
    job_a = {"config_hash": CONFIG.output_hash(), "plan_hash": plan_hash(plans), "streams": STREAMS}
    job_b = {**job_a, "config_hash": "0123456789abcdef"}
    run_a = claim_output(store, job_a, plans, overwrite=False)
    run_b = claim_output(store, job_b, plans, overwrite=False)  # nothing complete yet: B takes OUT over
    with pytest.raises(SignfeatError, match="another signfeat extract has taken over"):
        write_shard(store, plans[0], _fake_rows(plans[0]), STREAMS, job_a["config_hash"], run_a)
    assert not store.done_shards()
    write_shard(store, plans[0], _fake_rows(plans[0]), STREAMS, job_b["config_hash"], run_b)
    with pytest.raises(SignfeatError, match="taken over"):
        finalize(store, plans, STREAMS, CONFIG, job_a, 0.0, {}, run_id=run_a)
    # a shard another job committed anyway (its commit raced the takeover) is neither merged nor skipped by a rerun
    write_shard(store, plans[1], _fake_rows(plans[1]), STREAMS, job_a["config_hash"])
    with pytest.raises(SignfeatError, match=f"shard {plans[1].name} was written by another job"):
        finalize(store, plans, STREAMS, CONFIG, job_b, 0.0, {}, run_id=run_b)
    assert shards_to_skip(store, plans, job_b["config_hash"]) == {plans[0].name}


def test_verify_names_a_missing_folder_and_an_unfinished_job(tmp_path):
    """Both said 'missing ... (not a finished signfeat extract output?)': a typo'd path, and a job that was killed
    (its rerun resumes it) read alike."""
    from shards.store import Store
    from shards.verify import verify

    report = verify(str(tmp_path / "nope"))
    assert not report["ok"] and "no such folder" in report["problems"][0]
    Store(str(tmp_path / "half")).write_json("_signfeat/identity.json", {"streams": ["dinov2"], "config_hash": "x"})
    report = verify(str(tmp_path / "half"))
    assert not report["ok"] and "the job did not finish" in report["problems"][0] and "rerun the `signfeat extract` command without --overwrite" in report["problems"][0]


def test_samples_of_one_stream_made_by_two_models_are_a_problem(out):
    """A job resumed over a local checkpoint whose files changed wrote its remaining shards with another model
    under the same config hash: verify said OK."""
    meta = json.loads(dict(_members(out / f"{SHARD}.tar"))[f"{KEY}.json"])
    stream = sorted(meta["streams"])[0]
    meta["streams"][stream]["settings_hash"] = "0123456789abcdef"
    _replace(out, f"{KEY}.json", json.dumps(meta).encode())
    found = [p for p in _problems(out) if "two models' features in one output" in p]
    assert len(found) == 1 and f"{stream} made with settings hash" in found[0] and "0123456789abcdef" in found[0]


def test_an_output_an_older_signfeat_made_with_a_local_checkpoint_says_why_it_is_refused(out):
    """Local checkpoints are fingerprinted now, so such an output's config hash changed: the refusal said only
    that the hashes differ."""
    from pipeline.extract import _MADE_BEFORE_LOCAL_FINGERPRINTS, claim_output

    plans = plan_shards([_row(i, "train") for i in range(5)] + [_row(5, "test")], CONFIG.shards)
    store = Store(str(out))
    old = store.read_json("_signfeat/identity.json")
    new = {**old, "config_hash": "0123456789abcdef"}
    with pytest.raises(SignfeatError, match="made by this config with an older signfeat, which named a local checkpoint by its path"):
        claim_output(store, new, plans, overwrite=False, older_hashes={old["config_hash"]: _MADE_BEFORE_LOCAL_FINGERPRINTS})
    with pytest.raises(SignfeatError, match="holds a job with config hash") as plain:
        claim_output(store, new, plans, overwrite=False, older_hashes={"fedcba9876543210": _MADE_BEFORE_LOCAL_FINGERPRINTS})
    assert "older signfeat" not in str(plain.value) and "or the same ones run by another signfeat version" in str(plain.value)


def test_keys_other_readers_mishandle_are_noted_not_failed():
    """Outputs of manifests built before the key rules have keys starting with "__" (HuggingFace datasets skips
    them) or equal but for case: verify notes them, and the output still verifies."""
    from shards.verify import key_notes

    notes = key_notes(["__lead", "____dunder", "plain", "Case", "case", "other"])
    assert len(notes) == 2
    assert notes[0].startswith("2 keys start with '__' (____dunder, __lead)") and "HuggingFace datasets skips them" in notes[0]
    assert notes[1].startswith("2 keys differ from another only by case (Case, case)")
    assert key_notes(["_5flead", "case", "_43_61_73_65", "x"]) == []  # this signfeat's keys for the same ids


def test_a_folder_without_the_jobs_files_is_not_an_output(out, capsys):
    """The output's parent folder (or a corpus folder) is a wrong path: exit 2 from both, as for a missing path."""
    for command in ("verify", "stats"):
        assert main([command, str(out.parent)]) == 2, command
        assert "holds no signfeat extract output" in capsys.readouterr().err
    (out / "_signfeat/identity.json").unlink()  # one job file gone, the others there: a damaged output
    assert main(["verify", str(out)]) == 1
    assert "missing _signfeat/identity.json" in capsys.readouterr().out
    # copied as DESIGN.md lists an output (shards and the three tables), without _signfeat/: said so, exit 2 (it was
    # "missing _signfeat/identity.json ... FAILED: 0 shards, 0 samples", exit 1)
    shutil.rmtree(out / "_signfeat")
    for command in ("verify", "stats"):
        assert main([command, str(out)]) == 2, command
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{out} has no _signfeat/ folder, the job's record" in err[0] and "copy the whole folder" in err[0], err


def test_stats_notes_a_later_run_that_has_not_finished(out, capsys):
    """A rerun killed while it rewrote a shard (tar in place, no marker): stats printed the run before's tables as the
    output's, exit 0, with no word of the unfinished run (verify saw it)."""
    job = json.loads((out / "job.json").read_text())
    job["runs"][-1]["run_id"] = "aaaa"
    (out / "job.json").write_text(json.dumps(job))
    run = {"run_id": "aaaa", "host": "node7", "pid": 4242, "started": "2026-11-25T15:00:00+0000"}
    (out / "_signfeat" / "run.json").write_text(json.dumps(run))
    assert main(["stats", str(out)]) == 0
    assert "a later run" not in capsys.readouterr().out  # the run job.json records last owns OUT: finished
    (out / "_signfeat" / "run.json").write_text(json.dumps({**run, "run_id": "bbbb"}))
    assert main(["stats", str(out)]) == 0
    assert ("NOTE a later run (started 2026-11-25T15:00:00+0000 on node7, pid 4242) has not finished: it is going on, or was "
            "stopped; these tables are the run's before it") in capsys.readouterr().out


def test_stats_notes_planned_clips_missing_from_both_tables(out, capsys):
    _rewrite_index(out, lambda rows: [r for r in rows if r["key"] != "k0"])
    assert main(["stats", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "NOTE 1 planned clips are in neither index.parquet nor failures.parquet" in printed
    assert stats(str(out))["unaccounted"] == 1


def test_reader_refuses_a_sample_a_cut_off_shard_left_incomplete(out):
    """A tar cut just after k0's first stream member read as a sample of a key and one stream, no json and no
    word (webdataset does the same): the reader the README points to for inspection now says what is missing."""
    from shards.reader import read_samples

    path = out / f"{SHARD}.tar"
    members = _members(path)
    whole = [s["key"] for s in read_samples(path)]
    assert whole == [KEY, "k1"]
    stream = next(n for n, _ in members if n.startswith(f"{KEY}.") and n.endswith(".npy"))
    _write_tar(path, [m for m in members if m[0] == stream])  # k0's stream member alone, its json gone
    with pytest.raises(ValueError, match=f"sample {KEY}: no {KEY}.json member"):
        list(read_samples(path))
    _write_tar(path, [m for m in members if m[0] == f"{KEY}.json"])  # its json alone: the streams it lists gone
    with pytest.raises(ValueError, match=f"sample {KEY}: its json lists streams whose members are missing: \\['{stream}'"):
        list(read_samples(path))


@pytest.mark.parametrize("edit, expected", [
    ({"samples": 999}, "job.json says samples 999, index.parquet holds 5"),
    ({"failures": 0}, "job.json says failures 0, failures.parquet holds 1"),
    ({"clips_planned": 1}, "job.json says clips_planned 1, the plan holds 6"),
    ({"config_hash": "deadbeef"}, "job.json says config_hash 'deadbeef', _signfeat/identity.json '"),
    ({"plan_hash": None}, "job.json says plan_hash None, _signfeat/identity.json '"),
    ({"shards": 7}, "job.json says shards 7, the plan holds 4"),
    ({"frames": 999}, "job.json says frames 999, index.parquet holds "),
])
def test_a_job_json_that_contradicts_the_tables_is_a_problem(out, capsys, edit, expected):
    """job.json is where people read a job's counts; an edited one (samples 999, another config hash) passed."""
    assert main(["verify", str(out)]) == 0
    capsys.readouterr()
    job = json.loads((out / "job.json").read_text())
    (out / "job.json").write_text(json.dumps({**job, **edit}))
    assert main(["verify", str(out)]) == 1
    assert expected in capsys.readouterr().out


def test_stats_notes_clips_in_both_tables(out, capsys):
    failures = pq.read_table(out / "failures.parquet")
    doubled = {**failures.to_pylist()[0], "key": "k0", "id": "clip-0"}  # k0 is a sample too
    pq.write_table(pa.Table.from_pylist(failures.to_pylist() + [doubled], schema=failures.schema), out / "failures.parquet")
    assert main(["stats", str(out)]) == 0
    assert "NOTE 1 clips are in both index.parquet and failures.parquet" in capsys.readouterr().out
    assert stats(str(out))["in_both"] == 1


@pytest.mark.parametrize("damage", ["header byte flipped", "cut between samples", "end blocks cut off", "header zeroed"])
def test_reader_refuses_a_shard_that_ends_before_its_end_of_archive_block(out, damage):
    """tarfile ends an archive without an error at the first header it cannot read past the first: one flipped
    byte in the header of the second sample's first member, or a tar cut between two samples, read as a whole
    shard of one sample (webdataset and tarfile alike). The reader now wants the tar's end-of-archive block."""
    from shards.reader import read_samples

    path = out / f"{SHARD}.tar"
    data = bytearray(path.read_bytes())
    assert [s["key"] for s in read_samples(bytes(data))] == [KEY, "k1"]
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        second = next(m for m in tar.getmembers() if m.name.startswith("k1."))
        ends = max(m.offset_data + -(-m.size // 512) * 512 for m in tar.getmembers())
    if damage == "header byte flipped":
        data[second.offset + 10] ^= 0x55  # inside the member's name: its checksum no longer matches
    elif damage == "cut between samples":
        data = data[: second.offset]
    elif damage == "header zeroed":  # a zero block reads as the archive's end: the samples after it were dropped
        data[second.offset : second.offset + 512] = bytes(512)
    else:
        data = data[:ends]  # every member whole, the closing zero blocks gone
    with pytest.raises(ValueError, match="no readable tar header or end-of-archive block at byte"):
        list(read_samples(bytes(data)))
    path.write_bytes(bytes(data))
    assert main(["verify", str(out)]) == 1
