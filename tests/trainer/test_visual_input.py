"""Samples too short for the adapter: SpaMo's temporal CNN (K5 P2 K5 P2) gives no position to fewer than 16
rows of spatial + motion features, and such a sample reached the LLM as its text prompt alone. A run on 12-frame
clips trained on text alone (VT-Align at chance, gradient 0) and reported BLEU without a word."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import SignfeatError
from tests.trainer.conftest import FRAMES_PER_WORD, tiny_recipe, write_shards
from trainer.adapters import TemporalConv, visual_positions
from trainer.data import check_visual_input, list_shards
from trainer.loop import train
from trainer.recipe import recipe_from_dict


def _output(root, sentences, dev=None):
    """Shards of the sentences (and a dev split) plus the index.parquet an extraction writes next to them."""
    rows = []
    for split, split_sentences in (("train", sentences), ("dev", dev or [])):
        if split_sentences:
            write_shards(root, split, split_sentences, per_shard=4)
        rows += [{"shard": f"{split}/syn-{i // 4:06d}", "key": f"{split}-{i:05d}", "len_clip_s2": len(words) * FRAMES_PER_WORD,
                  "len_videomae": len(words), "len_dinov2": len(words) * FRAMES_PER_WORD} for i, words in enumerate(split_sentences)]
    pq.write_table(pa.Table.from_pylist(rows), root / "index.parquet")
    return root


def test_visual_positions_are_the_temporal_conv_s_output_lengths():
    import torch

    for rows in range(0, 40):
        want = int(TemporalConv.output_lengths(torch.tensor(rows)))
        assert visual_positions("sign_adapter", ["clip_s2", "videomae"], {"clip_s2": rows - rows // 3, "videomae": rows // 3}) == want
    assert visual_positions("sign_adapter", ["a", "b"], {"a": 14, "b": 1}) == 0  # 15 rows: none
    assert visual_positions("sign_adapter", ["a", "b"], {"a": 15, "b": 1}) == 1  # 16 rows: one
    assert visual_positions("mlp", ["dinov2"], {"dinov2": 3}) == 3


def test_a_training_split_too_short_for_the_sign_adapter_is_refused(tmp_path):
    root = _output(tmp_path / "out", [[1], [2], [3], [4]])  # one word: 8 + 1 = 9 rows per sample
    recipe = recipe_from_dict(tiny_recipe(root, tmp_path / "run"))
    with pytest.raises(SignfeatError, match=r"none of its 4 samples gives the sign_adapter adapter a visual position.*needs 16 rows of "
                                            r"clip_s2 \+ videomae.*the longest has 9 rows"):
        train(recipe)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before anything ran
    # an MLP connector over a per-frame stream gives one position per frame: the same shards train
    mlp = recipe_from_dict(tiny_recipe(root, tmp_path / "mlp", data={"streams": ["dinov2"], "crop_streams": []}, adapter={"kind": "mlp"}))
    assert check_visual_input(mlp, list_shards(str(root), "train"), "train") == 0


def test_some_short_samples_are_counted_in_a_warning(tmp_path, capsys):
    root = _output(tmp_path / "out", [[1], [2, 3], [4, 5, 6], [7]])  # 9, 18, 27, 9 rows
    recipe = recipe_from_dict(tiny_recipe(root, tmp_path / "run"))
    assert check_visual_input(recipe, list_shards(str(root), "train"), "train") == 2
    assert "warning: split 'train': 2 of 4 samples give the sign_adapter adapter no visual position" in capsys.readouterr().err


def test_the_check_counts_rows_as_the_model_gets_them_after_the_crop(tmp_path):
    """data.max_frames cuts clip_s2 before the adapter: 40-row clips cropped to 8 gave the CNN 8 + 5 rows."""
    root = _output(tmp_path / "out", [[1, 2, 3, 4, 5]] * 4)  # 40 + 5 rows: fine uncropped
    assert check_visual_input(recipe_from_dict(tiny_recipe(root, tmp_path / "a")), list_shards(str(root), "train"), "train") == 0
    cropped = recipe_from_dict(tiny_recipe(root, tmp_path / "b", data={"max_frames": 8}))
    with pytest.raises(SignfeatError, match=r"none of its 4 samples.*the longest has 13 rows"):
        check_visual_input(cropped, list_shards(str(root), "train"), "train")


def test_a_too_short_eval_split_is_refused_without_advice_to_name_another_split(tmp_path):
    root = _output(tmp_path / "out", [[1, 2, 3]] * 4, dev=[[1], [2]])
    recipe = recipe_from_dict(tiny_recipe(root, tmp_path / "run", eval={"at_end": True}))
    with pytest.raises(SignfeatError, match=r"split 'dev': none of its 2 samples") as err:
        train(recipe)
    assert "name a split the shards have" not in str(err.value)  # dev is there; it is too short
