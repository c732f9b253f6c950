import json
import os
from pathlib import Path

import numpy as np
import pytest

from manifests.formats import parse_csldaily, parse_how2sign, parse_phoenix, parse_table, sniff_format
from pipeline.errors import SignfeatError


def test_phoenix_corpus_file(tmp_path):
    root = tmp_path / "PHOENIX-2014-T"
    manual = root / "annotations/manual"
    manual.mkdir(parents=True)
    ann = manual / "PHOENIX-2014-T.dev.corpus.csv"
    ann.write_text(
        "name|video|start|end|speaker|orth|translation\n"
        "01April_2010_Thursday_heute-6694|01April_2010_Thursday_heute-6694/1/*.png|-1|-1|Signer04|REGEN|morgen regnet es im süden\n"
        "02April_2010_Friday_tagesschau-1|02April_2010_Friday_tagesschau-1/*.png|-1|-1|Signer01|WIND|\n"
        "broken|line\n",
        encoding="utf-8",
    )
    (root / "features/fullFrame-210x260px/dev").mkdir(parents=True)
    rows = list(parse_phoenix(ann, root=manual))  # root found by walking up to the folder with features/
    assert len(rows) == 3
    a, b, c = rows
    assert a["id"] == "01April_2010_Thursday_heute-6694"
    assert a["split"] == "dev" and a["signer"] == "Signer04" and a["fps"] == 25.0
    assert a["text"] == "morgen regnet es im süden" and a["status"] is None
    assert a["source_kind"] == "frames"
    assert Path(a["path"]) == root / "features/fullFrame-210x260px/dev/01April_2010_Thursday_heute-6694/1"
    assert b["status"] == "missing_text"
    assert c["status"] == "bad_annotation" and ":4:" in c["error"]
    assert sniff_format(ann) == "phoenix"


def test_how2sign_clip_files_or_ranges(tmp_path):
    (tmp_path / "train_rgb_front_clips/raw_videos").mkdir(parents=True)
    (tmp_path / "train_raw_videos/raw_videos").mkdir(parents=True)
    (tmp_path / "train_rgb_front_clips/raw_videos/--7E2sU6zP4_10-5-rgb_front.mp4").write_bytes(b"x")
    (tmp_path / "train_raw_videos/raw_videos/--7E2sU6zP4-5-rgb_front.mp4").write_bytes(b"x")
    ann = tmp_path / "how2sign_realigned_val.csv"
    header = "VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE\n"
    ann.write_text(
        header
        + "--7E2sU6zP4\t--7E2sU6zP4-5-rgb_front\t--7E2sU6zP4_10\t--7E2sU6zP4_10-5-rgb_front\t129.06\t142.48\tAnd I call them \"decorative\" elements.\n"
        + "--7E2sU6zP4\t--7E2sU6zP4-5-rgb_front\t--7E2sU6zP4_11\t--7E2sU6zP4_11-5-rgb_front\t142.8\t148.4\tSo they're not really necessary.\n"
        + "zzz\tzzz-1-rgb_front\tzzz_0\tzzz_0-1-rgb_front\t1.0\t2.0\tNo video anywhere.\n"
        + "short\trow\n",
        encoding="utf-8",
    )
    rows = list(parse_how2sign(ann, root=tmp_path))
    assert [r["id"] for r in rows[:3]] == ["--7E2sU6zP4_10-5-rgb_front", "--7E2sU6zP4_11-5-rgb_front", "zzz_0-1-rgb_front"]
    clip, rng, missing, bad = rows
    assert clip["source_kind"] == "video" and clip["path"].endswith("train_rgb_front_clips/raw_videos/--7E2sU6zP4_10-5-rgb_front.mp4")
    assert clip["text"] == 'And I call them "decorative" elements.'
    assert rng["source_kind"] == "range" and (rng["start_s"], rng["end_s"]) == (142.8, 148.4)
    assert rng["path"].endswith("train_raw_videos/raw_videos/--7E2sU6zP4-5-rgb_front.mp4")
    assert clip["source"] == rng["path"]  # a sentence clip is cut from the raw video its ranges read: one split unit
    assert missing["source_kind"] == "range" and not Path(missing["path"]).exists()
    assert bad["status"] == "bad_annotation"
    assert all(r["split"] == "dev" for r in rows)  # "val" is normalised to "dev"
    assert sniff_format(ann) == "how2sign"


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_generic_table(tmp_path, suffix):
    (tmp_path / "frames/S000001").mkdir(parents=True)
    recs = [
        {"id": "c1", "path": "videos/c1.mp4", "text": "你好 世界", "split": "Train", "signer": "7"},
        {"id": "c2", "path": "frames/S000001", "text": "Guten Morgen", "fps": "30"},
        {"id": "c3", "path": str(tmp_path / "long video.mkv"), "text": "hello", "start": "1.5", "end": "3.25"},
        {"id": "c4", "path": "videos/c4.mp4", "text": "  "},
    ]
    cols = ["id", "path", "text", "split", "signer", "start", "end", "fps"]
    ann = tmp_path / f"corpus{suffix}"
    if suffix == ".jsonl":
        ann.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs) + "{not json\n", encoding="utf-8")
    else:
        sep = "," if suffix == ".csv" else "\t"
        lines = [sep.join(cols)] + [sep.join(r.get(c, "") for c in cols) for r in recs]
        ann.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = list(parse_table(ann, root=tmp_path))
    by_id = {r["id"]: r for r in rows}
    assert by_id["c1"]["source_kind"] == "video" and by_id["c1"]["path"] == str(tmp_path / "videos/c1.mp4")
    assert by_id["c1"]["split"] == "train" and by_id["c1"]["signer"] == "7" and by_id["c1"]["text"] == "你好 世界"
    assert by_id["c2"]["source_kind"] == "frames" and by_id["c2"]["fps"] == 30.0
    assert by_id["c3"]["source_kind"] == "range" and (by_id["c3"]["start_s"], by_id["c3"]["end_s"]) == (1.5, 3.25)
    assert by_id["c4"]["status"] == "missing_text"
    assert all(r["dataset"] == "corpus" for r in rows)
    if suffix == ".jsonl":
        assert rows[-1]["status"] == "bad_annotation" and len(rows) == 5
    else:
        assert len(rows) == 4
    assert sniff_format(ann) == "table"


def test_table_without_required_columns_is_a_clear_error(tmp_path):
    ann = tmp_path / "a.csv"
    ann.write_text("name,file\nx,y\n")
    with pytest.raises(SignfeatError, match="missing"):
        list(parse_table(ann, root=tmp_path))


def test_table_fps_must_be_a_positive_number(tmp_path):
    (tmp_path / "frames").mkdir()
    ann = tmp_path / "a.csv"
    ann.write_text("id,path,text,fps\nneg,frames,t,-5\nzero,frames,t,0\nnan,frames,t,nan\ninf,frames,t,inf\nok,frames,t,12.5\nnone,frames,t,\n")
    by_id = {r["id"]: r for r in parse_table(ann, root=tmp_path)}
    for clip in ("neg", "zero", "nan", "inf"):
        assert by_id[clip]["status"] == "bad_annotation" and "fps must be a positive number" in by_id[clip]["error"], clip
    assert by_id["ok"]["status"] is None and by_id["ok"]["fps"] == 12.5
    assert by_id["none"]["status"] is None and by_id["none"]["fps"] is None


def test_an_annotation_that_is_not_utf8_is_a_one_line_error(tmp_path):
    from manifests.build import parse_annotations

    ann = tmp_path / "latin1.csv"
    ann.write_bytes("id,path,text\nx,a.mp4,Grüße\n".encode("latin-1"))
    with pytest.raises(SignfeatError, match="latin1.csv is not UTF-8 text"):
        parse_annotations([ann], "auto", tmp_path)


def test_jsonl_list_or_object_values_are_bad_annotations(tmp_path):
    ann = tmp_path / "a.jsonl"
    ann.write_text('{"id": "l", "path": "a.mp4", "text": ["hello"]}\n{"id": "o", "path": {"p": 1}, "text": "t"}\n{"id": 7, "path": "a.mp4", "text": "ok", "keypoints": [[1, 2]]}\n')
    by_id = {r["id"]: r for r in parse_table(ann, root=tmp_path)}
    assert by_id["l"]["status"] == "bad_annotation" and "text" in by_id["l"]["error"]
    assert by_id["o"]["status"] == "bad_annotation" and "path" in by_id["o"]["error"]
    assert by_id["7"]["status"] is None and by_id["7"]["text"] == "ok"


def test_how2sign_video_index_does_not_depend_on_the_listing_order(tmp_path, monkeypatch):
    import os

    from manifests import formats

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "x.mp4").write_bytes(b"")
    (tmp_path / "a" / "x.mkv").write_bytes(b"")
    walk = os.walk

    def reversed_walk(root, followlinks=False):
        for dirpath, dirs, files in walk(root, followlinks=followlinks):
            dirs.reverse()
            files.reverse()
            yield dirpath, dirs, files

    first = formats.index_videos(tmp_path)
    monkeypatch.setattr(formats.os, "walk", reversed_walk)
    assert formats.index_videos(tmp_path) == first == {"x": [str(tmp_path / "a" / "x.mkv"), str(tmp_path / "a" / "x.mp4"), str(tmp_path / "b" / "x.mp4")]}


def test_tsv_quotes_are_characters_of_the_text_and_csv_quoting_still_works(tmp_path):
    # A TSV read with CSV quoting let a text starting with '"' swallow the rows after it (3 rows for 4, no error)
    tsv = tmp_path / "a.tsv"
    tsv.write_text('id\tpath\ttext\nt1\ta.mp4\t"Guten" Morgen\nt2\ta.mp4\t"open quote never closed\nt3\ta.mp4\tthird, row\nt4\ta.mp4\tvierte\n', encoding="utf-8")
    by_id = {r["id"]: r["text"] for r in parse_table(tsv, root=tmp_path)}
    assert by_id == {"t1": '"Guten" Morgen', "t2": '"open quote never closed', "t3": "third, row", "t4": "vierte"}
    csv_file = tmp_path / "a.csv"
    csv_file.write_text('id,path,text\nc1,a.mp4,"Guten ""Morgen"", Welt"\nc2,a.mp4,"two\nlines"\n', encoding="utf-8")
    assert {r["id"]: r["text"] for r in parse_table(csv_file, root=tmp_path)} == {"c1": 'Guten "Morgen", Welt', "c2": "two\nlines"}


def test_start_end_on_a_row_that_is_not_a_range_is_a_bad_annotation(tmp_path):
    # they were dropped silently: a frame folder with start/end gave all its frames, as did source_kind video
    (tmp_path / "frames").mkdir()
    ann = tmp_path / "a.jsonl"
    recs = [{"id": "folder", "path": "frames", "text": "t", "start": 0.1, "end": 0.2},
            {"id": "video", "path": "a.mp4", "text": "t", "source_kind": "video", "start": 1.0},
            {"id": "range", "path": "a.mp4", "text": "t", "end": 2.0},
            {"id": "whole", "path": "a.mp4", "text": "t", "source_kind": "video"}]
    ann.write_text("".join(json.dumps(r) + "\n" for r in recs))
    by_id = {r["id"]: r for r in parse_table(ann, root=tmp_path)}
    assert by_id["folder"]["status"] == "bad_annotation" and "frame folder is one whole clip" in by_id["folder"]["error"]
    assert by_id["video"]["status"] == "bad_annotation" and "source_kind range" in by_id["video"]["error"]
    assert by_id["range"]["status"] is None and by_id["range"]["source_kind"] == "range"
    assert by_id["whole"]["status"] is None and by_id["whole"]["source_kind"] == "video"


def test_phoenix_2014t_frames_lie_in_the_name_folder_itself(tmp_path):
    # the corpus file says NAME/1/*.png, but PHOENIX-2014-T's release keeps NAME/images0001.png (no 1/):
    # every row of the real corpus was missing_file
    root = tmp_path / "PHOENIX-2014-T"
    ann = root / "annotations/manual/PHOENIX-2014-T.train.corpus.csv"
    ann.parent.mkdir(parents=True)
    ann.write_text("name|video|start|end|speaker|orth|translation\n"
                   "a-1|a-1/1/*.png|-1|-1|Signer01|X|x\n"   # T layout: a-1/images0001.png
                   "b-2|b-2/1/*.png|-1|-1|Signer01|X|x\n"   # the older layout: b-2/1/...
                   "|c-3/1/*.png|-1|-1|Signer01|X|x\n", encoding="utf-8")  # no name: a bad row, not a crash
    frames = root / "features/fullFrame-210x260px/train"
    (frames / "a-1").mkdir(parents=True)
    (frames / "b-2" / "1").mkdir(parents=True)
    a, b, c = parse_phoenix(ann, root=root)
    assert Path(a["path"]) == frames / "a-1" and Path(b["path"]) == frames / "b-2" / "1"
    assert c["status"] == "bad_annotation" and "no name" in c["error"]


def test_how2sign_row_without_a_sentence_name_is_a_bad_annotation(tmp_path):
    ann = tmp_path / "how2sign_realigned_test.csv"
    ann.write_text("VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE\n"
                   "v\tvid\ts\t\t0.0\t1.0\thello\n", encoding="utf-8")
    (row,) = parse_how2sign(ann, root=tmp_path, video_index={})
    assert row["status"] == "bad_annotation" and "no SENTENCE_NAME" in row["error"]


def test_a_json_array_of_records_is_read_as_records(tmp_path):
    # a .json holding an array was read line by line: records followed by a comma were bad rows without their ids
    (tmp_path / "v.mp4").write_bytes(b"")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([{"id": "a", "path": "v.mp4", "text": "x"}, {"id": "b", "path": "v.mp4", "text": "y", "start": 0, "end": 1},
                               {"id": "c", "path": "v.mp4", "text": "z", "start": True, "end": 2}, [1]], indent=1), encoding="utf-8")
    a, b, c, d = parse_table(ann, root=tmp_path)
    assert (a["id"], a["status"], b["id"], b["source_kind"], b["end_s"]) == ("a", None, "b", "range", 1.0)
    assert c["status"] == "bad_annotation" and "true" in c["error"].lower()  # true is no number of seconds (was 1.0 s)
    assert d["status"] == "bad_annotation" and "record 4" in d["error"]


def test_a_table_s_file_name_gives_the_split_of_rows_without_one_and_one_dataset(tmp_path):
    # train.csv and test.csv got no split (curation reassigned them at random) and two datasets (so a signer
    # in both was never "in several splits")
    folder = tmp_path / "mycorpus"
    folder.mkdir()
    (folder / "v.mp4").write_bytes(b"")
    for name in ("train.csv", "mycorpus_test.csv"):
        (folder / name).write_text("id,path,text,signer\n" f"{name}-1,v.mp4,x,S1\n", encoding="utf-8")
    (folder / "dev.csv").write_text("id,path,text,split\nd-1,v.mp4,x,test\n", encoding="utf-8")  # a split column wins
    (train,) = parse_table(folder / "train.csv", root=folder)
    (test,) = parse_table(folder / "mycorpus_test.csv", root=folder)
    (dev,) = parse_table(folder / "dev.csv", root=folder)
    assert (train["split"], test["split"], dev["split"]) == ("train", "test", "test")
    assert train["dataset"] == test["dataset"] == dev["dataset"] == "mycorpus"
    (clip,) = parse_table(folder / "train.csv", root=folder, dataset="other")
    assert clip["dataset"] == "other"


def test_a_csv_text_with_an_unclosed_quote_is_a_bad_annotation_not_a_merged_ok_row(tmp_path):
    # five rows in gave one or two out: the merged row was ok with the other rows as its text
    (tmp_path / "v.mp4").write_bytes(b"")
    ann = tmp_path / "t.csv"
    ann.write_text('id,path,text\na,v.mp4,fine\nb,v.mp4,"unclosed text\nc,v.mp4,third\nd,v.mp4,fourth\n'
                   'e,v.mp4,"a legit\nmulti-line text"\n', encoding="utf-8")
    rows = list(parse_table(ann, root=tmp_path))
    assert rows[0]["status"] is None
    assert rows[1]["id"] == "b" and rows[1]["status"] == "bad_annotation" and "unclosed quote" in rows[1]["error"]
    assert [(r["id"], r["status"]) for r in rows[2:]] == [("c", None), ("d", None), ("e", None)]  # read again after it
    assert rows[4]["text"] == "a legit\nmulti-line text"
    # named by the line the quote opens on (3), not the last line it swallowed (5)
    assert rows[1]["error"].startswith(f"{ann}:3: field 'text' runs over")
    for ending in ("\n", "\r\n"):  # the quote also swallows the file's last line break: it was named as line 2
        ann.write_text(ending.join(["id,path,text", "a,v.mp4,fine", 'b,v.mp4,"never closed', "c,v.mp4,third", "d,v.mp4,fourth", ""]),
                       encoding="utf-8", newline="")
        bad = next(r for r in parse_table(ann, root=tmp_path) if r["id"] == "b")
        assert bad["error"].startswith(f"{ann}:3: field 'text' runs over"), (ending, bad["error"])
    ann.write_text('id,path,text\n\ne,v.mp4,"a legit\nmulti-line text, with a comma"\nf,v.mp4,after\n', encoding="utf-8")
    legit, after = parse_table(ann, root=tmp_path)
    assert legit["status"] is None and legit["text"] == "a legit\nmulti-line text, with a comma"
    assert (legit["_where"], after["_where"]) == (f"{ann}:3", f"{ann}:5")  # a blank line 2, a row over lines 3-4


def test_an_unclosed_quote_before_a_long_rest_of_the_table_is_still_one_bad_row(tmp_path):
    """Past csv's 128 KiB field limit the swallowed rest of the file was a _csv.Error traceback, no manifest."""
    (tmp_path / "v.mp4").write_bytes(b"")
    body = "".join(f"r{i},v.mp4,sentence number {i} of the corpus\n" for i in range(4000))
    ann = tmp_path / "big.csv"
    ann.write_text('id,path,text\na,v.mp4,fine\nb,v.mp4,"unclosed text\n' + body, encoding="utf-8")
    rows = list(parse_table(ann, root=tmp_path))
    assert rows[0]["status"] is None and rows[1]["id"] == "b" and rows[1]["status"] == "bad_annotation"
    # and the 4000 rows after it are rows again (a 100k-row table became a 2-row manifest, exit 0)
    assert [r["id"] for r in rows[2:]] == [f"r{i}" for i in range(4000)] and all(r["status"] is None for r in rows[2:])
    assert rows[-1]["_where"] == f"{ann}:4003"  # header, a, b, then r0 on line 4


def test_a_quoted_multi_line_text_with_one_comma_rich_line_is_a_text(tmp_path):
    """RFC 4180 text over three lines, one of which happens to hold two commas, was taken for an unclosed quote."""
    (tmp_path / "v.mp4").write_bytes(b"")
    ann = tmp_path / "t.csv"
    ann.write_text('id,path,text\na,v.mp4,"Heute Sonne.\nMorgen gibt es Regen, Wind, und Schnee.\nDanach kalt."\n', encoding="utf-8")
    (row,) = parse_table(ann, root=tmp_path)
    assert row["status"] is None and row["text"].startswith("Heute Sonne.\nMorgen")


def test_json_strings_that_utf8_cannot_hold_are_bad_rows_not_a_crash(tmp_path):
    """A lone surrogate ("\\ud83d", an emoji cut in half) in an id crashed key making; in a text, the Parquet write
    at the very end of the build."""
    from manifests.schema import rows_to_table

    (tmp_path / "v.mp4").write_bytes(b"")
    ann = tmp_path / "t.jsonl"
    ann.write_text('{"id": "clip\\ud83d", "path": "v.mp4", "text": "x"}\n{"id": "b", "path": "v.mp4", "text": "half \\ud83d"}\n'
                   '{"id": "c", "path": "v.mp4", "text": "fine"}\n', encoding="utf-8")
    rows = list(parse_table(ann, root=tmp_path))
    assert [r["status"] for r in rows] == ["bad_annotation", "bad_annotation", None]
    assert "not valid Unicode" in rows[0]["error"] and "text" in rows[1]["error"]
    from manifests.keys import key_from_id

    for r in rows:
        key_from_id(r["id"])  # every id can be a key
    rows_to_table([{**r, "key": key_from_id(r["id"])} for r in rows])  # and the manifest can be written


def test_other_spellings_of_optional_columns_are_refused_not_ignored(tmp_path):
    """Start/End (or start_s/end_s) were read as nothing: every range became its whole video and a split was lost."""
    (tmp_path / "v.mp4").write_bytes(b"")
    ann = tmp_path / "t.csv"
    ann.write_text("id,path,text,Start,End,Split\na,v.mp4,x,1.0,2.0,test\n", encoding="utf-8")
    with pytest.raises(SignfeatError, match=r"'Start' \(meant: start\).*'End' \(meant: end\).*'Split' \(meant: split\)"):
        list(parse_table(ann, root=tmp_path))
    ann = tmp_path / "t.jsonl"
    ann.write_text('{"id": "a", "path": "v.mp4", "text": "x", "start_s": 1.0, "end_s": 2.0}\n', encoding="utf-8")
    (row,) = parse_table(ann, root=tmp_path)
    assert row["status"] == "bad_annotation" and "'start_s' (meant: start)" in row["error"]
    ann.write_text('{"id": "a", "path": "v.mp4", "text": "x", "start": 1.0, "end": 2.0, "gloss": "HEUTE"}\n', encoding="utf-8")
    (row,) = parse_table(ann, root=tmp_path)
    assert row["status"] is None and row["start_s"] == 1.0  # other extra columns are fine


def test_how2sign_videos_in_a_symlinked_folder_under_root_are_found(tmp_path):
    from manifests import formats

    (tmp_path / "shared" / "videos").mkdir(parents=True)
    (tmp_path / "shared" / "videos" / "vidA.mp4").write_bytes(b"")
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "raw_videos").symlink_to(tmp_path / "shared" / "videos")
    (tmp_path / "project" / "loop").symlink_to(tmp_path / "project")  # a cycle must not hang the walk
    found = formats.index_videos(tmp_path / "project")
    assert set(found) == {"vidA"} and [Path(p).resolve() for p in found["vidA"]] == [(tmp_path / "shared" / "videos" / "vidA.mp4").resolve()]


@pytest.mark.parametrize("name", ["empty.csv", "empty.tsv"])
def test_an_empty_table_file_says_so(tmp_path, name):
    ann = tmp_path / name
    ann.write_text("\n\n" if name.endswith("tsv") else "", encoding="utf-8")
    with pytest.raises(SignfeatError, match=f"{name}: the file is empty; a table annotation starts with a header"):
        list(parse_table(ann, root=tmp_path))


def test_names_that_differ_from_the_files_only_in_unicode_normalisation_are_found(tmp_path):
    """A file or folder macOS named (NFD: 'u' + combining diaeresis) and an annotation typed in NFC look the same,
    but a Linux file system holds other bytes: the rows were a bare missing_file."""
    import unicodedata

    from manifests import formats

    nfc, nfd = "Müller José", unicodedata.normalize("NFD", "Müller José")
    assert nfc != nfd
    (tmp_path / f"v {nfd}").mkdir()
    (tmp_path / f"v {nfd}" / f"{nfd}.mp4").write_bytes(b"")
    ann = tmp_path / "t.jsonl"
    rows = [{"id": "a", "path": f"v {nfc}/{nfc}.mp4", "text": "x"}, {"id": "b", "path": str(tmp_path / f"v {nfc}" / f"{nfc}.mp4"), "text": "x"},
            {"id": "c", "path": f"v {nfc}/other.mp4", "text": "x"}]
    ann.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    a, b, c = parse_table(ann, root=tmp_path)
    assert a["path"] == b["path"] == str(tmp_path / f"v {nfd}" / f"{nfd}.mp4")  # the name on disk
    assert c["path"] == str(tmp_path / f"v {nfc}" / "other.mp4")  # nothing of that name: the path as written
    # How2Sign finds videos by name, CSL-Daily folders by name: both keyed by the NFC form
    assert formats._only_one(formats.index_videos(tmp_path), nfc) == str(tmp_path / f"v {nfd}" / f"{nfd}.mp4")
    assert formats._only_one(formats.index_folders(tmp_path, {f"v {nfc}"}), f"v {nfc}", what="folders") == str(tmp_path / f"v {nfd}")
    # PHOENIX: the frame folder under the split, NAME/1 (PHOENIX-2014) or NAME itself (PHOENIX-2014-T)
    (tmp_path / "features/fullFrame-210x260px/dev" / nfd / "1").mkdir(parents=True)
    (tmp_path / "features/fullFrame-210x260px/dev" / f"T {nfd}").mkdir(parents=True)
    corpus = tmp_path / "PHOENIX-2014-T.dev.corpus.csv"
    corpus.write_text("name|video|start|end|speaker|orth|translation\n" + f"{nfc}|{nfc}/1/*.png|-1|-1|Signer01|A|a b\n"
                      f"T {nfc}|T {nfc}/1/*.png|-1|-1|Signer01|A|a b\n", encoding="utf-8")
    row, t_row = parse_phoenix(corpus, root=tmp_path)
    assert row["path"] == str(tmp_path / "features/fullFrame-210x260px/dev" / nfd / "1") and row["id"] == nfc
    assert t_row["path"] == str(tmp_path / "features/fullFrame-210x260px/dev" / f"T {nfd}")


def test_when_a_name_exists_in_both_normalisations_the_byte_exact_one_is_taken(tmp_path):
    """Two videos (or folders) whose names differ only in normalisation: every row naming either was refused as
    '2 videos named ...', with two paths that print alike."""
    import unicodedata

    from manifests import formats

    nfc, nfd = "José-1", unicodedata.normalize("NFD", "José-1")
    for name in (nfc, nfd):
        (tmp_path / f"{name}.mp4").write_bytes(name.encode())
        (tmp_path / f"S {name}").mkdir()
    videos, folders = formats.index_videos(tmp_path), formats.index_folders(tmp_path, {f"S {nfc}"})
    assert formats._only_one(videos, nfc) == str(tmp_path / f"{nfc}.mp4") and formats._only_one(videos, nfd) == str(tmp_path / f"{nfd}.mp4")
    assert formats._only_one(folders, f"S {nfd}", what="folders") == str(tmp_path / f"S {nfd}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / f"{nfc}.mp4").write_bytes(b"a third")  # no longer one byte-exact match: refused, and why
    with pytest.raises(ValueError, match="3 videos named José-1.* differ only in Unicode normalisation"):
        formats._only_one(formats.index_videos(tmp_path), nfc)
    # a table's path in a third form (é composed, ü not) matches both and neither byte for byte: said, not missing_file
    mixed = "Ju\u0308rg\u00e9n"
    for name in ("Jürgén", unicodedata.normalize("NFD", "Jürgén")):
        (tmp_path / f"{name}.mp4").write_bytes(b"")
    ann = tmp_path / "t.jsonl"
    ann.write_text(json.dumps({"id": "a", "path": f"{mixed}.mp4", "text": "x"}) + "\n", encoding="utf-8")
    (row,) = parse_table(ann, root=tmp_path)
    assert row["status"] == "bad_annotation" and "2 names in" in row["error"] and "differ from" in row["error"]


def test_a_text_of_only_invisible_characters_is_missing_and_invisible_ends_are_dropped(tmp_path):
    """"\u200b" (a zero-width space) or "\ufeff" (a stray BOM) as a text was an ok row that curation kept."""
    texts = {"zwsp": "\u200b", "bom": " \ufeff ", "mixed": "\u3000\u200b\t\u2060", "filler": "\u3164", "selector": "\ufe0f\u034f",
             "braille": "\u2800 ", "ends": "\ufeffhallo Welt\u200b ", "family": "\U0001F468\u200d\U0001F469\u200d\U0001F467",
             "inner": "a\u200bb", "flag": "I love \U0001F3F4\U000E0067\U000E0062\U000E0065\U000E006E\U000E0067\U000E007F",
             "heart": "gut \u2764\ufe0f", "marks": "\u2066hi\u00ad\u180e\u061c\u2069", "hebrew": "\u202b\u05e9\u05dc\u05d5\u05dd\u202c",
             "lone_tag": "hi\U000E0020", "filler_end": "hi \u115f"}
    ann = tmp_path / "t.jsonl"
    ann.write_text("".join(json.dumps({"id": k, "path": "v.mp4", "text": t}) + "\n" for k, t in texts.items()), encoding="utf-8")
    rows = {r["id"]: r for r in parse_table(ann, root=tmp_path)}
    assert [k for k, r in rows.items() if r["status"] == "missing_text"] == ["zwsp", "bom", "mixed", "filler", "selector", "braille"]
    assert rows["ends"]["text"] == "hallo Welt" and rows["ends"]["status"] is None
    assert rows["family"]["text"] == texts["family"] and rows["inner"]["text"] == "a\u200bb"  # joiners inside stay
    assert rows["flag"]["text"] == texts["flag"] and rows["heart"]["text"] == texts["heart"]  # an emoji's tags / selector at the end stay
    # other format characters, a tag that ends no flag and a filler are trimmed at the ends (they were kept)
    assert [rows[k]["text"] for k in ("marks", "hebrew", "lone_tag", "filler_end")] == ["hi", "\u05e9\u05dc\u05d5\u05dd", "hi", "hi"]


def test_a_video_or_folder_and_a_link_to_it_both_under_root_are_one(tmp_path):
    """raw_videos/NAME.mp4 linked to a store under the same root was '2 videos named NAME.*': the row was lost."""
    from manifests import formats

    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "vidA.mp4").write_bytes(b"")
    (tmp_path / "store" / "S01").mkdir()
    (tmp_path / "raw_videos").mkdir()
    (tmp_path / "raw_videos" / "vidA.mp4").symlink_to(tmp_path / "store" / "vidA.mp4")
    (tmp_path / "raw_videos" / "S01").symlink_to(tmp_path / "store" / "S01")
    (tmp_path / "hard").mkdir()
    os.link(tmp_path / "store" / "vidA.mp4", tmp_path / "hard" / "vidA.mp4")  # a hard link is the same file too
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "vidA.mp4").write_bytes(b"")  # another file of the same name: still two
    videos = formats.index_videos(tmp_path)
    assert videos["vidA"] == [str(tmp_path / "copy" / "vidA.mp4"), str(tmp_path / "hard" / "vidA.mp4")]  # the first of each file, in walk order
    (tmp_path / "copy" / "vidA.mp4").unlink()
    (tmp_path / "hard" / "vidA.mp4").unlink()
    assert formats.index_videos(tmp_path)["vidA"] == [str(tmp_path / "raw_videos" / "vidA.mp4")]
    assert formats.index_folders(tmp_path, {"S01"}) == {"S01": [str(tmp_path / "raw_videos" / "S01")]}


def test_many_videos_of_one_name_are_indexed_with_one_stat_each(tmp_path, monkeypatch):
    """Each video was compared (os.path.samefile: two stats) with every earlier one of its name: a root holding a
    corpus of 100k folders that each hold a video.mp4 took hours, with no output, before the build's probe began."""
    from manifests import formats

    for i in range(300):
        (tmp_path / f"clip{i:04d}").mkdir()
        (tmp_path / f"clip{i:04d}" / "video.mp4").write_bytes(b"")
    calls = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda *a, **k: calls.append(a[0]) or real_stat(*a, **k))
    found = formats.index_videos(tmp_path)
    assert found["video"] == [str(tmp_path / f"clip{i:04d}" / "video.mp4") for i in range(300)]
    assert len(calls) <= 2 * 300  # was ~300 * 299 (each pair of paths)


def test_how2sign_tabs_inside_a_sentence_and_extra_columns_keep_the_row(tmp_path):
    """A tab inside a sentence (TSV has no quoting) or a column a user added made every such row a bad_annotation
    whose id was lost (file:line)."""
    (tmp_path / "v.mp4").write_bytes(b"")
    header = "VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE"
    ann = tmp_path / "how2sign_realigned_train.csv"
    ann.write_text(header + "\nv\tv\ts0\ts0-1\t1.0\t2.0\tone\ttab inside\n", encoding="utf-8")
    (row,) = parse_how2sign(ann, root=tmp_path)
    assert row["id"] == "s0-1" and row["status"] is None and row["text"] == "one\ttab inside"
    ann.write_text(header + "\tNOTE\nv\tv\ts0\ts0-1\t1.0\t2.0\tone\tchecked\nv\tv\ts1\ts1-1\t1.0\n", encoding="utf-8")
    good, bad = parse_how2sign(ann, root=tmp_path)
    assert good["id"] == "s0-1" and good["status"] is None and good["text"] == "one"
    assert bad["id"] == "s1-1" and bad["status"] == "bad_annotation"


def test_ids_equal_in_unicode_nfc_are_duplicates(tmp_path):
    """Müller typed (NFC) and Müller from a macOS file name (NFD) were two ok clips with two keys."""
    import unicodedata

    from manifests.build import mark_duplicates

    rows = [{"id": unicodedata.normalize("NFC", "Müller_01"), "status": None}, {"id": unicodedata.normalize("NFD", "Müller_01"), "status": None}]
    assert rows[0]["id"] != rows[1]["id"]
    mark_duplicates(rows)
    assert rows[0]["status"] is None and rows[1]["status"] == "duplicate_id" and "Unicode normal form" in rows[1]["error"]


def test_a_phoenix_translation_holding_a_bar_keeps_its_row(tmp_path):
    """The file is '|'-separated without quoting: a '|' in the last field (the translation) made the row a bad
    annotation that lost its id."""
    ann = tmp_path / "PHOENIX-2014-T.train.corpus.csv"
    ann.write_text("name|video|start|end|speaker|orth|translation\n"
                   "c1|c1/1/*.png|-1|-1|Signer01|REGEN|es regnet | morgen sonne\nc2|c2/1/*.png|-1\n", encoding="utf-8")
    good, bad = parse_phoenix(ann, root=tmp_path)
    assert good["id"] == "c1" and good["status"] is None and good["text"] == "es regnet | morgen sonne"
    assert bad["id"] == "c2" and bad["status"] == "bad_annotation"


def test_an_unclosed_quote_ending_at_a_later_quoted_field_with_a_comma_says_unclosed_quote(tmp_path):
    """The swallowed rows ended at '"quoted, with comma"', which left the row with more fields than the header:
    that message showed, and b1..b3 and c vanished without a word."""
    (tmp_path / "v.mp4").write_bytes(b"")
    ann = tmp_path / "t.csv"
    ann.write_text('id,path,text,split\na,v.mp4,"unclosed quote,train\nb1,v.mp4,normal text,train\nb2,v.mp4,normal text,train\n'
                   'b3,v.mp4,normal text,train\nc,v.mp4,"quoted, with comma",train\nd,v.mp4,normal,train\n', encoding="utf-8")
    rows = list(parse_table(ann, root=tmp_path))
    assert rows[0]["id"] == "a" and rows[0]["status"] == "bad_annotation" and "unclosed quote" in rows[0]["error"]
    # the rows it swallowed are read again from the line after it (they were lost: only d was left)
    assert [(r["id"], r["text"], r["status"]) for r in rows[1:]] == [
        ("b1", "normal text", None), ("b2", "normal text", None), ("b3", "normal text", None), ("c", "quoted, with comma", None),
        ("d", "normal", None)]
    assert [r["_where"] for r in rows] == [f"{ann}:{n}" for n in range(2, 8)]


def test_a_json_array_with_a_syntax_error_or_a_wrapped_object_is_one_clear_error(tmp_path):
    """A trailing comma made one bad_annotation row per physical line ("bad JSON line"), without JSON's own
    message; {"clips": [...]} was one row saying "no id"."""
    (tmp_path / "v.mp4").write_bytes(b"")
    ann = tmp_path / "clips.json"
    ann.write_text('[\n {"id": "k0", "path": "v.mp4", "text": "t"},\n {"id": "k1", "path": "v.mp4", "text": "t"},\n]\n', encoding="utf-8")
    with pytest.raises(SignfeatError, match=r"clips.json: not valid JSON \(Expecting value: line 4 column 1"):
        list(parse_table(ann, root=tmp_path))
    ann.write_text(json.dumps({"clips": [{"id": "k0", "path": "v.mp4", "text": "t"}]}), encoding="utf-8")
    with pytest.raises(SignfeatError, match="records under 'clips'"):
        list(parse_table(ann, root=tmp_path))
    ann.write_text('{"id": "k0", "path": "v.mp4", "text": "t"}\n{"id": "k1", "path": "v.mp4", "text": "u"}\n', encoding="utf-8")
    assert [r["id"] for r in parse_table(ann, root=tmp_path)] == ["k0", "k1"]  # JSON lines in a .json still read


def test_phoenix_frames_are_found_from_the_corpus_file_under_a_root_above_the_release(tmp_path):
    """A build mixing corpora has one --root above them all; PHOENIX-2014-T-release-v3/PHOENIX-2014-T under it
    was not found, and every row was missing_file."""
    release = tmp_path / "datasets" / "PHOENIX-2014-T-release-v3" / "PHOENIX-2014-T"
    ann = release / "annotations/manual/PHOENIX-2014-T.dev.corpus.csv"
    ann.parent.mkdir(parents=True)
    ann.write_text("name|video|start|end|speaker|orth|translation\nn1|n1/1/*.png|-1|-1|Signer01|X|hallo\n", encoding="utf-8")
    (release / "features/fullFrame-210x260px/dev/n1").mkdir(parents=True)
    (row,) = parse_phoenix(ann, root=tmp_path / "datasets")
    assert Path(row["path"]) == release / "features/fullFrame-210x260px/dev/n1"


def test_ids_are_kept_exactly_as_written(tmp_path):
    """Ids were stripped: " x" and "x\u00a0" both became "x" (then duplicate_id "already used", naming an id the
    file does not hold for them), and "trailing " lost its space in every output users join on."""
    (tmp_path / "v.mp4").write_bytes(b"")
    ann = tmp_path / "train.jsonl"
    ids = ["x", " x", "x\u00a0", "trailing ", "\tt"]
    ann.write_text("".join(json.dumps({"id": i, "path": "v.mp4", "text": "t"}) + "\n" for i in ids) + json.dumps({"id": "  ", "path": "v.mp4", "text": "t"}) + "\n")
    rows = list(parse_table(ann, root=tmp_path))
    assert [r["id"] for r in rows[:5]] == ids and all(r["status"] != "bad_annotation" for r in rows[:5])
    assert rows[5]["status"] == "bad_annotation" and "no id" in rows[5]["error"]  # only whitespace: no id


def test_a_json_id_that_is_not_a_string_or_an_integer_is_a_bad_annotation(tmp_path):
    """1e5 and true became the ids "100000.0" and "True"; 42 is the id "42"."""
    (tmp_path / "v.mp4").write_bytes(b"")
    ann = tmp_path / "train.jsonl"
    ann.write_text('{"id": 1e5, "path": "v.mp4", "text": "t"}\n{"id": true, "path": "v.mp4", "text": "t"}\n'
                   '{"id": 7.0, "path": "v.mp4", "text": "t"}\n{"id": 42, "path": "v.mp4", "text": "t"}\n')
    rows = list(parse_table(ann, root=tmp_path))
    assert [r["status"] for r in rows[:3]] == ["bad_annotation"] * 3
    assert "id 100000.0: a JSON number with a fraction or exponent" in rows[0]["error"] and "id true: a JSON true/false" in rows[1]["error"]
    assert rows[3]["id"] == "42" and rows[3]["status"] != "bad_annotation"


def test_a_misspelt_split_word_is_a_bad_annotation_and_a_split_of_one_s_own_passes(tmp_path):
    """`tset` became a split of its own, kept by curation and extracted into a folder no training or eval reads."""
    (tmp_path / "v.mp4").write_bytes(b"")
    ann = tmp_path / "corpus.jsonl"
    splits = {"a": "tset", "b": "trian", "c": "validaton", "d": "test_unseen", "e": "holdout", "f": "dev2", "g": "Validation", "h": "eval",
              "i": "testing", "j": "calibration", "k": "rain", "l": "rest", "m": "text", "n": "tst", "o": "devv"}
    ann.write_text("".join(json.dumps({"id": i, "path": "v.mp4", "text": "t", "split": s}) + "\n" for i, s in splits.items()))
    by_id = {r["id"]: r for r in parse_table(ann, root=tmp_path)}
    for clip, meant in (("a", "test"), ("b", "train"), ("c", "dev"), ("n", "test"), ("o", "dev")):
        assert by_id[clip]["status"] == "bad_annotation" and f"reads as a misspelling of {meant!r}" in by_id[clip]["error"], by_id[clip]
    kept = {"d": "test_unseen", "e": "holdout", "f": "dev2", "g": "dev", "h": "eval", "i": "test", "j": "calibration", "k": "rain",
            "l": "rest", "m": "text"}  # real words one substitution or one first letter away are not typos
    assert {c: by_id[c]["split"] for c in kept} == kept and all(by_id[c]["status"] is None for c in kept)



def test_a_misspelt_split_word_in_a_file_name_makes_its_rows_without_a_split_bad_annotations(tmp_path):
    """corpus_tset.csv's rows got no split (the file name's split word was not found) and curation drew one."""
    (tmp_path / "v.mp4").write_bytes(b"")
    for name, meant in (("corpus_tset.csv", "test"), ("trian.csv", "train"), ("my-validaton-set.csv", "dev")):
        ann = tmp_path / name
        ann.write_text("id,path,text,split\na,v.mp4,t,\nb,v.mp4,t,train\n", encoding="utf-8")
        a, b = parse_table(ann, root=tmp_path)
        assert a["status"] == "bad_annotation" and f"misspelling of {meant!r}" in a["error"] and "file name" in a["error"], a
        assert b["status"] is None and b["split"] == "train"  # a row that says its split is read as it says
    for name, split in (("rain_corpus.csv", None), ("corpus_test_v2.csv", "test"), ("tests_and_more.csv", None)):
        ann = tmp_path / name
        ann.write_text("id,path,text\na,v.mp4,t\n", encoding="utf-8")
        (row,) = parse_table(ann, root=tmp_path)
        assert row.get("split") == split and (row["status"] is None) == (name != "tests_and_more.csv"), (name, row)

def _csldaily_release(tmp_path, info, splits="name|split\nS000000_P0000_T00|train\nS000001_P0001_T00|test\n", frames=(3, 2)):
    """A tiny copy of CSL-Daily as released: sentence_label/{csl2020ct_v2.pkl, split_1.txt} and
    sentence/frames_512x512/NAME/000000.jpg..."""
    import pickle

    from PIL import Image

    root = tmp_path / "csl-daily"
    labels = root / "sentence_label"
    labels.mkdir(parents=True)
    with open(labels / "csl2020ct_v2.pkl", "wb") as f:
        pickle.dump({"info": info, "gloss_map": ["他", "谁"], "char_map": ["他", "是", "谁", "？"], "word_map": ["他", "是", "谁", "？"]}, f)
    if splits is not None:
        (labels / "split_1.txt").write_text(splits, encoding="utf-8")
    for name, n in zip(("S000000_P0000_T00", "S000001_P0001_T00"), frames):
        folder = root / "sentence/frames_512x512" / name
        folder.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(folder / f"{i:06d}.jpg")
    return root, labels / "csl2020ct_v2.pkl"


CSL_INFO = [
    {"name": "S000000_P0000_T00", "length": 3, "label_gloss": ["他", "谁"], "label_char": ["他", "是", "谁", "？"],
     "label_word": ["他", "是", "谁", "？"], "label_postag": ["r", "v", "r", "w"], "signer": 0, "time": 0},
    {"name": "S000001_P0001_T00", "length": 2, "label_gloss": ["谁"], "label_char": ["是", "谁"], "label_word": ["是谁"],
     "label_postag": ["v"], "signer": 1, "time": 0},
]


def test_csldaily_release_reads_as_frame_folders_with_chinese_text_splits_and_30_fps(tmp_path):
    from manifests.probe import probe_chunk

    root, ann = _csldaily_release(tmp_path, CSL_INFO)
    assert sniff_format(ann) == "csldaily"
    rows = list(parse_csldaily(ann, root=tmp_path))  # --root above the release: the folders are found by name
    assert [(r["id"], r["text"], r["split"], r["signer"], r["fps"], r["source_kind"]) for r in rows] == [
        ("S000000_P0000_T00", "他是谁？", "train", "0", 30.0, "frames"),
        ("S000001_P0001_T00", "是谁", "test", "1", 30.0, "frames")]
    assert all(r["status"] is None for r in rows)
    assert Path(rows[0]["path"]) == root / "sentence/frames_512x512/S000000_P0000_T00"
    assert rows == list(parse_csldaily(ann, root=ann.parent))  # the default --root, the pickle's folder: the release is found
    probed = probe_chunk([dict(r, _row=i) for i, r in enumerate(rows)]).to_pylist()
    assert [(p["status"], p["num_frames"], p["duration_s"]) for p in probed] == [("ok", 3, 0.1), ("ok", 2, pytest.approx(2 / 30))]


def test_csldaily_without_a_split_file_missing_folders_and_bad_entries_are_rows_not_crashes(tmp_path):
    info = [*CSL_INFO, {"name": "S000009_P0000_T00", "label_char": ["好"], "signer": 0},  # no frame folder
            {"label_char": ["无"]},  # no name
            {"name": "S000010_P0000_T00", "label_char": "好的", "signer": 0},  # a string, not a list of characters
            {"name": "S000011_P0000_T00", "label_char": [], "label_word": [], "signer": 0}]  # no text
    root, ann = _csldaily_release(tmp_path, info, splits=None)
    rows = list(parse_csldaily(ann, root=root))
    assert len(rows) == len(info)
    assert [r.get("split") for r in rows] == [None] * len(info)  # curation draws the splits
    assert Path(rows[2]["path"]) == root / "sentence/frames_512x512/S000009_P0000_T00" and rows[2]["status"] is None  # the probe reports it
    assert rows[3]["status"] == "bad_annotation" and "name" in rows[3]["error"]
    assert rows[4]["status"] == "bad_annotation" and "list of strings" in rows[4]["error"]
    assert rows[5]["status"] == "missing_text"


def test_csldaily_pickle_that_names_a_callable_is_refused_before_anything_runs(tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "ran",))

    ann = tmp_path / "csl2020ct_v2.pkl"
    ann.write_bytes(pickle.dumps({"info": [Boom()]}))
    with pytest.raises(SignfeatError, match="csl2020ct_v2.pkl"):
        list(parse_csldaily(ann, root=tmp_path))
    assert not (tmp_path / "ran").exists()
    ann.write_bytes(pickle.dumps([{"name": "x"}]))
    with pytest.raises(SignfeatError, match="not a CSL-Daily annotation file"):
        list(parse_csldaily(ann, root=tmp_path))
    (tmp_path / "split_1.txt").write_text("name,split\nx,train\n", encoding="utf-8")
    ann.write_bytes(pickle.dumps({"info": []}))
    with pytest.raises(SignfeatError, match="not a CSL-Daily split file"):
        list(parse_csldaily(ann, root=tmp_path))


def test_a_table_s_source_column_is_read(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"")
    ann = tmp_path / "openasl.csv"
    ann.write_text("id,path,text,source\na,a.mp4,t,yt-abc\nb,a.mp4,t,\n", encoding="utf-8")
    a, b = parse_table(ann, root=tmp_path)
    assert (a["source"], b["source"], a["status"], b["status"]) == ("yt-abc", None, None, None)


def test_how2sign_names_found_twice_under_root_are_bad_annotations_not_a_silent_pick(tmp_path):
    """A sentence clip also present as OpenPose's rendering (features/openpose_output/video/NAME.mp4) was read from
    whichever folder sorted first."""
    for folder in ("sentence_level/val/rgb_front/raw_videos", "sentence_level/val/rgb_front/features/openpose_output/video", "raw"):
        (tmp_path / folder).mkdir(parents=True)
    for folder in ("sentence_level/val/rgb_front/raw_videos", "sentence_level/val/rgb_front/features/openpose_output/video"):
        (tmp_path / folder / "X_0-1-rgb_front.mp4").write_bytes(b"x")
    (tmp_path / "raw/X-1-rgb_front.mp4").write_bytes(b"x")
    ann = tmp_path / "how2sign_realigned_val.csv"
    ann.write_text("VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE\n"
                   "X\tX-1-rgb_front\tX_0\tX_0-1-rgb_front\t1.0\t2.0\thello\n"
                   "X\tX-1-rgb_front\tX_1\tX_1-1-rgb_front\t2.0\t3.0\tworld\n", encoding="utf-8")
    twice, ranged = parse_how2sign(ann, root=tmp_path)
    assert twice["status"] == "bad_annotation" and "2 videos named X_0-1-rgb_front" in twice["error"] and "openpose_output" in twice["error"]
    assert twice["text"] == "hello" and twice["split"] == "dev"  # the row keeps what it says
    assert ranged["status"] is None and ranged["path"] == str(tmp_path / "raw/X-1-rgb_front.mp4")


def test_a_json_array_of_records_holding_nested_records_is_one_clear_error(tmp_path):
    """WLASL_v0.3.json (gloss -> instances) built "successfully" into one "no id" row per gloss, its clips uncounted."""
    ann = tmp_path / "WLASL_v0.3.json"
    ann.write_text(json.dumps([{"gloss": "book", "instances": [{"video_id": "69241", "frame_start": 1, "frame_end": -1, "fps": 25}]},
                               {"gloss": "drink", "instances": [{"video_id": "65539", "frame_start": 1, "frame_end": 40, "fps": 25}]}]))
    with pytest.raises(SignfeatError, match=r"hold lists of records \('instances'\).*flatten"):
        list(parse_table(ann, root=tmp_path))


def test_csldaily_folder_found_twice_python2_text_and_a_pickle_named_pickle(tmp_path):
    """A hand-crop folder named as the sentence was read instead of its frames (sort order); a Python 2 pickle's
    UTF-8 str labels came out as one Latin-1 character per byte ("ä»" for 今)."""
    root, ann = _csldaily_release(tmp_path, CSL_INFO)
    (root / "hand_crops" / "S000001_P0001_T00").mkdir(parents=True)
    rows = list(parse_csldaily(ann, root=root))
    assert rows[0]["status"] is None
    assert rows[1]["status"] == "bad_annotation" and "2 folders named S000001_P0001_T00" in rows[1]["error"] and "hand_crops" in rows[1]["error"]
    assert rows[1]["split"] == "test"
    import pickle

    py2 = [{**CSL_INFO[0], "label_char": [c.encode("utf-8").decode("latin1") for c in CSL_INFO[0]["label_char"]]}]  # as latin1 reads them
    ann.write_bytes(pickle.dumps({"info": py2}, protocol=2))
    assert [r["text"] for r in parse_csldaily(ann, root=root)] == ["他是谁？"]
    pickled = ann.with_suffix(".pickle")
    pickled.write_bytes(pickle.dumps({"info": CSL_INFO}, protocol=0))  # protocol 0 starts with "(dp0", not 0x80
    assert sniff_format(pickled) == "csldaily"


def test_a_relative_table_source_naming_a_video_is_the_ranges_unit_and_wlasl_with_an_empty_first_gloss_is_refused(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "v.mp4").write_bytes(b"")
    (tmp_path / "c.mp4").write_bytes(b"")
    ann = tmp_path / "mixed.csv"
    ann.write_text("id,path,text,start,end,source\nr,raw/v.mp4,t,0,1,\nc,c.mp4,t,,,raw/v.mp4\nyt,c.mp4,t,,,abc123\n", encoding="utf-8")
    r, c, yt = parse_table(ann, root=tmp_path)
    assert c["source"] == r["path"] == str(tmp_path / "raw" / "v.mp4") and yt["source"] == "abc123"
    wlasl = tmp_path / "WLASL_downloaded.json"
    wlasl.write_text(json.dumps([{"gloss": "a", "instances": []}, {"gloss": "b", "instances": [{"video_id": "1", "frame_start": 1}]}]))
    with pytest.raises(SignfeatError, match="hold lists of records"):
        list(parse_table(wlasl, root=tmp_path))


def test_a_parquet_table_reads_as_the_same_table_in_csv_does(tmp_path):
    """A Parquet annotation table was 'not UTF-8 text: save it as UTF-8'. It now reads row for row as the CSV
    of the same table (pandas writes both), nulls, numbers and the header checks included."""
    import pandas as pd

    (tmp_path / "v.mp4").write_bytes(b"")
    (tmp_path / "frames").mkdir()
    table = pd.DataFrame({"id": ["a", "b", "c", "d"], "path": ["v.mp4", "v.mp4", "frames", "gone.mp4"],
                          "text": ["hallo welt", None, "guten tag", "x"], "split": ["train", "val", None, "test"],
                          "start": [None, 1.5, None, None], "end": [None, 3.0, None, None], "fps": [None, None, 25.0, None],
                          "signer": ["s1", "s2", None, "s1"]})
    table.to_csv(tmp_path / "corpus_train.csv", index=False)
    table.to_parquet(tmp_path / "corpus_train.parquet", index=False)
    from_csv = list(parse_table(tmp_path / "corpus_train.csv", root=tmp_path))
    from_parquet = list(parse_table(tmp_path / "corpus_train.parquet", root=tmp_path))
    assert [r.pop("_where") for r in from_parquet] == [f"{tmp_path / 'corpus_train.parquet'}:{n}" for n in range(1, 5)]  # row numbers
    assert [r.pop("_where") for r in from_csv] == [f"{tmp_path / 'corpus_train.csv'}:{n}" for n in range(2, 6)]  # line numbers
    assert from_parquet == from_csv and [r["source_kind"] for r in from_parquet] == ["video", "range", "frames", "video"]
    assert from_parquet[1]["status"] == "missing_text" and from_parquet[2]["split"] == "train"  # the file name's split word
    assert sniff_format(tmp_path / "corpus_train.parquet") == "table"
    pd.DataFrame({"id": ["a"], "path": ["v.mp4"], "Text": ["x"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(SignfeatError, match=r"bad.parquet: table annotations need columns .*missing \['text'\]"):
        list(parse_table(tmp_path / "bad.parquet", root=tmp_path))
    (tmp_path / "fake.parquet").write_text("id,path,text\n")
    with pytest.raises(SignfeatError, match="fake.parquet: not a readable Parquet file"):
        list(parse_table(tmp_path / "fake.parquet", root=tmp_path))


def test_a_file_whose_name_starts_or_ends_with_a_space_is_found(tmp_path):
    """Fields are trimmed (a CSV written 'a, v.mp4'), so ' lead.mp4' and 'trail.mp4 ' were missing files whose
    message named another path. The name as written is taken when only it is there."""
    for name in (" lead.mp4", "trail.mp4 ", "plain.mp4"):
        (tmp_path / name).write_bytes(b"")
    ann = tmp_path / "names_train.jsonl"
    ann.write_text("".join(json.dumps({"id": i, "path": p, "text": "t"}) + "\n" for i, p in
                           [("a", " lead.mp4"), ("b", "trail.mp4 "), ("c", " plain.mp4"), ("d", " none.mp4")]))
    paths = [r["path"] for r in parse_table(ann, root=tmp_path)]
    assert paths == [str(tmp_path / " lead.mp4"), str(tmp_path / "trail.mp4 "), str(tmp_path / "plain.mp4"), str(tmp_path / "none.mp4")]


def test_unclosed_quotes_one_row_apart_at_the_end_and_among_blank_lines(tmp_path):
    """Found after the swallowed rows were first read again: a quote that swallowed one row (its closing quote the
    next unclosed one) went unseen, the row ok with two rows as its text and those rows gone; a quote on the last
    line took the row's other fields into its text, ok; blank lines put the row's line one early and read it twice."""
    (tmp_path / "v.mp4").write_bytes(b"")
    ann = tmp_path / "t.csv"
    ann.write_text('id,path,text,split,signer\nc1,v.mp4,"he is 6 ft tall,train,S1\nc2,v.mp4,hello,train,S1\n'
                   'c3,v.mp4,"rain,train,S1\nc4,v.mp4,cold,train,S1\nc5,v.mp4,"sun,train,S1\nc6,v.mp4,warm,train,S1\n', encoding="utf-8")
    rows = {r["id"]: r for r in parse_table(ann, root=tmp_path)}
    assert sorted(rows) == [f"c{i}" for i in range(1, 7)]
    assert [k for k, r in rows.items() if r["status"] == "bad_annotation"] == ["c1", "c3", "c5"]
    assert all(rows[k]["status"] is None and rows[k]["split"] == "train" for k in ("c2", "c4", "c6"))
    assert [rows[k]["_where"] for k in ("c1", "c3", "c5")] == [f"{ann}:{n}" for n in (2, 4, 6)]
    # a row with a correctly quoted "a, b" after the swallowed one
    ann.write_text('id,path,text,split,signer\nc1,v.mp4,"open,train,S1\nc2,v.mp4,hello,train,S1\nc3,v.mp4,"a, b",train,S1\n'
                   'c4,v.mp4,bye,train,S1\n', encoding="utf-8")
    rows = {r["id"]: r for r in parse_table(ann, root=tmp_path)}
    assert rows["c1"]["status"] == "bad_annotation" and "unclosed quote" in rows["c1"]["error"]
    assert [(k, rows[k]["text"], rows[k]["status"]) for k in ("c2", "c3", "c4")] == [("c2", "hello", None), ("c3", "a, b", None), ("c4", "bye", None)]
    # the last line's quote runs to the end of the file
    ann.write_text('id,path,text,split,signer\nc1,v.mp4,fine,train,S1\nc2,v.mp4,"rain,train,S1\n', encoding="utf-8")
    c1, c2 = parse_table(ann, root=tmp_path)
    assert c1["status"] is None and c2["status"] == "bad_annotation" and "unclosed quote runs to the end of the file" in c2["error"]
    assert c2["_where"] == f"{ann}:3"
    # blank lines around an unclosed quote: one bad row, named by its own line
    ann.write_text('id,path,text,split,signer\n\nc1,v.mp4,hello,train,S1\n\nc2,v.mp4,"rain,train,S1\n\nc3,v.mp4,cold,train,S1\n'
                   'c4,v.mp4,warm,train,S1\n\nc5,v.mp4,sun,train,S1\n', encoding="utf-8")
    rows = list(parse_table(ann, root=tmp_path))
    assert [(r["id"], r["status"], r["_where"]) for r in rows] == [
        ("c1", None, f"{ann}:3"), ("c2", "bad_annotation", f"{ann}:5"), ("c3", None, f"{ann}:7"), ("c4", None, f"{ann}:8"),
        ("c5", None, f"{ann}:10")]
    # a legit text whose last line ends on a comma (one comma) stays a text
    ann.write_text('id,path,text,split,signer\nc1,v.mp4,"Dear John,\nx,y,z,w,v\nyours,",train,S1\n', encoding="utf-8")
    (legit,) = parse_table(ann, root=tmp_path)
    assert legit["status"] is None and legit["text"] == "Dear John,\nx,y,z,w,v\nyours,"


def test_consecutive_unclosed_quotes_and_legit_texts_with_many_commas(tmp_path):
    """Two unclosed quotes on consecutive rows: the first was ok with the second's start as its text, the second gone;
    one closed by the next row's quoted "a, b" lost that row. A legit three-line text whose lines happen to hold
    commas, and a last row with a literal inch mark, must stay as they are."""
    (tmp_path / "v.mp4").write_bytes(b"")
    ann = tmp_path / "t.csv"
    head = "id,path,text,split,signer\n"
    ann.write_text(head + 'c1,v.mp4,w1,train,S1\nc2,v.mp4,"w2,train,S1\nc3,v.mp4,"w3,train,S1\nc4,v.mp4,w4,train,S1\n', encoding="utf-8")
    rows = list(parse_table(ann, root=tmp_path))
    assert [(r["id"], r["status"], r["_where"]) for r in rows] == [
        ("c1", None, f"{ann}:2"), ("c2", "bad_annotation", f"{ann}:3"), ("c3", "bad_annotation", f"{ann}:4"), ("c4", None, f"{ann}:5")]
    ann.write_text(head + 'c1,v.mp4,w1,train,S1\nc2,v.mp4,"open,train,S1\nc3,v.mp4,"a, b",train,S1\nc4,v.mp4,w4,train,S1\n', encoding="utf-8")
    rows = {r["id"]: r for r in parse_table(ann, root=tmp_path)}
    assert rows["c2"]["status"] == "bad_annotation" and "unclosed quote" in rows["c2"]["error"]
    assert (rows["c3"]["status"], rows["c3"]["text"], rows["c4"]["status"]) == (None, "a, b", None)
    text = "Good morning,\nmy name is Anna, I live in Berlin, I work as a teacher, and I sign, today.\nThanks, see you, bye"
    ann.write_text(head + 'c1,v.mp4,w1,train,S1\nc2,v.mp4,"' + text + '",train,S1\nc3,v.mp4,w3,train,S1\n', encoding="utf-8")
    assert [(r["id"], r["status"], r["text"]) for r in parse_table(ann, root=tmp_path)] == [
        ("c1", None, "w1"), ("c2", None, text), ("c3", None, "w3")]
    ann.write_text(head + 'c1,v.mp4,w1,train,S1\nc2,v.mp4,he is 6" tall,train\n', encoding="utf-8")
    assert [(r["id"], r["status"], r["text"]) for r in parse_table(ann, root=tmp_path)] == [("c1", None, "w1"), ("c2", None, 'he is 6" tall')]


def test_a_row_with_an_unclosed_quote_keeps_its_own_id(tmp_path):
    """With the quote in the id column or a column before it, the bad row's id was another row's text or None."""
    (tmp_path / "v.mp4").write_bytes(b"")
    ann = tmp_path / "t.csv"
    ann.write_text('text,id,path,split,signer\nw1,c1,v.mp4,train,S1\n"w2,c2,v.mp4,train,S1\n"w3,c3,v.mp4,train,S1\nw4,c4,v.mp4,train,S1\n',
                   encoding="utf-8")
    assert [(r["id"], r["status"]) for r in parse_table(ann, root=tmp_path)] == [
        ("c1", None), ("c2", "bad_annotation"), ("c3", "bad_annotation"), ("c4", None)]
    ann.write_text('id,path,text,split,signer\n"c1,v.mp4,w1,train,S1\nc2,v.mp4,w2,train,S1\nc3,v.mp4,w3,train,S1\n', encoding="utf-8")
    assert [(r["id"], r["status"]) for r in parse_table(ann, root=tmp_path)] == [("c1", "bad_annotation"), ("c2", None), ("c3", None)]
