import random
import re

import pytest

from manifests.keys import id_from_key, key_from_id

TRICKY = [
    "01April_2010_Thursday_heute-6694",  # PHOENIX-2014T
    "--7E2sU6zP4_10-5-rgb_front",  # How2Sign
    "S000000_P0000_T00",  # CSL-Daily
    "a.b", "a_2eb", "a__b", "a_b", "_", "__", "-", ".", "x.y.z", "Gebärde 1", "手语 视频/001", "ä", "a_", "_a",
    "clip 1.mp4", "tab\there", "emoji 🤟", "a/b\\c", "%41", "\x00",
]


@pytest.mark.parametrize("clip_id", TRICKY)
def test_key_is_safe_and_reversible(clip_id):
    key = key_from_id(clip_id)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", key), key
    assert "." not in key
    assert id_from_key(key) == clip_id


def test_safe_ids_stay_readable():
    assert key_from_id("S000000-P0000") == "S000000-P0000"
    assert key_from_id("a.b") == "a_2eb"
    assert key_from_id("a_b") == "a__b"


def test_keys_are_collision_free_on_random_ids():
    rng = random.Random(0)
    alphabet = "ab_-.2e_ ä手/"
    ids = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(20000)}
    keys = {key_from_id(i) for i in ids}
    assert len(keys) == len(ids)
    assert all(id_from_key(key_from_id(i)) == i for i in ids)


@pytest.mark.parametrize("bad", ["", "a.b", "a_", "a_zz", "a b"])
def test_bad_keys_and_ids_are_rejected(bad):
    with pytest.raises(ValueError):
        id_from_key(bad)
    with pytest.raises(ValueError):
        key_from_id("")


@pytest.mark.parametrize("clip_id", ["手" * 27, "a" * 201, "_" * 150, "x.y" * 100, "🤟" * 60])
def test_long_ids_give_keys_that_fit_a_file_name(clip_id):
    # 27 Chinese characters made a 243-character key: member names over 255 bytes, which `tar xf` cannot write
    key = key_from_id(clip_id)
    assert len(f"{key}.smplx623.npy".encode()) <= 255 and re.fullmatch(r"[A-Za-z0-9_-]+", key), key
    assert key == key_from_id(clip_id) and key != key_from_id(clip_id + "!")  # deterministic, distinct
    assert re.fullmatch(r"(?:[A-Za-z0-9-]|__|_[0-9a-f]{2})+", key[:-18])  # whole escapes only, none cut in half
    with pytest.raises(ValueError, match="shortened key"):
        id_from_key(key)


def test_ids_up_to_the_limit_keep_their_reversible_key():
    clip_id = "a" * 200
    assert key_from_id(clip_id) == clip_id and id_from_key(clip_id) == clip_id


@pytest.mark.parametrize("clip_id", ["_", "__", "_intro", "__key__", "_001"])
def test_no_key_starts_with_two_underscores(clip_id):
    """HuggingFace datasets' webdataset reader skips members whose names start with "__" (hidden files): the
    samples of ids starting with "_" were dropped without a word."""
    key = key_from_id(clip_id)
    assert not key.startswith("__") and key.startswith("_5f") and id_from_key(key) == clip_id


@pytest.mark.parametrize("clip_id", ["CON", "con", "Nul", "aux", "PRN", "COM1", "lpt9"])
def test_windows_device_names_are_not_keys(clip_id):
    key = key_from_id(clip_id)
    assert key.lower() not in {"con", "prn", "aux", "nul"} | {f"{d}{i}" for d in ("com", "lpt") for i in range(10)}
    assert id_from_key(key) == clip_id
    assert key_from_id("CONSOLE") == "CONSOLE" and key_from_id("con1") == "con1"  # only the device names themselves


def test_keys_of_one_manifest_never_differ_only_by_case():
    """`Case` and `case` became members Case.json and case.json: one file on a case-insensitive file system."""
    from manifests.keys import case_safe_keys

    ids = ["case", "Case", "CASE", "CAse", "case", "other", "Other", "_x", "_X"]
    keys = case_safe_keys(ids)
    assert keys[0] == "case" and keys[5] == "other" and keys[4] == keys[0]  # first comers and repeats keep the plain key
    distinct = {k for k in keys}
    assert len({k.lower() for k in distinct}) == len(distinct) == len(set(ids))
    assert [id_from_key(k) for k in keys] == ids
    rng = random.Random(1)
    many = list({"".join(rng.choice("aAbB_-.") for _ in range(rng.randint(1, 4))) for _ in range(3000)})
    keys = case_safe_keys(many)
    assert len({k.lower() for k in keys}) == len(many) and [id_from_key(k) for k in keys] == many
