import json

import pandas as pd
import pytest

from manifests.curate import CurateOptions, assign_splits, curate, curate_manifest
from manifests.keys import key_from_id
from pipeline.errors import SignfeatError


def _row(i, **kw):
    base = dict(id=f"c{i:02d}", dataset="d", split="train", signer="A", text="hello world", source_kind="video", path=f"/x/{i}.mp4",
                start_s=None, end_s=None, fps=25.0, num_frames=50, width=320, height=240, duration_s=2.0, codec="h264",
                bytes=1000, content_hash=f"h{i:02d}", status="ok", error=None)
    base.update(kw)
    base["key"] = key_from_id(base["id"])
    return base


def _corpus():
    rows = [_row(i) for i in range(12)]
    rows[0].update(status="unreadable", error="x")  # status
    rows[1].update(status="missing_text", text=None)  # status
    rows[2].update(duration_s=0.2, num_frames=5)  # duration (too short)
    rows[3].update(duration_s=30.0, num_frames=750)  # duration (too long)
    rows[4].update(num_frames=8)  # frames (duration ok, 8 < 10 frames)
    rows[5].update(width=100, height=80)  # resolution
    rows[6].update(fps=60.0)  # fps
    rows[7].update(text="hi")  # text length (< 3 chars)
    rows[8].update(content_hash="h09")  # duplicate of c09: c08 is the smaller id, so c09 goes
    rows[10].update(split=None, signer="B")
    rows[11].update(split=None, signer="B")
    return pd.DataFrame(rows)


OPTS = dict(min_duration_s=0.5, max_duration_s=20, min_frames=10, min_width=160, min_height=120, max_fps=50, min_text_chars=3)


def test_curation_counts_match_hand_computed_expectation():
    kept, excluded, report = curate(_corpus(), CurateOptions(**OPTS))
    assert report["removed"] == {"status": 2, "duration": 2, "frames": 1, "resolution": 1, "fps": 1, "text_length": 1, "duplicate": 1}
    assert sorted(kept["id"]) == ["c08", "c10", "c11"]
    assert report["kept"] == 3 and report["removed_total"] == 9 and report["input_rows"] == 12
    assert dict(zip(excluded["id"], excluded["filter"]))["c09"] == "duplicate"
    assert excluded.loc[excluded["id"] == "c09", "reason"].item() == "duplicate_of=c08"
    assert kept["split"].notna().all()


def test_dedup_keeps_the_same_row_whatever_the_order():
    df = _corpus()
    a, _, _ = curate(df, CurateOptions(**OPTS))
    b, _, _ = curate(df.iloc[::-1].reset_index(drop=True), CurateOptions(**OPTS))
    assert sorted(a["id"]) == sorted(b["id"])


def test_split_assignment_is_deterministic_and_grouped_by_signer():
    rows = [_row(i, split=None, signer=f"s{i % 7}") for i in range(300)]
    df = pd.DataFrame(rows)
    s1 = assign_splits(df, CurateOptions())
    s2 = assign_splits(df.sample(frac=1, random_state=1), CurateOptions()).reindex(df.index)
    assert (s1 == s2).all()
    counts = s1.value_counts(normalize=True)
    assert set(counts.index) == {"train", "dev", "test"} and 0.65 < counts["train"] < 0.93
    grouped = assign_splits(df, CurateOptions(group_by_signer=True))
    assert (pd.DataFrame({"signer": df["signer"], "split": grouped}).groupby("signer")["split"].nunique() == 1).all()
    # a signer already placed in one split pulls its unassigned rows there
    df2 = df.copy()
    df2.loc[0, "split"] = "test"  # signer s0
    g2 = assign_splits(df2, CurateOptions(group_by_signer=True))
    assert set(g2[df2["signer"] == "s0"]) == {"test"}


def test_bad_options_are_rejected():
    with pytest.raises(SignfeatError):
        CurateOptions(min_frames=10, max_frames=5)
    with pytest.raises(SignfeatError):
        CurateOptions(split_ratios={"train": -1})
    # an assigned split becomes a shard folder: "../x" used to pass curation and fail at extraction
    for bad in ({"../x": 1}, {"_x": 1}, {"val": 1, "dev": 1}, {"train": True}):
        with pytest.raises(SignfeatError, match="split"):
            CurateOptions(split_ratios=bad)
    # names extraction's plan refuses were accepted here, found out only when the job started
    for bad in ("index.parquet", "Job.json", "tr*ain", "a\\b", "x{1}"):
        with pytest.raises(SignfeatError, match="cannot be a split name"):
            CurateOptions(split_ratios={bad: 1})


def test_split_ratio_names_are_normalised_as_the_build_does():
    """`val` in split_ratios used to assign split "val" while the build turns a `val` annotation into dev."""
    assert CurateOptions(split_ratios={"training": 0.8, "val": 0.2}).split_ratios == {"train": 0.8, "dev": 0.2}
    rows = pd.DataFrame([_row(i, split=None) for i in range(50)])
    assert set(assign_splits(rows, CurateOptions(split_ratios={"train": 0.5, "val": 0.5}))) == {"train", "dev"}


def test_a_split_named_twice_is_refused_with_both_names():
    """`--split-ratios train=1,train=2` kept the last value; `Train` and `train` were reported as "'train' names
    split 'train' twice", quoting the normalised name, not the two the user wrote."""
    from manifests.curate import parse_split_ratios

    with pytest.raises(SignfeatError, match=r"bad --split-ratios 'train=1,train=2': train is given twice"):
        parse_split_ratios("train=1,train=2")
    with pytest.raises(SignfeatError, match=r"split_ratios: 'Train' and 'train' both name split 'train'"):
        CurateOptions(split_ratios=parse_split_ratios("Train=0.5,train=0.5"))
    assert parse_split_ratios("train=0.8, dev=0.2") == {"train": 0.8, "dev": 0.2}


def test_a_curation_config_that_is_not_yaml_is_one_line(tmp_path, capsys):
    from pipeline.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("min_frames: [1\n")
    assert main(["manifest", "curate", str(tmp_path / "m.parquet"), "--out", str(tmp_path / "c.parquet"), "--report", str(tmp_path / "r"),
                 "--config", str(cfg)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_curate_demo_manifest_writes_report_and_plots(demo_manifest, tmp_path):
    out, report_dir = tmp_path / "curated.parquet", tmp_path / "report"
    report = curate_manifest(demo_manifest, out, report_dir, CurateOptions(group_by_signer=True))
    saved = json.loads((report_dir / "report.json").read_text())
    assert saved["kept"] == report["kept"] == report["input_rows"] - report["removed_total"]
    assert report["removed"]["duplicate"] == 1  # dup-of-clip-0003
    assert report["removed"]["status"] == report["input_rows"] - report["status_of_input"]["ok"]
    kept = pd.read_parquet(out)
    assert "dup-of-clip-0003" not in set(kept["id"]) and "clip-0003" in set(kept["id"])
    assert kept["split"].notna().all()
    assert len(pd.read_parquet(report_dir / "excluded.parquet")) == report["removed_total"]
    for name in ["overview", "duration", "frames", "resolution", "fps", "text_length", "splits", "signers"]:
        png = report_dir / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


@pytest.mark.parametrize("name", ["excluded.parquet", "report.json", "splits.png"])
def test_an_out_named_as_a_report_file_in_the_report_folder_is_refused(demo_manifest, tmp_path, name):
    """--out REPORT/excluded.parquet printed 'curated manifest: ...' over a file holding the excluded rows."""
    report_dir = tmp_path / "report"
    with pytest.raises(SignfeatError, match=f"--out .*{name}.* is a file the report"):
        curate_manifest(demo_manifest, tmp_path / "x" / ".." / "report" / name, report_dir, CurateOptions(), plots=False)
    assert not report_dir.exists()  # refused before anything is written
    report_dir.mkdir()
    (tmp_path / "link").symlink_to(report_dir)  # the report folder through a link
    with pytest.raises(SignfeatError, match="is a file the report"):
        curate_manifest(demo_manifest, tmp_path / "link" / name, report_dir, CurateOptions(), plots=False)
    report_dir.rmdir()
    report = curate_manifest(demo_manifest, tmp_path / name, report_dir, CurateOptions(), plots=False)  # beside it: fine
    assert len(pd.read_parquet(tmp_path / name)) == report["kept"]


def test_a_run_without_plots_removes_an_earlier_runs_plots(demo_manifest, tmp_path):
    report_dir = tmp_path / "report"
    curate_manifest(demo_manifest, tmp_path / "a.parquet", report_dir, CurateOptions())
    assert (report_dir / "overview.png").exists()
    (report_dir / "notes.png").write_bytes(b"mine")  # not one of the report's files: kept
    report = curate_manifest(demo_manifest, tmp_path / "a.parquet", report_dir, CurateOptions(), plots=False)
    assert report["plots"] == [] and sorted(p.name for p in report_dir.iterdir()) == ["excluded.parquet", "notes.png", "report.json"]


def test_yaml_config_is_validated_and_flags_override(tmp_path, demo_manifest):
    from pipeline.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("min_frames: 30\ndedup: false\n")
    assert main(["manifest", "curate", str(demo_manifest), "--out", str(tmp_path / "a.parquet"), "--report", str(tmp_path / "ra"), "--config", str(cfg), "--no-plots"]) == 0
    rep = json.loads((tmp_path / "ra/report.json").read_text())
    assert rep["options"]["min_frames"] == 30 and rep["options"]["dedup"] is False and rep["removed"]["frames"] > 0
    assert main(["manifest", "curate", str(demo_manifest), "--out", str(tmp_path / "b.parquet"), "--report", str(tmp_path / "rb"), "--config", str(cfg), "--min-frames", "0", "--no-plots"]) == 0
    assert json.loads((tmp_path / "rb/report.json").read_text())["options"]["min_frames"] == 0
    cfg.write_text("min_frame: 30\n")  # typo
    assert main(["manifest", "curate", str(demo_manifest), "--out", str(tmp_path / "c.parquet"), "--report", str(tmp_path / "rc"), "--config", str(cfg)]) == 2
    cfg.write_text("min_frames: ten\n")
    assert main(["manifest", "curate", str(demo_manifest), "--out", str(tmp_path / "c.parquet"), "--report", str(tmp_path / "rc"), "--config", str(cfg)]) == 2


def test_curation_passes_parameter_rows_through_the_resolution_filter():
    smplx = dict(source_kind="smplx", width=None, height=None, codec="smplx:signavatars")
    rows = [_row(0), _row(1, width=100, height=80), _row(2, **smplx),
            _row(3, **smplx, num_frames=4, duration_s=0.16), _row(4, **smplx, content_hash="h02")]
    kept, excluded, report = curate(pd.DataFrame(rows), CurateOptions(min_width=160, min_height=120, min_frames=10))
    assert sorted(kept["id"]) == ["c00", "c02"]
    assert dict(zip(excluded["id"], excluded["filter"])) == {"c01": "resolution", "c03": "frames", "c04": "duplicate"}
    assert report["removed"]["resolution"] == 1


def test_boundaries_are_not_decided_by_measurement_noise():
    # a 2.5 s range at 24 fps measures 2.4999999999999996 s; a 30 fps mkv 30.02 fps (millisecond timestamps)
    df = pd.DataFrame([_row(0, duration_s=2.4999999999999996), _row(1, fps=30.04, duration_s=3.0), _row(2, fps=30.2, duration_s=3.0),
                       _row(3, duration_s=2.49)])
    kept, excluded, _ = curate(df, CurateOptions(min_duration_s=2.5, max_fps=30))
    assert sorted(kept["id"]) == ["c00", "c01"] and sorted(excluded["id"]) == ["c02", "c03"]


@pytest.mark.parametrize("bad", [dict(min_duration_s=float("nan")), dict(max_fps=float("inf")),
                                 dict(split_ratios={"train": float("nan"), "test": 0.1}), dict(split_ratios={"train": float("inf")})])
def test_non_finite_options_are_refused(bad):
    # NaN compares false with everything: min_duration_s NaN removed every row; train=nan sent all rows to test
    with pytest.raises(SignfeatError, match="finite"):
        CurateOptions(**bad)


def test_excluded_rows_keep_the_manifest_schema(demo_manifest, tmp_path):
    from manifests.schema import MANIFEST_SCHEMA, read_manifest

    curate_manifest(demo_manifest, tmp_path / "c.parquet", tmp_path / "r", CurateOptions(min_duration_s=1.5), plots=False)
    excluded = read_manifest(tmp_path / "r" / "excluded.parquet")  # readable as a manifest (schema version kept)
    assert excluded.num_rows > 0
    for field in MANIFEST_SCHEMA:
        assert excluded.schema.field(field.name).type == field.type, field.name  # num_frames was a float
    assert {"filter", "reason"} <= set(excluded.schema.names)


def test_the_config_s_group_by_signer_can_be_turned_off_on_the_command_line(demo_manifest, tmp_path):
    from pipeline.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("group_by_signer: true\n")
    assert main(["manifest", "curate", str(demo_manifest), "--out", str(tmp_path / "o.parquet"), "--report", str(tmp_path / "r"),
                 "--config", str(config), "--no-group-by-signer", "--no-plots"]) == 0
    assert json.loads((tmp_path / "r" / "report.json").read_text())["options"]["group_by_signer"] is False


def test_the_ranges_of_one_video_share_a_split():
    # overlapping segments of one long video landed in train, dev and test
    rows = [_row(i, split=None, source_kind="range", path=f"/v/{i % 3}.mp4", start_s=float(i), end_s=i + 2.0) for i in range(60)]
    rows += [_row(100 + i, split=None) for i in range(60)]  # whole videos: one draw each, as before
    df = pd.DataFrame(rows)
    split = assign_splits(df, CurateOptions())
    by_video = pd.DataFrame({"path": df["path"], "split": split})[df["source_kind"] == "range"].groupby("path")["split"].nunique()
    assert (by_video == 1).all()
    assert split[df["source_kind"] == "video"].nunique() == 3


def test_the_ranges_of_one_video_share_a_split_however_its_path_is_written_or_mounted(tmp_path):
    """The split unit was the path string: a symlink or a '..' spelling of one video put its segments in train and
    dev, and the same corpus mounted at another folder drew other splits (test clips moved into train)."""
    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    video = tmp_path / "corpus" / "long.mp4"
    video.write_bytes(b"x")
    (tmp_path / "corpus" / "sub" / "link.mp4").symlink_to(video)
    spellings = [str(video), str(tmp_path / "corpus" / "sub" / ".." / "long.mp4"), str(tmp_path / "corpus" / "sub" / "link.mp4")]
    rows = [_row(i, split=None, source_kind="range", path=spellings[i % 3], start_s=float(i), end_s=i + 1.0) for i in range(30)]
    for salt in ("a", "b", "c", "d"):
        assert assign_splits(pd.DataFrame(rows), CurateOptions(split_salt=salt)).nunique() == 1, salt
    # the same ranges under two mount points draw the same splits
    here = [_row(i, split=None, source_kind="range", path=f"/home/alice/corpus/v{i % 7}.mp4", start_s=0.0, end_s=1.0) for i in range(40)]
    there = [dict(r, path=r["path"].replace("/home/alice/corpus", "/mnt/cluster/corpus")) for r in here]
    assert list(assign_splits(pd.DataFrame(here), CurateOptions())) == list(assign_splits(pd.DataFrame(there), CurateOptions()))


def test_blank_ranges_of_a_video_join_the_split_its_labelled_ranges_have():
    """3 segments of a video marked test and 7 left blank put one video in test and in train."""
    rows = [_row(i, split="test" if i < 3 else None, source_kind="range", path="/v/one.mp4", start_s=float(i), end_s=i + 1.0) for i in range(10)]
    for salt in ("a", "b", "c", "d", "e"):
        assert set(assign_splits(pd.DataFrame(rows), CurateOptions(split_salt=salt))) == {"test"}, salt


def test_rows_without_a_content_hash_are_not_removed_as_duplicates():
    rows = [_row(i, content_hash=None) for i in range(3)] + [_row(3), _row(4, content_hash="h03")]
    kept, excluded, report = curate(pd.DataFrame(rows), CurateOptions())
    assert sorted(kept["id"]) == sorted(r["id"] for r in rows[:4]) and report["removed"].get("duplicate") == 1


def test_plots_of_values_equal_but_for_float_noise_are_drawn(tmp_path):
    """A 25 fps corpus probes 24.999999999999996 and 25.0: numpy cannot cut that range into 40 bins, and curate's
    default mode (plots on) died with a traceback after writing the manifest, before report.json."""
    from manifests.schema import rows_to_table, write_manifest

    rows = [_row(i, fps=25.0 if i % 3 else 24.999999999999996, width=320, height=240, num_frames=50, duration_s=2.0) for i in range(6)]
    write_manifest(rows_to_table(rows), tmp_path / "m.parquet")
    report = curate_manifest(tmp_path / "m.parquet", tmp_path / "c.parquet", tmp_path / "r", CurateOptions())
    assert report["kept"] == 6 and (tmp_path / "r" / "report.json").is_file()
    assert (tmp_path / "r" / "fps.png").read_bytes()[:4] == b"\x89PNG"


def test_a_video_s_segments_share_a_split_also_when_grouping_by_signer_and_when_read_whole_too(tmp_path):
    """With group_by_signer (the shipped config) a signer's group replaced the video unit: four segments of one
    video by two signers (one unnamed) went to test, dev, train and test. A row reading the whole file and
    ranges of it were split apart too, and so were two rows reading one file whole."""
    video = tmp_path / "long.mp4"
    video.write_bytes(b"")

    def row(key, signer=None, start=None, kind="range", path=video):
        return {"key": key, "id": key, "path": str(path), "source_kind": kind, "signer": signer, "dataset": "d", "split": None,
                "start_s": start, "end_s": None if start is None else start + 2}

    others = [row(f"o{i}", signer=f"s{i}", kind="video", path=tmp_path / f"o{i}.mp4") for i in range(30)]
    for salt in ("a", "b", "c", "d", "e"):
        for by_signer in (True, False):
            segments = [row("seg1", "signer9", 0.0), row("seg2", "signer11", 2.0), row("seg3", None, 4.0), row("seg4", "signer9", 6.0)]
            df = pd.DataFrame([*segments, row("story", kind="video"), row("copy", kind="video"), *others])
            split = assign_splits(df, CurateOptions(group_by_signer=by_signer, split_salt=salt))
            assert split.iloc[:6].nunique() == 1, (salt, by_signer, list(split.iloc[:6]))
            assert split.iloc[6:].nunique() > 1  # the unrelated videos are still spread over the splits


def test_ranges_of_videos_that_share_a_file_name_are_units_of_their_own(tmp_path):
    """A corpus keeping one video.mp4 per clip folder: by file name alone every range was one unit, and all 600
    rows went to train. Each video is named by the shortest tail of its path no other video shares; a video of a
    unique name keeps its file name (the splits drawn before)."""
    rows = []
    for v in range(60):
        folder = tmp_path / f"vid{v:03d}"
        folder.mkdir()
        (folder / "video.mp4").write_bytes(b"")
        rows += [{"key": f"v{v}-{i}", "id": f"v{v}-{i}", "path": str(folder / "video.mp4"), "source_kind": "range", "signer": None,
                  "dataset": "d", "split": None, "start_s": float(i), "end_s": float(i + 1)} for i in range(3)]
    df = pd.DataFrame(rows)
    split = assign_splits(df, CurateOptions())
    assert set(split) == {"train", "dev", "test"}
    assert (df.assign(split=split).groupby("path")["split"].nunique() == 1).all()  # a video's ranges still share one
    from manifests.curate import _video_names

    names = [str(tmp_path / "vid000" / "long_story.mp4"), str(tmp_path / "vid001/video.mp4"), str(tmp_path / "vid002/video.mp4")]
    assert list(_video_names(pd.Series(names))) == ["vid000/long_story.mp4", "vid001/video.mp4", "vid002/video.mp4"]
    # a video's name does not change when others join the manifest (its split would move)
    grown = names + [str(tmp_path / "other" / "vid001" / "video.mp4"), str(tmp_path / "side" / "long_story.mp4")]
    assert list(_video_names(pd.Series(grown)))[0] == "vid000/long_story.mp4"


def test_clips_cut_from_one_recording_share_a_split_with_its_ranges(tmp_path):
    """How2Sign rows read whole from their sentence clip were units of their own: a video's sentence 0 (a clip)
    went to train and its sentences 1 and 2 (ranges of the raw video) to test. The ``source`` column (the raw
    video, or a table's source) makes them one unit, also for pre-cut clips that share only a source."""
    rows = []
    for v in range(20):
        raw = f"/h2s/raw_videos/-v{v:02d}-1-rgb_front.mp4"
        rows.append(_row(3 * v, split=None, path=f"/h2s/sentence_level/-v{v:02d}_0-1-rgb_front.mp4", source=raw))
        rows += [_row(3 * v + k, split=None, source_kind="range", path=raw, start_s=float(k), end_s=k + 1.0) for k in (1, 2)]
    rows += [_row(100 + i, split=None, path=f"/openasl/{i}.mp4", source=f"youtube-{i % 5}") for i in range(30)]  # pre-cut clips
    df = pd.DataFrame(rows)
    for salt in ("a", "b", "c"):
        split = assign_splits(df, CurateOptions(split_salt=salt))
        recording = df["source"].where(df["source"].notna(), df["path"])
        assert (pd.DataFrame({"r": recording, "s": split}).groupby("r")["s"].nunique() == 1).all(), salt
        assert split.nunique() > 1, salt  # still drawn per recording, not one split for all


def test_a_manifest_written_before_the_source_column_reads_with_it_null(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from manifests.schema import MANIFEST_SCHEMA, SCHEMA_VERSION, SCHEMA_VERSION_KEY, read_manifest

    old_schema = pa.schema([f for f in MANIFEST_SCHEMA if f.name != "source"], metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()})
    rows = [{k: v for k, v in _row(i).items() if k != "source"} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows, schema=old_schema), tmp_path / "old.parquet")
    table = read_manifest(tmp_path / "old.parquet")
    assert table.column("source").to_pylist() == [None] * 3 and table.schema.field("source").type == pa.string()
    curate_manifest(tmp_path / "old.parquet", tmp_path / "c.parquet", tmp_path / "rep", CurateOptions(), plots=False)
    assert read_manifest(tmp_path / "c.parquet").num_rows == 3


def test_rows_given_a_split_and_rows_drawn_one_are_counted_and_the_cli_says_so(tmp_path, capsys):
    """AUTSL's val/ground_truth.csv names no split: its rows were drawn into train next to rows whose file gave
    one, without a word."""
    from manifests.schema import rows_to_table, write_manifest
    from pipeline.cli import main

    rows = [_row(i) for i in range(6)] + [_row(10 + i, split=None) for i in range(3)]
    _, _, report = curate(pd.DataFrame(rows), CurateOptions())
    assert report["kept_with_split_drawn"] == 3
    # a blank split is none too (it was counted as given, and null rows that joined their video's split as drawn)
    video = [_row(20 + i, source_kind="range", path="/v/long.mp4", start_s=float(i), end_s=i + 1.0, split=s) for i, s in enumerate(["test", None, " "])]
    kept, _, report = curate(pd.DataFrame(video), CurateOptions())
    assert report["kept_with_split_drawn"] == 2 and set(kept["split"]) == {"test"}
    write_manifest(rows_to_table(rows), tmp_path / "m.parquet")
    assert main(["manifest", "curate", str(tmp_path / "m.parquet"), "--out", str(tmp_path / "c.parquet"), "--report", str(tmp_path / "r"),
                 "--no-plots"]) == 0
    assert "note: 3 of 9 kept rows had no split and got one: drawn by the ratios" in capsys.readouterr().err
    write_manifest(rows_to_table(rows[:6]), tmp_path / "m.parquet")  # all given: nothing to say
    main(["manifest", "curate", str(tmp_path / "m.parquet"), "--out", str(tmp_path / "c.parquet"), "--report", str(tmp_path / "r"), "--no-plots"])
    assert "note:" not in capsys.readouterr().err


def test_a_recording_the_annotations_put_in_several_splits_is_reported_and_the_cli_says_so(tmp_path, capsys):
    """A video whole in train, a range of it in test and a clip cut from it (its ``source``) in dev were kept
    without a word: report.json listed signers in several splits only. Splits drawn by curate never part one."""
    from manifests.schema import rows_to_table, write_manifest
    from pipeline.cli import main

    rows = [_row(0, split="train", path="/c/raw/long.mp4"),
            _row(1, split="test", source_kind="range", path="/c/raw/long.mp4", start_s=1.0, end_s=2.0),
            _row(2, split="dev", path="/c/cut/long_0.mp4", source="/c/raw/long.mp4"),
            _row(3, split="train", path="/c/raw/other.mp4"), _row(4, split="train", source_kind="range", path="/c/raw/other.mp4", start_s=0.0, end_s=1.0),
            _row(5, split="train", signer="B", path="/c/raw/b.mp4"), _row(6, split="test", signer="B", path="/c/raw/c.mp4")]
    _, _, report = curate(pd.DataFrame(rows), CurateOptions())
    # other.mp4 sits in train alone; B's two recordings in two splits are a signer in several splits, not a leak
    assert report["recordings_in_several_splits"] == {"raw/long.mp4": ["dev", "test", "train"]}
    assert report["signers_in_several_splits"] == ["d/A", "d/B"]
    drawn = [_row(10 + i, split=None, source_kind="range", path=f"/c/v{i % 20}.mp4", start_s=float(i), end_s=i + 1.0) for i in range(60)]
    _, _, report = curate(pd.DataFrame(drawn), CurateOptions())
    assert len(report["kept_per_split"]) > 1 and report["recordings_in_several_splits"] == {}
    write_manifest(rows_to_table(rows), tmp_path / "m.parquet")
    assert main(["manifest", "curate", str(tmp_path / "m.parquet"), "--out", str(tmp_path / "c.parquet"), "--report", str(tmp_path / "r"),
                 "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "note: 1 recording(s) have kept rows in several splits" in err and "raw/long.mp4 (dev + test + train)" in err
    assert json.loads((tmp_path / "r" / "report.json").read_text())["recordings_in_several_splits"] == {"raw/long.mp4": ["dev", "test", "train"]}


def test_a_video_read_whole_and_clips_whose_source_it_is_share_a_split_and_are_reported_when_given_apart():
    """Linked only through a range of the video: a whole-file row (given test, or drawn) and a clip cut from it (its
    source the video's path) were drawn into test and train, and annotations that put them apart were not reported."""
    rows = []
    for v in range(20):
        rows.append(_row(2 * v, split=None, path=f"/c/raw/v{v}.mp4"))
        rows.append(_row(2 * v + 1, split=None, path=f"/c/cut/v{v}_0.mp4", source=f"/c/raw/v{v}.mp4"))
    df = pd.DataFrame(rows)
    for salt in ("a", "b", "c", "signfeat"):
        split = assign_splits(df, CurateOptions(split_salt=salt))
        assert (split[0::2].to_numpy() == split[1::2].to_numpy()).all(), salt
        assert split.nunique() > 1, salt
    given = pd.DataFrame([_row(0, split="test", path="/c/raw/w.mp4"), _row(1, split=None, path="/c/cut/w_0.mp4", source="/c/raw/w.mp4")])
    assert list(assign_splits(given, CurateOptions())) == ["test", "test"]
    apart = pd.DataFrame([_row(0, split="train", path="/c/raw/w.mp4"), _row(1, split="dev", path="/c/cut/w_0.mp4", source="/c/raw/w.mp4")])
    assert curate(apart, CurateOptions())[2]["recordings_in_several_splits"] == {"raw/w.mp4": ["dev", "train"]}


def test_a_blank_segment_of_a_video_the_annotations_put_in_two_splits_joins_one_of_them():
    """Segments given test and dev and one left blank: the blank one was drawn into train, a third split, and the
    note then said the annotations had put the video in dev, test and train."""
    for salt in ("signfeat", "salt1", "salt2", "a", "b", "c"):
        rows = [_row(0, split="test", source_kind="range", path="/v/one.mp4", start_s=0.0, end_s=1.0),
                _row(1, split="dev", source_kind="range", path="/v/one.mp4", start_s=1.0, end_s=2.0),
                _row(2, split=None, source_kind="range", path="/v/one.mp4", start_s=2.0, end_s=3.0)]
        assert assign_splits(pd.DataFrame(rows), CurateOptions(split_salt=salt))[2] in ("dev", "test"), salt


def test_a_misspelt_split_ratio_name_is_refused():
    """tset=0.1 was accepted: rows drawn into a split "tset" that training and evaluation never read."""
    with pytest.raises(SignfeatError, match="split_ratios: 'tset' reads as a misspelling of 'test'"):
        CurateOptions(split_ratios={"train": 0.8, "dev": 0.1, "tset": 0.1})
    assert CurateOptions(split_ratios={"train": 0.9, "test_unseen": 0.1}).split_ratios == {"train": 0.9, "test_unseen": 0.1}


def test_a_row_s_drawn_split_stays_when_other_rows_join_or_are_filtered_out():
    """Adding the id "case" escaped the key of an existing "Case" (_43_61_73_65) and moved its split; a duration
    bound that dropped b/raw/x.mp4's ranges renamed a/raw/x.mp4's unit (to raw/x.mp4) and moved its ranges."""
    from manifests.keys import case_safe_keys

    for salt in ("s1", "s2", "s3", "signfeat"):
        alone = pd.DataFrame([_row(0, id="Case", split=None)])
        with_other = pd.DataFrame([_row(1, id="case", split=None), _row(0, id="Case", split=None)])
        with_other["key"] = case_safe_keys(list(with_other["id"]))
        assert with_other["key"][1] != alone["key"][0]  # the manifest's key changed...
        assert assign_splits(with_other, CurateOptions(split_salt=salt))[1] == assign_splits(alone, CurateOptions(split_salt=salt))[0], salt
        ranges = [_row(i, split=None, source_kind="range", path=f"/data/{'a' if i < 3 else 'b'}/raw/x.mp4", start_s=float(i),
                       end_s=i + (1.0 if i < 3 else 5.0), duration_s=1.0 if i < 3 else 5.0) for i in range(6)]
        options = CurateOptions(split_salt=salt)
        every = curate(pd.DataFrame(ranges), options)[0].set_index("id")["split"]
        bounded = curate(pd.DataFrame(ranges), CurateOptions(split_salt=salt, max_duration_s=2.0))[0].set_index("id")["split"]
        assert len(bounded) == 3 and (bounded == every[bounded.index]).all(), salt


def test_byte_identical_copies_kept_by_no_dedup_share_a_split_and_a_fractional_count_is_refused():
    """--no-dedup kept c1 and its copy and drew them into test and train, without a word; a config's min_frames: 8.5
    passed where --min-frames 2.5 is refused."""
    rows = [_row(i, split=None, content_hash=f"same{i // 2}") for i in range(40)]  # 20 pairs of copies
    for salt in ("a", "b", "signfeat"):
        kept = curate(pd.DataFrame(rows), CurateOptions(dedup=False, split_salt=salt))[0]
        assert len(kept) == 40 and (kept.groupby("content_hash")["split"].nunique() == 1).all(), salt
        assert kept["split"].nunique() > 1, salt
    apart = pd.DataFrame([_row(0, split="train", content_hash="h"), _row(1, split="test", content_hash="h", path="/x/copy.mp4")])
    assert list(curate(apart, CurateOptions(dedup=False))[2]["recordings_in_several_splits"].values()) == [["test", "train"]]
    with pytest.raises(SignfeatError, match=r"min_frames \(--min-frames\) counts frames, pixels or characters: a whole number, got 8.5"):
        CurateOptions(min_frames=8.5)
    assert CurateOptions(min_frames=8.0).min_frames == 8.0


def test_drawn_shares_far_from_the_ratios_are_reported_and_the_cli_says_so(tmp_path, capsys):
    """One signer with 90 % of the rows under --group-by-signer put 915 of 1000 rows in test, exit 0, no word."""
    from manifests.schema import rows_to_table, write_manifest
    from pipeline.cli import main

    rows = [_row(i, split=None, signer="big" if i < 90 else f"s{i}") for i in range(100)]
    report = curate(pd.DataFrame(rows), CurateOptions(group_by_signer=True))[2]
    big = report["drawn_per_split"]
    assert sum(big.values()) == 100 and max(big.values()) >= 90
    heavy = max(big, key=big.get)
    assert report["drawn_far_from_ratios"][heavy][0] >= 0.9
    even = curate(pd.DataFrame([_row(i, split=None, signer=f"s{i}") for i in range(2000)]), CurateOptions(group_by_signer=True))[2]
    assert even["drawn_far_from_ratios"] == {}
    write_manifest(rows_to_table(rows), tmp_path / "m.parquet")
    assert main(["manifest", "curate", str(tmp_path / "m.parquet"), "--out", str(tmp_path / "c.parquet"), "--report", str(tmp_path / "r"),
                 "--no-plots", "--group-by-signer"]) == 0
    assert "note: the 100 rows drawn by the ratios are far from them" in capsys.readouterr().err
    # rows that join a split their video has are not drawn: not counted, and no salt would change them
    joined = [_row(5 * v + k, split="test" if k == 0 else None, source_kind="range", path=f"/v/{v}.mp4", start_s=float(k), end_s=k + 1.0)
              for v in range(10) for k in range(5)]
    report = curate(pd.DataFrame(joined), CurateOptions())[2]
    assert report["kept_per_split"] == {"test": 50} and report["drawn_per_split"] == {} and report["drawn_far_from_ratios"] == {}


def test_a_signer_the_annotations_put_in_two_splits_has_its_blank_rows_drawn_as_before():
    """The rule that draws a recording's blank rows among its given splits reached signer groups too: a signer with
    one row in train and one in test had its blank clips drawn only into those (dev got almost nothing), and
    --group-by-signer corpora changed splits between versions."""
    seen = set()
    for salt in (f"s{i}" for i in range(200)):  # a whole signer is drawn at once: dev for about one salt in ten
        rows = [_row(0, split="train", signer="S"), _row(1, split="test", signer="S")] + [_row(2 + i, split=None, signer="S") for i in range(8)]
        seen |= set(assign_splits(pd.DataFrame(rows), CurateOptions(group_by_signer=True, split_salt=salt))[2:])
    assert "dev" in seen
