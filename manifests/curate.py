"""``signfeat manifest curate``: filter a probed manifest, drop exact duplicates, assign splits, report.

Filters run in a fixed order and each counts what it removed from what was left by the ones before
(status -> duration -> frames -> resolution -> fps -> text length -> duplicates), so the report's
numbers add up to input - kept. Removed rows are not lost: they go to ``REPORT/excluded.parquet`` with
the filter and reason that removed them (datatrove's exclusion writer, in one table). SMPL-X parameter
rows (source_kind smplx) have no width/height: the resolution filter passes them; the others apply to them
as to videos (duration, frames and fps come from the parameters; duplicates are equal parameter bytes).
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from manifests.formats import misspelt_split, normalise_split
from manifests.keys import key_from_id
from manifests.schema import MANIFEST_SCHEMA, PARAMS_KIND, read_manifest, split_name_problem, write_manifest
from pipeline.errors import SignfeatError


@dataclass
class CurateOptions:
    min_duration_s: float | None = None
    max_duration_s: float | None = None
    min_frames: int | None = None
    max_frames: int | None = None
    min_width: int | None = None
    min_height: int | None = None
    min_fps: float | None = None
    max_fps: float | None = None
    min_text_chars: int | None = 1
    max_text_chars: int | None = None
    dedup: bool = True
    split_ratios: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "dev": 0.1, "test": 0.1})
    group_by_signer: bool = False
    split_salt: str = "signfeat"

    def __post_init__(self) -> None:
        for name in ("min_duration_s", "max_duration_s", "min_frames", "max_frames", "min_width", "min_height", "min_fps", "max_fps", "min_text_chars", "max_text_chars"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                # NaN compares false with everything: min_duration_s: .nan removed every row
                raise SignfeatError(f"curation option {name} must be a finite number or null, got {v!r}")
        for name in ("min_frames", "max_frames", "min_width", "min_height", "min_text_chars", "max_text_chars"):
            v = getattr(self, name)  # counts: the flags refuse 2.5 (argparse int); a config's 8.5 passed
            if v is not None and not float(v).is_integer():
                raise SignfeatError(f"curation option {_option(name)} counts frames, pixels or characters: a whole number, got {v!r}")
        for name in ("dedup", "group_by_signer"):
            if not isinstance(getattr(self, name), bool):
                raise SignfeatError(f"curation option {name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.split_salt, str):  # null, [a] or 123 were recorded as given and hashed as their str()
            raise SignfeatError(f"curation option split_salt must be a string, got {self.split_salt!r}")
        if not isinstance(self.split_ratios, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                                              for v in self.split_ratios.values()):
            # train=nan (or inf) sent every unsplit row to the last split
            raise SignfeatError(f"split_ratios must map split names to finite fractions, got {self.split_ratios!r}")
        # The names assigned become split folders of the shards and what `train` reads: normalise them as the
        # build does (val -> dev), and refuse one that cannot be a folder name now rather than at extraction.
        ratios: dict[str, float] = {}
        given_as: dict[str, str] = {}  # split -> the name that gave it
        for name, v in self.split_ratios.items():
            split = normalise_split(name)
            problem = "it is empty" if not split else split_name_problem(split)
            if problem:
                raise SignfeatError(f"split_ratios: {name!r} cannot be a split name ({problem}; a plain folder name, like train, dev, test)")
            if misspelt_split(split):  # tset=0.1: rows drawn into a split that training and evaluation never read
                raise SignfeatError(f"split_ratios: {name!r} reads as a misspelling of {misspelt_split(split)!r}; "
                                    "rows drawn into it would be a split that nothing reads")
            if split in ratios:
                raise SignfeatError(f"split_ratios: {given_as[split]!r} and {name!r} both name split {split!r}")
            ratios[split], given_as[split] = v, name
        self.split_ratios = ratios
        for lo, hi in [("min_duration_s", "max_duration_s"), ("min_frames", "max_frames"), ("min_fps", "max_fps"), ("min_text_chars", "max_text_chars")]:
            a, b = getattr(self, lo), getattr(self, hi)
            for name, v in ((lo, a), (hi, b)):
                if v is not None and v < 0:
                    raise SignfeatError(f"curation option {_option(name)} must be >= 0, got {v}")
            if a is not None and b is not None and a > b:
                raise SignfeatError(f"curation option {_option(lo)} ({a}) is larger than {_option(hi)} ({b})")
        for name in ("min_width", "min_height"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise SignfeatError(f"curation option {_option(name)} must be >= 0, got {v}")
        if not self.split_ratios or any(v < 0 for v in self.split_ratios.values()) or sum(self.split_ratios.values()) <= 0:
            raise SignfeatError(f"split ratios must be non-negative and sum to more than 0, got {self.split_ratios}")


def _option(name: str) -> str:
    """A curation option as the config names it and the flag that sets it: min_duration_s (--min-duration)."""
    return f"{name} (--{name.removesuffix('_s').replace('_', '-')})"


def load_curate_config(path: Path) -> dict[str, Any]:
    """YAML of CurateOptions fields; unknown keys are an error, so a typo cannot silently do nothing."""
    from pipeline.yaml_file import load_yaml

    data = load_yaml(path, "curation config") or {}
    if not isinstance(data, dict):
        raise SignfeatError(f"{path}: expected a mapping of curation options")
    known = set(CurateOptions.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise SignfeatError(f"{path}: unknown curation options {unknown}; known: {sorted(known)}")
    return data


def parse_split_ratios(text: str) -> dict[str, float]:
    """``train=0.8,dev=0.1,test=0.1`` -> dict (normalised later)."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            fraction = float(value)
        except ValueError:
            raise SignfeatError(f"bad --split-ratios {text!r}: expected NAME=FRACTION,... like train=0.8,dev=0.1,test=0.1") from None
        if name.strip() in out:  # a dict keeps the last: train=1,train=2 would quietly mean train=2
            raise SignfeatError(f"bad --split-ratios {text!r}: {name.strip()} is given twice")
        out[name.strip()] = fraction
    return out


def _unit_hash(text: str, salt: str) -> float:
    digest = hashlib.blake2b(f"{salt}|{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _split_for(u: float, ratios: dict[str, float]) -> str:
    total = sum(ratios.values())
    acc = 0.0
    names = list(ratios)
    for name in names:
        acc += ratios[name] / total
        if u < acc:
            return name
    return names[-1]


def _person(df: pd.DataFrame) -> pd.Series:
    return df["dataset"].fillna("").astype(str) + "/" + df["signer"].astype(str)


def _real_paths(paths: pd.Series) -> pd.Series:
    """Paths with symlinks and ``..`` resolved (as written where the file is not here, or where it is not an
    absolute path: a table's ``source`` may be any name); one file system call per distinct path, as a range
    manifest names each video many times."""
    resolved = {p: os.path.realpath(p) if os.path.isabs(p) and os.path.exists(p) else os.path.normpath(p) for p in set(paths.astype(str))}
    return paths.astype(str).map(resolved)


def _video_names(paths: pd.Series) -> pd.Series:
    """A range's source video as a split unit: its path with symlinks and ``..`` resolved, named by its folder and
    file name (``raw_videos/x.mp4``, ``clip7/video.mp4``: by file name alone a corpus keeping one ``video.mp4`` per
    folder was one unit, and one split), longer only where two videos of the manifest share even that. A tail, not
    the whole path, so a corpus mounted elsewhere (/home/a vs /mnt/b) draws the same splits, and the same video
    spelled two ways is one unit. Adding a video renames (and may move) only the videos it shares a folder and
    file name with (a/raw/x.mp4 is raw/x.mp4 until b/raw/x.mp4 joins the manifest); every other name stays."""
    real = _real_paths(paths)
    parts = {r: Path(r).parts for r in set(real)}
    names: dict[str, str] = {}
    unresolved, depth = set(parts), 2
    while unresolved:
        tails = {r: "/".join(parts[r][-depth:]) for r in unresolved}
        counts = collections.Counter(tails.values())
        for r, tail in tails.items():
            if counts[tail] == 1 or depth >= len(parts[r]):
                names[r] = tail
        unresolved -= set(names)
        depth += 1
    return real.map(names)


def _unit(df: pd.DataFrame) -> pd.Series:
    """What a split is drawn for: a clip's key, but its source recording where it has one (the ``source``
    column: a How2Sign sentence clip's raw video, a table's source), or for a range its video, so that the
    (often overlapping) segments of one long video never land in train and test at once, whether they are
    ranges of it or clips cut from it."""
    given = df["source"] if "source" in df else pd.Series(None, index=df.index, dtype=object)
    source = given.where(given.notna(), df["path"].where(df["source_kind"] == "range"))
    has = source.notna()
    # the id's key as it reads alone: the manifest's key escapes the letters of an id that differs from an earlier
    # one only by case (Case -> _43_61_73_65 once "case" joins the corpus), which moved that row's drawn split
    unit = pd.Series([key_from_id(i) if isinstance(i, str) and i else str(k) for i, k in zip(df["id"], df["key"])], index=df.index, dtype=object)
    unit[has] = "video:" + _video_names(source[has])
    return unit


def _groups(df: pd.DataFrame, units: pd.Series, by_signer: bool) -> pd.Series:
    """Each row's split group: the rows linked by a shared unit (a range's source video), by one file read
    whole and as ranges, or by two rows reading one file whole, and with ``by_signer`` by a shared signer, all
    of it transitively (union-find). Linking by signer alone lost the video: the segments of one video by two
    signers (or one of them unnamed) went to train, dev and test at once. A group is named by its signer when it
    has one, else by its source video, else by its key, so a corpus mounted elsewhere draws the same splits."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb, key=_group_rank)] = min(ra, rb, key=_group_rank)

    nodes = ("key:" + units).tolist()
    for node in nodes:
        find(node)
    # a file read whole, and also as ranges or by another row: one unit with them (its real path: names alone
    # would join every "video.mp4" of a corpus that keeps one per folder)
    whole = df["source_kind"].isin(["video", "range"])
    real = _real_paths(df["path"])
    first_of: dict[str, str] = {}
    for node, path, is_file in zip(nodes, real, whole):
        if is_file:
            union(node, first_of.setdefault(path, node))
    # byte-identical files (kept by --no-dedup): one recording, or a copy of a test clip sits in train
    for node, content in zip(nodes, df["content_hash"] if "content_hash" in df else [None] * len(nodes)):
        if isinstance(content, str) and content:
            union(node, first_of.setdefault("content:" + content, node))
    # a clip whose source is a file another row reads whole (or as ranges): one recording with it. Linked only
    # through a range before, so a whole-file row and a clip cut from it were drawn into train and test apart
    if "source" in df:
        has_source = df["source"].notna().to_numpy()
        for node, path in zip([n for n, h in zip(nodes, has_source) if h], _real_paths(df["source"][has_source])):
            if path in first_of:
                union(node, first_of[path])
    if by_signer:
        person = _person(df)
        for node, who, has in zip(nodes, person, df["signer"].notna()):
            if has:
                union(node, "person:" + who)
    return pd.Series([find(n) for n in nodes], index=df.index)


def _group_rank(node: str) -> tuple[int, str]:
    """Which node names a group: a signer, else a source video, else a key (the smallest of its kind)."""
    kind = 0 if node.startswith("person:") else 1 if node.startswith("key:video:") else 2
    return kind, node


def _group_label(node: str, by_signer: bool) -> str:
    """The text hashed for a group's split, as splits were drawn before groups were linked (the same splits
    where nothing links them): a signer's "dataset/signer"; a unit as is, or "key:" + unit when grouping by signer."""
    if node.startswith("person:"):
        return node[len("person:"):]
    return node if by_signer else node[len("key:"):]


def recordings_in_several_splits(df: pd.DataFrame) -> dict[str, list[str]]:
    """Recordings whose rows sit in more than one split -> those splits. A recording is what a drawn split keeps
    together (``_groups`` without signers): a video read whole or as ranges, and the clips whose ``source`` names
    it. Drawn splits never part one; the splits an annotation gives can (a video whole in train and a range of it
    in test, a pre-cut clip of it in dev), which lets test scores profit from training on the same recording."""
    if not len(df):
        return {}
    groups = _groups(df, _unit(df), by_signer=False)
    splits = df["split"].astype(str).groupby(groups).unique()
    several = splits[splits.map(len) > 1]
    if several.empty:
        return {}
    paths = df["path"].astype(str).groupby(groups).min()
    names = {g: g[len("key:video:"):] if g.startswith("key:video:") else paths[g] for g in several.index}
    return {names[g]: sorted(v) for g, v in several.items()}


def _no_split(split: pd.Series) -> pd.Series:
    """Rows without a split: null or blank."""
    return split.isna() | (split.astype(str).str.strip() == "")


def assign_splits(df: pd.DataFrame, options: CurateOptions, units: pd.Series | None = None, drawn: dict | None = None) -> pd.Series:
    """Splits for rows that have none, by a salted hash of their group (``_groups``): the rows of a group
    some of which already have exactly one split join it. ``units``: each row's ``_unit`` as named among all
    the manifest's rows (curate names them before its filters, so that a bound does not rename, and move, a video).
    ``drawn``, when given, gets ``"mask"``: the rows drawn by the ratios (not joined to a split their group has)."""
    split = df["split"].copy()
    missing = _no_split(split)
    if not missing.any():
        return split
    units = _unit(df) if units is None else units.reindex(df.index)
    # a unit (a range's source video) some of whose rows already have exactly one split: the others join it
    # (3 segments of a video marked test and 7 blank put the video in test and train)
    given = pd.DataFrame({"unit": units, "split": split})[~missing].groupby("unit")["split"].unique()
    joined = {u: v[0] for u, v in given.items() if len(v) == 1}
    joins = missing & units.isin(joined.keys())
    split[joins] = units[joins].map(joined)
    missing &= ~joins
    if not missing.any():
        return split
    ratios = options.split_ratios
    # a recording (a video whole, its ranges, the clips cut from it) whose rows the annotations put in several splits:
    # its blank rows are drawn among those (a video's segments in dev and test: a blank one was drawn into train, a
    # third split, and the note blamed the annotations for it)
    recordings = _groups(df, units, by_signer=False)
    held_by = pd.DataFrame({"group": recordings, "split": split})[~missing].groupby("group")["split"].unique()
    several = {g: sorted(str(x) for x in v) for g, v in held_by.items() if len(v) > 1}
    among_held = missing & recordings.isin(several.keys())
    for i in split.index[among_held]:
        held = several[recordings[i]]
        u = _unit_hash(_group_label(recordings[i], False), options.split_salt)
        among = {name: ratios[name] for name in ratios if name in held and ratios[name] > 0}
        split[i] = _split_for(u, among) if among else held[int(u * len(held))]
    missing &= ~among_held
    if not missing.any():
        return split
    groups = _groups(df, units, by_signer=True) if options.group_by_signer else recordings  # the same union-find without signers
    # then a group whose rows already sit in exactly one split (a signer's other rows) keeps that split
    given = pd.DataFrame({"group": groups, "split": split})[~missing].groupby("group")["split"].unique()
    fixed = {g: v[0] for g, v in given.items() if len(v) == 1}
    if drawn is not None:
        drawn["mask"] = missing & ~groups.isin(fixed.keys())
    split[missing] = [fixed.get(g) or _split_for(_unit_hash(_group_label(g, options.group_by_signer), options.split_salt), ratios)
                      for g in groups[missing]]
    return split


def curate(df: pd.DataFrame, options: CurateOptions) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Returns (kept rows, excluded rows with ``filter`` and ``reason``, report dict)."""
    removed_counts: dict[str, int] = {}
    excluded: list[pd.DataFrame] = []
    keep = df.copy()
    # split units named among every row: dropping b/raw/x.mp4's ranges by a duration bound renamed a/raw/x.mp4 from
    # a/raw/x.mp4 to raw/x.mp4, and moved its ranges to another split
    units_before_filters = _unit(df) if len(df) else None

    def drop(name: str, mask: pd.Series, reason: pd.Series | str) -> None:
        nonlocal keep
        mask = mask.fillna(True).astype(bool)  # a value that is missing cannot pass a range filter
        removed_counts[name] = int(mask.sum())
        if mask.any():
            gone = keep[mask].copy()
            gone["filter"] = name
            gone["reason"] = reason[mask] if isinstance(reason, pd.Series) else reason
            excluded.append(gone)
        keep = keep[~mask]

    def range_filter(name: str, column: str, lo: float | None, hi: float | None, slack: float = 0.0, label: str | None = None) -> None:
        """Drop rows outside [lo, hi], with a relative ``slack``: a measured duration or rate carries float and
        timestamp noise (a 2.5 s range at 24 fps measures 2.4999999999999996 s, a 30 fps Matroska file 30.02 fps
        from its millisecond timestamps), which must not decide a boundary the user wrote."""
        if lo is None and hi is None:
            return
        values = keep[column].astype("float64")
        mask = pd.Series(False, index=keep.index)
        if lo is not None:
            mask |= ~(values >= lo * (1 - slack))
        if hi is not None:
            mask |= ~(values <= hi * (1 + slack))
        drop(name, mask, f"{label or column} outside [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]")

    drop("status", keep["status"] != "ok", "status=" + keep["status"].astype(str))
    range_filter("duration", "duration_s", options.min_duration_s, options.max_duration_s, slack=1e-9)
    range_filter("frames", "num_frames", options.min_frames, options.max_frames)
    if options.min_width is not None or options.min_height is not None:
        w, h = keep["width"].astype("float64"), keep["height"].astype("float64")
        mask = pd.Series(False, index=keep.index)
        if options.min_width is not None:
            mask |= ~(w >= options.min_width)
        if options.min_height is not None:
            mask |= ~(h >= options.min_height)
        # SMPL-X parameter clips have no pixels (width/height null): a resolution filter does not apply to them
        mask &= keep["source_kind"] != PARAMS_KIND
        drop("resolution", mask, f"smaller than {options.min_width or 0}x{options.min_height or 0}")
    range_filter("fps", "fps", options.min_fps, options.max_fps, slack=0.002)  # 30.05 counts as 30, 30.1 does not
    if options.min_text_chars is not None or options.max_text_chars is not None:
        keep = keep.assign(_text_chars=keep["text"].fillna("").str.len())
        range_filter("text_length", "_text_chars", options.min_text_chars, options.max_text_chars, label="text characters")
        keep = keep.drop(columns="_text_chars")
    if options.dedup:
        # keep the smallest id of each content hash: independent of row order, so reruns agree
        ordered = keep.sort_values("id", kind="stable")
        first_id = ordered.groupby("content_hash", sort=False)["id"].transform("first")
        # a row without a content hash (a hand-made manifest) duplicates nothing (groupby leaves it out: NaN)
        dup_mask = ((ordered["id"] != first_id) & ordered["content_hash"].notna()).reindex(keep.index)
        drop("duplicate", dup_mask, "duplicate_of=" + first_id.reindex(keep.index).astype(str))

    # rows without a split: each gets one here, drawn by the ratios or joined from its video's or signer's rows
    drawn = int(_no_split(keep["split"]).sum()) if len(keep) else 0
    by_ratio: dict = {}  # the rows drawn by the ratios, not joined to a split their video or signer has
    keep = keep.assign(split=assign_splits(keep, options, units_before_filters, by_ratio)) if len(keep) else keep
    mask = by_ratio.get("mask")
    drawn_per_split = {str(k): int(v) for k, v in keep["split"][mask].value_counts().sort_index().items()} if mask is not None and mask.any() else {}
    excluded_df = pd.concat(excluded) if excluded else df.iloc[0:0].assign(filter=pd.Series(dtype=str), reason=pd.Series(dtype=str))
    if "_text_chars" in excluded_df.columns:
        excluded_df = excluded_df.drop(columns="_text_chars")

    with_signer = keep[keep["signer"].notna()]
    signer_splits = with_signer.groupby(_person(with_signer))["split"].nunique()
    report = {
        "input_rows": int(len(df)),
        "kept": int(len(keep)),
        "removed": removed_counts,
        "removed_total": int(sum(removed_counts.values())),
        "status_of_input": {k: int(v) for k, v in df["status"].value_counts().sort_index().items()},
        "kept_per_split": {str(k): int(v) for k, v in keep["split"].value_counts().sort_index().items()},
        "kept_with_split_drawn": drawn,  # the others kept the split their annotation gave
        "drawn_per_split": drawn_per_split,
        "drawn_far_from_ratios": _far_from_ratios(drawn_per_split, options.split_ratios),
        "kept_per_dataset": {str(k): int(v) for k, v in keep["dataset"].value_counts().sort_index().items()},
        "kept_hours": float(keep["duration_s"].sum() / 3600),
        "kept_frames": int(keep["num_frames"].sum()),
        "signers": int(_person(with_signer).nunique()),
        "signers_in_several_splits": sorted(str(s) for s in signer_splits[signer_splits > 1].index),
        # (a corpus whose annotation gives the splits: a signer-dependent split such as PHOENIX's is by design, a
        # recording in two splits is a leak)
        "recordings_in_several_splits": recordings_in_several_splits(keep),
        "options": asdict(options),
    }
    return keep, excluded_df, report


def _far_from_ratios(drawn: dict[str, int], ratios: dict[str, float]) -> dict[str, list[float]]:
    """Splits whose share of the drawn rows is off its ratio by more than 0.1 (absolute) -> [share, ratio]: whole
    groups are drawn, so a few large ones (one signer with 90 % of the rows, under --group-by-signer; a handful of
    rows) decide the shares, and a run exited 0 with 915 of 1000 rows in test without a word."""
    total = sum(drawn.values())
    if not total:
        return {}
    weight = sum(ratios.values())
    out = {}
    for name in sorted(set(ratios) | set(drawn)):
        share, want = drawn.get(name, 0) / total, ratios.get(name, 0.0) / weight
        if abs(share - want) > 0.1:
            out[name] = [round(share, 3), round(want, 3)]
    return out


def _bin_edges(values: pd.Series, bins: int = 40) -> np.ndarray | int:
    """40 histogram bins over the values; one bin around them when their range is too small for 40 finite-sized
    bins (numpy refuses 24.999999999999996..25.0: a 25 fps corpus's probed rates)."""
    if not len(values):
        return 10
    try:
        return np.histogram_bin_edges(values, bins=bins)
    except ValueError:
        mid = float(values.mean())
        half = max(abs(mid) * 1e-3, 1e-9)
        return np.array([mid - half, mid + half])


def _plot_report(df_in: pd.DataFrame, kept: pd.DataFrame, report_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok_in = df_in[df_in["status"] == "ok"]
    text_len_in, text_len = ok_in["text"].fillna("").str.len(), kept["text"].fillna("").str.len()

    def hist(ax, col_in, col_kept, title, xlabel):
        vals_in, vals_kept = pd.Series(col_in).dropna().astype(float), pd.Series(col_kept).dropna().astype(float)
        allv = pd.concat([vals_in, vals_kept])
        bins = _bin_edges(allv)
        ax.hist(vals_in, bins=bins, color="lightgray", label=f"probed ok ({len(vals_in)})")
        ax.hist(vals_kept, bins=bins, color="tab:blue", alpha=0.8, label=f"kept ({len(vals_kept)})")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("clips")
        ax.legend(fontsize=7)

    def resolution(ax):
        ax.scatter(ok_in["width"], ok_in["height"], s=12, color="lightgray", label="probed ok")
        ax.scatter(kept["width"], kept["height"], s=8, color="tab:blue", label="kept")
        ax.set_title("resolution")
        ax.set_xlabel("width (px)")
        ax.set_ylabel("height (px)")
        ax.legend(fontsize=7)

    def bars(ax, counts: pd.Series, title: str, top: int = 30):
        counts = counts.sort_values(ascending=False)
        shown = counts.head(top)
        ax.bar([str(i) for i in shown.index], shown.values, color="tab:blue")
        ax.set_title(title + (f" (top {top} of {len(counts)})" if len(counts) > top else ""))
        ax.set_ylabel("clips")
        ax.tick_params(axis="x", rotation=60, labelsize=7)

    panels = {
        "duration": lambda ax: hist(ax, ok_in["duration_s"], kept["duration_s"], "duration", "seconds"),
        "frames": lambda ax: hist(ax, ok_in["num_frames"], kept["num_frames"], "frame count", "frames"),
        "resolution": resolution,
        "fps": lambda ax: hist(ax, ok_in["fps"], kept["fps"], "frame rate", "fps"),
        "text_length": lambda ax: hist(ax, text_len_in, text_len, "text length", "characters"),
        "splits": lambda ax: bars(ax, kept["split"].fillna("(none)").value_counts(), "clips per split"),
        "signers": lambda ax: bars(ax, _person(kept).where(kept["signer"].notna(), "(unknown)").value_counts(), "clips per signer (dataset/signer)"),
    }
    assert tuple(panels) == PLOT_PANELS
    written = []
    fig, axes = plt.subplots(2, 4, figsize=(20, 9))
    for ax, (name, draw) in zip(axes.flat, panels.items()):
        draw(ax)
    axes.flat[-1].axis("off")
    axes.flat[-1].text(0.0, 0.5, "\n".join(f"{k}: {v}" for k, v in [("input rows", len(df_in)), ("kept", len(kept)), ("hours kept", f"{kept['duration_s'].sum() / 3600:.3f}")]), fontsize=12)
    fig.tight_layout()
    fig.savefig(report_dir / "overview.png", dpi=80)
    plt.close(fig)
    written.append("overview.png")
    for name, draw in panels.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        draw(ax)
        fig.tight_layout()
        fig.savefig(report_dir / f"{name}.png", dpi=80)
        plt.close(fig)
        written.append(f"{name}.png")
    return written


# the report folder's files (curate_manifest writes them all, or removes the plots it does not draw)
PLOT_PANELS = ("duration", "frames", "resolution", "fps", "text_length", "splits", "signers")
PLOT_FILES = ("overview.png", *(f"{name}.png" for name in PLOT_PANELS))
REPORT_FILES = ("excluded.parquet", "report.json", *PLOT_FILES)


def curate_manifest(manifest: Path, out: Path, report_dir: Path, options: CurateOptions, plots: bool = True) -> dict[str, Any]:
    # an --out inside the report folder named as one of its files was overwritten by that file (the kept rows lost)
    # (through links too: realpath resolves a linked folder or file, and a path that does not exist yet as far as it does)
    if os.path.realpath(out) in {os.path.realpath(Path(report_dir) / name) for name in REPORT_FILES}:
        raise SignfeatError(f"--out {out} is a file the report in {report_dir} writes ({', '.join(REPORT_FILES[:2])}, plots): "
                            "name the curated manifest otherwise, or put it in another folder")
    try:
        table = read_manifest(manifest)
    except (FileNotFoundError, ValueError) as exc:
        raise SignfeatError(str(exc)) from None
    df = table.to_pandas()
    kept, excluded, report = curate(df, options)
    out_table = pa.Table.from_pandas(kept.reset_index(drop=True), schema=MANIFEST_SCHEMA, preserve_index=False)
    out_table = out_table.replace_schema_metadata({**table.schema.metadata, b"signfeat.manifest.curation": json.dumps(report["options"]).encode()})
    write_manifest(out_table, out)
    report_dir.mkdir(parents=True, exist_ok=True)
    # the manifest's own schema (ints stay ints, the schema version is kept) plus filter and reason, so the
    # excluded rows read back as a manifest and join the curated one
    schema = MANIFEST_SCHEMA.append(pa.field("filter", pa.string())).append(pa.field("reason", pa.string()))
    excluded_table = pa.Table.from_pandas(excluded.reset_index(drop=True), schema=schema, preserve_index=False)
    pq.write_table(excluded_table.replace_schema_metadata(table.schema.metadata), report_dir / "excluded.parquet")
    report["manifest_in"], report["manifest_out"] = str(manifest), str(out)
    report["plots"] = _plot_report(df, kept, report_dir) if plots else []
    for stale in set(PLOT_FILES) - set(report["plots"]):  # an earlier run's plots would pass for this run's
        (report_dir / stale).unlink(missing_ok=True)
    (report_dir / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    return report
