import io
import tarfile

import numpy as np
import pytest
import torch

from pipeline.errors import SignfeatError
from trainer.data import (Collate, ShardStream, batches, batches_per_epoch, decode_sample, list_shards, rank_pieces,
                          require_streams, shard_counts)


class _Tok:  # a byte tokenizer stand-in: id = byte + 3, eos 1, pad 0
    eos_token_id, pad_token_id = 1, 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [b + 3 for b in text.encode()]}


STREAMS = ["clip_s2", "videomae"]


def _keys(urls, counts, rank, world, batch, epoch=0, workers=0):
    stream = ShardStream(urls, counts, STREAMS, train=True, batch_size=batch, rank=rank, world_size=world, epoch=epoch,
                         seed=7, shuffle_buffer=5)
    out = list(batches(stream, Collate(_Tok(), STREAMS, 64), workers, drop_last=True))
    return [b.keys for b in out]


def test_two_ranks_see_disjoint_samples_and_equal_batch_counts(tiny_shards):
    urls = list_shards(str(tiny_shards), "big")
    counts = shard_counts(urls)
    assert counts == [8, 8, 8, 6]
    for epoch in (0, 1):
        rank0 = _keys(urls, counts, 0, 2, 4, epoch)
        rank1 = _keys(urls, counts, 1, 2, 4, epoch)
        assert len(rank0) == len(rank1) == batches_per_epoch(counts, 2, 4) == 3  # 30 // 2 // 4
        seen0 = {k for b in rank0 for k in b}
        seen1 = {k for b in rank1 for k in b}
        assert len(seen0) == len(seen1) == 12 and not seen0 & seen1


def test_training_reads_local_shards_with_wds_secure(tiny_shards, monkeypatch):
    """WDS_SECURE=1 (webdataset reads it at import: ``utils.enforce_security``) makes webdataset refuse to open
    local files; the trainer opens its tars itself. A leaked WDS_SECURE=1 failed the torchrun DDP test in CI."""
    import webdataset.utils

    monkeypatch.setattr(webdataset.utils, "enforce_security", True)
    urls = list_shards(str(tiny_shards), "big")
    keys = [k for b in _keys(urls, shard_counts(urls), 0, 1, 1) for k in b]
    assert sorted(keys) == [f"big-{i:05d}" for i in range(30)]


def test_one_rank_sees_every_sample_once_per_epoch_and_order_changes_with_epoch(tiny_shards):
    urls = list_shards(str(tiny_shards), "big")
    counts = shard_counts(urls)
    epochs = [[k for b in _keys(urls, counts, 0, 1, 1, epoch) for k in b] for epoch in (0, 1)]
    for keys in epochs:
        assert sorted(keys) == [f"big-{i:05d}" for i in range(30)]
    assert epochs[0] != epochs[1]
    assert epochs[0] == [k for b in _keys(urls, counts, 0, 1, 1, 0) for k in b]  # replayable


def test_rank_pieces_cover_the_epoch_without_overlap():
    counts = [5, 3, 7, 1, 4]
    urls = [f"s{i}" for i in range(5)]
    covered = []
    for rank in range(3):
        pieces = rank_pieces(urls, counts, rank, 3, 2, epoch=4, seed=1, shuffle=True)
        mine = [(p.url, i) for p in pieces for i in range(p.start, p.stop)]
        covered += mine
        assert len(mine) == 20 // 3 // 2 * 2
        # two workers: contiguous runs of whole batches that together make the rank's share
        split = [[(p.url, i) for p in rank_pieces(urls, counts, rank, 3, 2, 4, 1, True, w, 2) for i in range(p.start, p.stop)]
                 for w in range(2)]
        assert split[0] + split[1] == mine and all(len(part) % 2 == 0 for part in split)
    assert len(covered) == len(set(covered))


def test_samples_left_out_by_the_cut_to_whole_batches_change_every_epoch():
    """One shard of 11 samples, batches of 4: 8 a epoch. The same 3 tail samples were left out in every epoch
    (no shard order to shuffle); now each epoch starts at a random sample (wrapping), so all are trained."""
    seen = set()
    for epoch in range(12):
        for world_size, rank_batch in ((1, 4), (2, 2)):
            mine = [[(p.url, i) for p in rank_pieces(["s0"], [11], rank, world_size, rank_batch, epoch, 3, True, w, 2)
                     for i in range(p.start, p.stop)] for rank in range(world_size) for w in range(2)]
            flat = [x for part in mine for x in part]
            assert len(flat) == 8 and len(set(flat)) == 8, (epoch, world_size)  # whole batches, no sample twice
            seen |= set(flat)
    assert seen == {("s0", i) for i in range(11)}
    # nothing left out: the order is the shards' (the offset would only move the same samples around)
    assert [(p.url, p.start, p.stop) for p in rank_pieces(["a", "b"], [4, 4], 0, 1, 4, 1, 0, True)] in ([("a", 0, 4), ("b", 0, 4)], [("b", 0, 4), ("a", 0, 4)])


def test_dataloader_workers_split_the_rank_samples(tiny_shards):
    urls = list_shards(str(tiny_shards), "big")
    counts = shard_counts(urls)
    single = {k for b in _keys(urls, counts, 1, 2, 3, workers=0) for k in b}
    multi = _keys(urls, counts, 1, 2, 3, workers=2)
    assert len(multi) == 5 and {k for b in multi for k in b} == single


def test_eval_reads_in_order_deterministically(tiny_shards):
    urls = list_shards(str(tiny_shards), "big")
    stream = ShardStream(urls, shard_counts(urls), STREAMS, train=False, batch_size=4)
    keys = [k for b in batches(stream, Collate(_Tok(), STREAMS, 64), 0, drop_last=False) for k in b.keys]
    assert keys == [f"big-{i:05d}" for i in range(30)]


@pytest.mark.parametrize("workers", [0, 1])
def test_a_shard_gone_during_the_run_is_one_line(tiny_shards, tmp_path, workers):
    """A shard deleted (or a store gone) after the run listed it ended training in a FileNotFoundError or pyarrow
    OSError traceback."""
    import shutil

    shutil.copytree(tiny_shards / "big", tmp_path / "big")
    urls = list_shards(str(tmp_path), "big")
    stream = ShardStream(urls, shard_counts(urls), STREAMS, train=False, batch_size=4)
    (tmp_path / "big" / "syn-000002.tar").unlink()
    with pytest.raises(SignfeatError, match=r"syn-000002.tar: cannot read the shard any more .*deleted or moved since the run listed it"):
        list(batches(stream, Collate(_Tok(), STREAMS, 64), workers, drop_last=False))


def test_collate_pads_with_masks_lengths_and_tokenised_targets(tiny_shards):
    urls = list_shards(str(tiny_shards), "train")
    stream = ShardStream(urls, shard_counts(urls), STREAMS, train=False, batch_size=4)
    (batch,) = list(batches(stream, Collate(_Tok(), STREAMS, 64), 0, drop_last=False))
    assert batch.features["clip_s2"].dtype == torch.float32
    assert batch.lengths["clip_s2"].tolist() == [32, 40, 32, 40]  # 8 frames per word
    assert batch.lengths["videomae"].tolist() == [4, 5, 4, 5]
    assert torch.all(batch.features["clip_s2"][0, 32:] == 0)
    first = [b + 3 for b in batch.texts[0].encode()] + [1]
    assert batch.target_ids[0, : len(first)].tolist() == first
    assert batch.target_mask[0].sum() == len(first)


def test_training_crop_limits_only_the_crop_streams(tiny_shards):
    urls = list_shards(str(tiny_shards), "train")
    stream = ShardStream(urls, shard_counts(urls), STREAMS, train=True, batch_size=4, crop_streams=("clip_s2",), max_frames=10)
    (batch,) = list(batches(stream, Collate(_Tok(), STREAMS, 64), 0, drop_last=True))
    assert batch.lengths["clip_s2"].tolist() == [10] * 4
    assert sorted(batch.lengths["videomae"].tolist()) == [4, 4, 5, 5]


def test_npy_with_objects_is_refused():
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    raw = {"__key__": "k", "__url__": "u", "json": b'{"text": "x"}', "clip_s2.npy": buf.getvalue()}
    with pytest.raises(SignfeatError, match="u: k.clip_s2.npy is unreadable without pickle: .*allow_pickle"):
        decode_sample(raw, ["clip_s2"])


def test_missing_stream_is_a_clear_error(tiny_shards):
    raw = {"__key__": "k", "__url__": "u", "json": b'{"text": "x"}'}
    with pytest.raises(SignfeatError, match="no smplx623.npy"):
        decode_sample(raw, ["smplx623"])


def test_require_streams_names_what_the_shards_hold(tiny_shards, tmp_path):
    urls = list_shards(str(tiny_shards), "big")
    require_streams(urls, ["clip_s2", "videomae", "dinov2", "smplx623"])
    one = tmp_path / "one.tar"
    with tarfile.open(urls[0]) as src, tarfile.open(one, "w") as dst:  # a shard holding dinov2 only
        for m in src.getmembers():
            if m.name.endswith((".json", ".dinov2.npy")):
                dst.addfile(m, src.extractfile(m))
    with pytest.raises(SignfeatError, match=r"no stream clip_s2, videomae \(they hold \['dinov2'\]\)"):
        require_streams([*urls, str(one)], ["clip_s2", "videomae"])
    empty = tmp_path / "empty.tar"
    tarfile.open(empty, "w").close()
    require_streams([str(empty)], ["clip_s2"])  # no sample, nothing to check


@pytest.mark.parametrize("meta", [b'{"text": null}', b'{}', b'{"text": ""}'])
def test_null_or_missing_text_is_the_empty_target(meta):
    # extract writes a clip's empty text as null; the collate and tokenizers need a string
    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 3), np.float16))
    sample = decode_sample({"__key__": "k", "__url__": "u", "json": meta, "clip_s2.npy": buf.getvalue()}, ["clip_s2"])
    assert sample["text"] == ""
    batch = Collate(_Tok(), ["clip_s2"], 8)([sample])
    assert batch.texts == [""] and batch.target_ids.tolist() == [[_Tok.eos_token_id]]


@pytest.mark.parametrize("workers", [0, 1])
def test_damaged_sample_is_a_one_line_error_also_from_a_dataloader_worker(tiny_shards, tmp_path, workers):
    url = tmp_path / "damaged.tar"
    with tarfile.open(tiny_shards / "test" / "syn-000000.tar") as src, tarfile.open(url, "w") as dst:
        for m in src.getmembers():
            data = b"{not json" if m.name == "test-00002.json" else src.extractfile(m).read()
            m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    stream = ShardStream([str(url)], [4], STREAMS, train=False, batch_size=2)
    with pytest.raises(SignfeatError) as info:
        list(batches(stream, Collate(_Tok(), STREAMS, 64), workers, drop_last=False))
    assert str(info.value).startswith(f"{url}: test-00002.json is not valid JSON") and "\n" not in str(info.value)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_shard_cut_at_a_sample_boundary_is_an_error_not_fewer_samples(tiny_shards, tmp_path, workers):
    """A tar cut between two samples is a valid, shorter tar. Read as such, one DDP rank would get fewer batches
    than the others counted from index.parquet (and wait for them forever); eval would score fewer samples."""
    url = tmp_path / "short.tar"
    with tarfile.open(tiny_shards / "test" / "syn-000000.tar") as src, tarfile.open(url, "w") as dst:
        for m in src.getmembers():
            if not m.name.startswith("test-00003."):  # the last of its 4 samples
                dst.addfile(m, src.extractfile(m))
    assert shard_counts([str(url)]) == [3]  # the tar itself reads fine
    stream = ShardStream([str(url)], [4], STREAMS, train=False, batch_size=2)  # 4: as index.parquet says
    with pytest.raises(SignfeatError) as info:
        list(batches(stream, Collate(_Tok(), STREAMS, 64), workers, drop_last=False))
    assert str(info.value).startswith(f"{url}: holds 3 samples where the run counted at least 4") and "\n" not in str(info.value)
    assert len(list(ShardStream([str(url)], [3], STREAMS, train=False, batch_size=2))) == 3


def test_a_shard_cut_between_two_samples_without_its_end_block_is_not_counted_short(tiny_shards, tmp_path):
    """A tar's bytes cut right after a sample (a copy cut off, no end-of-archive block) read as a whole, shorter
    shard from its headers: a folder of such tars (no index.parquet) trained on fewer samples, exit 0."""
    url = tmp_path / "cut.tar"
    with tarfile.open(tiny_shards / "test" / "syn-000000.tar") as tar:
        last = [m for m in tar.getmembers() if m.name.startswith("test-00001.")][-1]  # the second of its 4 samples
    end = last.offset_data + -(-last.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    url.write_bytes((tiny_shards / "test" / "syn-000000.tar").read_bytes()[:end])
    with tarfile.open(url) as tar:
        assert len({m.name.split(".")[0] for m in tar.getmembers()}) == 2  # tarfile reads it as a tar of 2 samples
    with pytest.raises(SignfeatError) as info:
        shard_counts([str(url)])
    assert str(info.value).startswith(f"{url}: unreadable shard (no readable tar header or end-of-archive block at byte {end}")


@pytest.mark.parametrize("workers", [0, 1])
def test_truncated_shard_is_a_one_line_error(tiny_shards, tmp_path, workers):
    data = (tiny_shards / "test" / "syn-000000.tar").read_bytes()
    url = tmp_path / "test" / "syn-000000.tar"
    url.parent.mkdir()
    url.write_bytes(data[: len(data) // 2])
    with pytest.raises(SignfeatError, match=f"{url}: unreadable shard"):
        shard_counts([str(url)])  # from the tar headers: there is no index.parquet
    stream = ShardStream([str(url)], [4], STREAMS, train=False, batch_size=2)  # counts as an index.parquet would say
    with pytest.raises(SignfeatError) as info:
        list(batches(stream, Collate(_Tok(), STREAMS, 64), workers, drop_last=False))
    assert str(info.value).startswith(f"{url}: unreadable shard") and "\n" not in str(info.value)
    (tmp_path / "index.parquet").write_bytes(b"not parquet")
    with pytest.raises(SignfeatError, match="index.parquet: unreadable"):
        shard_counts([str(url)])


def test_counts_from_tar_headers(tiny_shards):
    urls = list_shards(str(tiny_shards), "big")
    with tarfile.open(urls[0]) as tar:
        assert len(tar.getnames()) == 8 * 5  # json + four streams
    assert shard_counts(urls[:1]) == [8]


def test_shards_named_without_their_split_serve_only_their_own_split(tiny_shards, tmp_path):
    # a brace pattern (or a flat folder, a list) of training shards was also the dev and test split: the
    # dev eval and `signfeat eval --split test` scored the training samples
    import shutil

    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(tiny_shards / "train" / "syn-000000.tar", flat / "a-000000.tar")
    shutil.copy(tiny_shards / "dev" / "syn-000000.tar", flat / "a-000001.tar")
    assert list_shards(str(flat), "train") == [str(flat / "a-000000.tar")]
    assert list_shards(str(flat), "dev") == [str(flat / "a-000001.tar")]
    pattern = str(flat / "a-{000000..000001}.tar")
    assert list_shards(pattern, "dev") == [str(flat / "a-000001.tar")]
    with pytest.raises(SignfeatError, match="no shards of split 'test' among the 2 shard"):
        list_shards(pattern, "test")
    with pytest.raises(SignfeatError, match="they hold train"):
        list_shards([str(flat / "a-000000.tar")], "dev")
    assert list_shards(str(tiny_shards), "dev") == [str(tiny_shards / "dev" / "syn-000000.tar")]  # the extraction layout


def test_a_later_sample_of_another_width_is_a_one_line_error(tmp_path):
    # require_streams reads a shard's first sample only: a later one of another width failed inside pad_stream
    import webdataset as wds

    from shards.sample import encode_sample

    (tmp_path / "train").mkdir()
    url = str(tmp_path / "train" / "w-000000.tar")
    with wds.TarWriter(url, encoder=False) as sink:
        for i, width in enumerate([16, 20]):
            key = f"k{i}"
            streams = {"clip_s2": np.zeros((4, width), np.float16), "videomae": np.zeros((1, 8), np.float16)}
            sink.write({"__key__": key, **encode_sample(key, {"id": key, "text": "x", "split": "train"}, streams)})
    stream = ShardStream([url], [2], ["clip_s2", "videomae"], train=False, batch_size=2, widths={"clip_s2": 16, "videomae": 8})
    with pytest.raises(SignfeatError, match=r"k1.clip_s2.npy has shape \(4, 20\), expected \[T, 16\] \(adapter.stream_widths.clip_s2\)"):
        list(stream)


def _committed_copy(tiny_shards, out):
    """tiny_shards' train split laid out as an extraction output: each tar with its completion marker."""
    import json
    import shutil

    shutil.copytree(tiny_shards / "train", out / "train")
    for tar in (out / "train").glob("*.tar"):
        marker = out / "_signfeat" / "done" / "train" / f"{tar.stem}.json"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"bytes": tar.stat().st_size, "shard": f"train/{tar.stem}"}))


def test_a_stray_or_changed_tar_in_an_extraction_output_is_refused(tiny_shards, tmp_path):
    """A renamed copy in OUT/train was trained on twice per epoch, and a tar changed since the extraction
    (index.parquet counting 8 samples where it holds 6) gave ranks unequal batches: `verify` saw both, the trainer
    neither."""
    import shutil

    out = tmp_path / "out"
    _committed_copy(tiny_shards, out)
    urls = list_shards(str(out), "train")
    assert shard_counts(urls) == [4]
    copy = out / "train" / "syn-000000 (copy).tar"
    shutil.copy(urls[0], copy)
    with pytest.raises(SignfeatError, match=r"syn-000000 \(copy\).tar: not a shard the extraction in .* committed"):
        shard_counts(list_shards(str(out), "train"))
    copy.unlink()
    with open(urls[0], "ab") as f:
        f.write(b"\0" * 10240)  # another tar's bytes over it would differ in size the same way
    with pytest.raises(SignfeatError, match="bytes, but the extraction wrote .* changed since"):
        shard_counts(list_shards(str(out), "train"))
    assert shard_counts(list_shards(str(tiny_shards), "train")) == [4]  # shards outside an extraction output: no markers to check


def test_an_unrelated_tar_in_an_extraction_output_is_named_as_not_committed_before_streams_are_read(tiny_shards, tmp_path):
    """A user's own tar in OUT/train was reported as "shards have no stream clip_s2, videomae": the streams were
    checked before the completion markers."""
    from tests.trainer.conftest import tiny_recipe
    from trainer.evaluate import eval_shards
    from trainer.loop import Dist, train_shards
    from trainer.recipe import recipe_from_dict

    out = tmp_path / "out"
    _committed_copy(tiny_shards, out)
    with tarfile.open(out / "train" / "zzz-unrelated.tar", "w") as tar:
        info = tarfile.TarInfo("readme.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    recipe = recipe_from_dict(tiny_recipe(out, tmp_path / "run"))
    for check in (lambda: train_shards(recipe, Dist()), lambda: eval_shards(recipe, "train")):
        with pytest.raises(SignfeatError, match=r"zzz-unrelated.tar: not a shard the extraction in .* committed"):
            check()


def test_a_copied_shard_is_refused_also_where_the_output_came_without_its_job_record(tiny_shards, tmp_path, capsys):
    """An output copied as DESIGN.md lists it (shards, index.parquet, failures.parquet, job.json; no _signfeat/)
    with a stray "x (copy).tar" in it: the copy's samples were trained and scored twice (18 samples for 13 keys),
    without a word. A folder of tars without any index: said, from the repeated keys."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "handed_over"
    shutil.copytree(tiny_shards / "train", out / "train")
    pq.write_table(pa.table({"shard": ["train/syn-000000"] * 4, "key": [f"train-{i:05d}" for i in range(4)]}), out / "index.parquet")
    assert shard_counts(list_shards(str(out), "train")) == [4]
    shutil.copy(out / "train" / "syn-000000.tar", out / "train" / "syn-000000 (copy).tar")
    with pytest.raises(SignfeatError, match=r"syn-000000 \(copy\).tar: not a shard the index.parquet of .* lists"):
        shard_counts(list_shards(str(out), "train"))
    (out / "index.parquet").unlink()  # hand-made: nothing but the tars (which two corpora may share keys in): a note
    capsys.readouterr()
    assert shard_counts(list_shards(str(out), "train")) == [4, 4]
    assert "note: 4 sample key(s) are in more than one shard (first: train-00000 in " in capsys.readouterr().err
    with pytest.raises(SignfeatError, match="syn-000000.tar is named twice"):
        shard_counts([str(tiny_shards / "train" / "syn-000000.tar")] * 2)
    # tars beside an output (a folder no split of its index names) are not the index's to judge
    pq.write_table(pa.table({"shard": ["dev/syn-000000"] * 4, "key": [f"dev-{i:05d}" for i in range(4)]}), out / "index.parquet")
    (out / "train" / "syn-000000 (copy).tar").unlink()
    assert shard_counts(list_shards(str(out), "train")) == [4]


def test_a_shard_whose_every_clip_failed_is_the_output_s_own_in_a_copy_and_in_a_pattern(tiny_shards, tmp_path):
    """Such a shard is an empty tar with no index.parquet row: a copy without _signfeat/ was refused as "not a shard
    the index.parquet lists", and a brace pattern dropped it (no sample records its split), so its failures went
    uncounted ("1 clip failed" where 12 had)."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.extract import FAILURE_SCHEMA
    from trainer.data import extraction_failures

    out = tmp_path / "copy"
    shutil.copytree(tiny_shards / "train", out / "train")
    with tarfile.open(out / "train" / "syn-000001.tar", "w"):
        pass  # what extract writes for a shard whose clips all failed
    pq.write_table(pa.table({"shard": ["train/syn-000000"] * 4, "key": [f"train-{i:05d}" for i in range(4)]}), out / "index.parquet")
    failed = [{"id": f"x{i}", "key": f"x{i}", "shard": "train/syn-000001", "split": "train", "stage": "decode", "error_class": "too_long",
               "message": "..."} for i in range(2)]
    pq.write_table(pa.Table.from_pylist(failed, schema=FAILURE_SCHEMA), out / "failures.parquet")
    for source in (str(out), str(out / "train" / "syn-{000000..000001}.tar")):
        urls = list_shards(source, "train")
        assert [u.rsplit("/", 1)[1] for u in urls] == ["syn-000000.tar", "syn-000001.tar"], source
        assert shard_counts(urls) == [4, 0] and extraction_failures(urls, "train") == {"too_long": 2}, source
    (out / "failures.parquet").unlink()  # copied without it: the empty shard still holds nothing to read twice
    assert shard_counts(list_shards(str(out), "train")) == [4, 0]


def _shard_with_settings(path, token: str, compute_dtype: str = "float32", decode: dict | None = None):
    import webdataset as wds

    from shards.sample import encode_sample
    from tests.trainer.conftest import sentence_streams

    path.parent.mkdir(parents=True, exist_ok=True)
    made = {"extractor": "clip_s2", "model": "openai/clip-vit-large-patch14", "weights": "pretrained", "compute_dtype": compute_dtype,
            "settings": {"token": token, "scales": [224, 448]}, "settings_hash": f"h-{token}-{compute_dtype}"}
    with wds.TarWriter(str(path), encoder=False) as sink:
        meta = {"id": path.stem, "text": "a b", "split": "train", "streams": {"clip_s2": made}, **({"decode": decode} if decode else {})}
        sink.write({"__key__": path.stem, **encode_sample(path.stem, meta, sentence_streams([1, 2], np.random.default_rng(0)))})
    return str(path)


def test_shards_of_two_extractions_are_not_mixed(tmp_path):
    """A folder holding two outputs (clip_s2 token cls and patch_mean, same width) trained on a mix without a
    word; only the precision they were computed in may differ."""
    a = _shard_with_settings(tmp_path / "a.tar", "cls")
    fp16 = _shard_with_settings(tmp_path / "a16.tar", "cls", "float16")
    b = _shard_with_settings(tmp_path / "b.tar", "patch_mean")
    made = require_streams([a, fp16], ["clip_s2", "videomae"])
    assert made["clip_s2"]["settings"]["token"] == "cls" and "compute_dtype" not in made["clip_s2"]
    with pytest.raises(SignfeatError, match=r'b.tar: its features were made with other settings .*clip_s2.settings.token: "cls" vs "patch_mean"'):
        require_streams([a, b], ["clip_s2", "videomae"])
    assert require_streams([a, b], ["videomae"]) == {}  # a stream the run does not read is not compared


def test_shards_decoded_at_another_frame_rate_are_not_mixed(tmp_path):
    """The same extractor settings on frames at 12.5 fps and at the clips' own rate: a folder holding both
    trained on a mix, and a model trained on one was scored on the other, without a word."""
    own = {"target_fps": None, "max_frames": None}
    a = _shard_with_settings(tmp_path / "a.tar", "cls", decode=own)
    slow = _shard_with_settings(tmp_path / "slow.tar", "cls", decode={"target_fps": 12.5, "max_frames": None})
    older = _shard_with_settings(tmp_path / "older.tar", "cls")  # a signfeat that did not record it: not compared
    assert require_streams([a, older], ["clip_s2"])["clip_s2"]["decode"] == own
    with pytest.raises(SignfeatError, match=r'slow.tar: its features were made with other settings .*clip_s2.decode.target_fps: null vs 12.5'):
        require_streams([a, slow], ["clip_s2"])


def test_a_brace_pattern_over_two_extraction_outputs_counts_each_from_its_own_index(tiny_shards, tmp_path, capsys):
    """The first tar's output was taken for every tar's: a ValueError traceback ("is not in the subpath"). Two
    outputs of one corpus (the same keys) are read twice: a note says so."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name in ("out1", "out2"):
        _committed_copy(tiny_shards, tmp_path / name)
        pq.write_table(pa.table({"shard": ["train/syn-000000"] * 4, "key": [f"train-{i:05d}" for i in range(4)]}), tmp_path / name / "index.parquet")
    urls = list_shards(str(tmp_path / "out{1,2}/train/syn-000000.tar"), "train")
    capsys.readouterr()
    assert len(urls) == 2 and shard_counts(urls) == [4, 4]
    assert "note: 4 sample key(s) are in more than one shard (first: train-00000 in " in capsys.readouterr().err


def test_one_local_checkpoint_at_two_paths_is_one_extraction(tmp_path):
    """A SMPL-X model folder at another path on another machine (the same model_files) was refused as another
    extraction; a real difference names the entries that differ, not two whole settings dicts."""
    from trainer.data import _features_of, mixed_features

    def made(model_dir, files, **settings):
        return {"streams": {"smplx623": {"extractor": "smplx623", "model": f"{model_dir}/SMPLX_NEUTRAL.npz", "model_files": files,
                                         "settings": {"model_dir": model_dir, "target_fps": 20.0, **settings}}}}

    a = _features_of(made("/cluster/smplx", "f1"), ["smplx623"])
    assert mixed_features(a, _features_of(made("/home/me/smplx", "f1"), ["smplx623"])) == []
    assert mixed_features(a, _features_of(made("/home/me/smplx", "f2"), ["smplx623"])) == ['smplx623.model_files: "f1" vs "f2"']
    assert mixed_features(a, _features_of(made("/cluster/smplx", "f1", retarget="none"), ["smplx623"])) == \
        ['smplx623.settings.retarget: null vs "none"']
    older = made("/cluster/smplx", None)  # shards written before model_files was recorded
    assert mixed_features(a, _features_of(older, ["smplx623"])) == []
    hub = {"streams": {"dinov2": {"extractor": "dinov2", "model": "facebook/dinov2-base", "settings": {}}}}
    fine_tuned = {"streams": {"dinov2": {"extractor": "dinov2", "model": "/ft/dino", "model_files": "f9", "settings": {}}}}
    assert mixed_features(_features_of(hub, ["dinov2"]), _features_of(fine_tuned, ["dinov2"])) != []  # a Hub model is no older local one
    relative_old = {"streams": {"dinov2": {"extractor": "dinov2", "model": "ckpts/dino", "settings": {}}}}  # "org/name"-like, but as written
    relative_new = {"streams": {"dinov2": {"extractor": "dinov2", "model": "ckpts/dino", "model_files": "f9", "settings": {}}}}
    assert mixed_features(_features_of(relative_old, ["dinov2"]), _features_of(relative_new, ["dinov2"])) == []


def vocabulary_tokenizer(sentences=("the weather is sunny today", "tomorrow it rains in the north", "wind and snow")):
    """A tokenizer with an unknown token whose vocabulary is the characters of ``sentences`` (English by default,
    as Flan-T5's SentencePiece has no Chinese): unseen characters become <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(list(sentences),
                            trainers.BpeTrainer(vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


def test_targets_the_tokenizer_cannot_write_are_refused_or_warned(capsys):
    """Flan-T5's vocabulary has no Chinese: CSL-Daily targets became <unk> and the run trained on nothing."""
    from transformers import ByT5Tokenizer

    from trainer.data import check_target_tokens

    tok = vocabulary_tokenizer()
    assert check_target_tokens(tok, ["the weather is sunny", "snow tomorrow"], "train", "m") == 0.0
    with pytest.raises(SignfeatError, match=r"split 'train': 100% of the targets' characters .* unknown token of the google/flan-t5-xl "
                                            r"tokenizer \(most frequent: '[他是谁？明天]+'\).*mt5"):
        check_target_tokens(tok, ["他是谁？", "明天"], "train", "google/flan-t5-xl")
    share = check_target_tokens(tok, ["the weather is sunny today in the north", "wind and snow tomorrow", "the rain ü"], "train", "m")
    assert 0.01 < share < 0.5 and "most frequent: 'ü'" in capsys.readouterr().err
    assert check_target_tokens(ByT5Tokenizer(), ["他是谁？"], "train", "byt5") == 0.0  # bytes: nothing is unknown


def test_a_sentencepiece_vocabulary_without_chinese_is_refused_although_a_run_of_unknown_characters_is_one_token():
    """SentencePiece (Flan-T5's kind) writes "今天北京下雨" as "▁" + one <unk>: counted in tokens that was 50 %
    unknown, let through with a warning, and every target trained as "▁ <unk>"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from trainer.data import check_target_tokens

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(["the weather is sunny today", "tomorrow it rains in the north", "wind and snow"] * 20,
                            trainers.UnigramTrainer(vocab_size=60, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    sp = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")
    ids = sp("今天北京下雨", add_special_tokens=False)["input_ids"]
    assert ids.count(sp.unk_token_id) == 1 and len(ids) == 2  # the case itself: one <unk> for the whole run
    with pytest.raises(SignfeatError, match="100% of the targets' characters"):
        check_target_tokens(sp, ["今天北京下雨", "明天天气很好"], "train", "google/flan-t5-xl")
