"""Feature shards -> padded training batches: a WebDataset pipeline with an exact rank / worker split.

How one epoch is read (same on every rank, so ranks agree without talking to each other):

1. the split's shards are listed with their sample counts (``index.parquet`` next to them, else the tar
   headers) and, in training, shuffled with ``seed + epoch``;
2. the shards' samples, end to end, get global positions 0..N-1; with ``per_rank = N // W``, rank r of W owns
   the contiguous range ``[r * per_rank, (r + 1) * per_rank)``, truncated to whole batches:
   every rank has exactly ``N // W // batch_size`` batches, so DDP cannot hang on a missing batch; a rank
   reads only the shards that overlap its range (no rank reads the whole corpus), and the at most
   ``W * batch_size - 1`` samples cut off differ from epoch to epoch because the shard order does;
3. a rank's batches are shared among its DataLoader workers as contiguous runs of whole batches; each
   worker opens its tars itself and reads its pieces with ``webdataset``'s tar reader (so ``WDS_SECURE=1``,
   which forbids webdataset to open local files, changes nothing), decodes ``.npy`` with
   ``allow_pickle=False`` (no pickle decoders), crops, shuffles through a buffer, pads and collates its own
   batches (it holds whole batches only, so the batch count stays exact); the loader takes them from the
   workers in turn, which is deterministic.

Evaluation reads its split in shard order, in order within each shard, on one process: deterministic.
"""

from __future__ import annotations

import io
import json
import random
import shlex
import sys
import tarfile
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.errors import SignfeatError
from extractors.base import without_location
from shards import location
from shards.reader import check_archive_end, member_key

# ------------------------------------------------------------------------------------------------ shards


def list_shards(source: str | list[str], split: str) -> list[str]:
    """Shard paths of ``split``: from an extraction output folder (``OUT/{split}/*.tar``), or from shards named
    without their split (a folder of tars, a list of paths, a brace pattern ``dir/demo-{000000..000003}.tar``):
    then only the shards whose samples are of ``split`` (each shard holds one split, recorded in every
    sample's JSON), so a training pattern does not also serve as the dev and test sets (a recipe's data.shards
    is one string; a list comes only from Python). Any of these may be an object-store URL
    (``s3://bucket/features``, with ``extract --out``'s query options: ``shards/location.py``)."""
    if isinstance(source, str) and source.lstrip().startswith("["):  # a YAML list given as a key=value override
        raise SignfeatError(f"data.shards {source}: give one folder, output URL or brace pattern "
                            "(dir/x-{000000..000003}.tar), not a list")
    if isinstance(source, (list, tuple)):
        urls = [str(u) for u in source]
    elif "{" in source:
        import braceexpand

        urls = list(braceexpand.braceexpand(source))
    else:
        if source.strip() and location.is_dir(location.join(source, split)):
            return _existing(location.list_files(location.join(source, split), ".tar"), split, source)
        urls = location.list_files(source, ".tar") if source.strip() else []
    urls = _existing(urls, split, source)
    splits = {u: shard_split(u) for u in urls}
    # an empty shard (every clip failed) records no split: its folder's name does (its failures are the split's)
    mine = [u for u in urls if splits[u] == split or (splits[u] is None and location.name(location.parent(u)) == split)]
    if not mine:
        held = sorted({s or "samples that record no split" for s in splits.values() if s is not None})
        raise SignfeatError(f"no shards of split {split!r} among the {len(urls)} shard(s) of {source} (they hold "
                            f"{', '.join(held) or 'no samples'}); name the {split} shards, or the extraction output folder "
                            f"(OUT/{split}/*.tar)")
    return mine


def _existing(urls: list[str], split: str, source) -> list[str]:
    if not urls:
        if isinstance(source, str) and not source.strip():
            raise SignfeatError("data.shards is empty: give the extraction output folder (OUT), a folder of tars, or a brace pattern")
        folder = source if isinstance(source, str) and "{" not in source else None
        if folder is not None and not location.is_dir(folder):
            raise SignfeatError(f"data.shards {source}: " + ("a file, not a folder" if location.is_file(folder) else "no such folder"))
        held = [n for n in location.subfolders(folder) if location.list_files(location.join(folder, n), ".tar")] if folder is not None else []
        raise SignfeatError(f"no shards for split {split!r} under {source}" + (f" (it has {', '.join(held)})" if held else ""))
    missing = [u for u in urls if not location.is_file(u)]
    if missing:
        raise SignfeatError(f"shard {missing[0]}: no such file")
    return urls


def _shard_name(url: str) -> str:
    """``{split}/{stem}``: how index.parquet and the completion markers name a shard."""
    stem = location.name(url)
    return f"{location.name(location.parent(url))}/{stem[:-len('.tar')] if stem.endswith('.tar') else stem}"


def shard_split(url: str) -> str | None:
    """The split of a shard's samples, from its first sample's JSON (None for a shard without samples, "" when
    the sample records none)."""
    try:
        with location.open_random(url) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:
                if member.isfile() and member_key(member.name)[1] == "json":
                    meta = json.loads(tar.extractfile(member).read())
                    return str(meta.get("split") or "") if isinstance(meta, dict) else ""
    except (tarfile.TarError, ValueError) as exc:
        raise _damaged(url, exc) from None
    return None


def _check_committed(urls: list[str]) -> None:
    """A tar inside an extraction output must be a shard it committed, as it wrote it: a copy ("x (copy).tar")
    or a leftover would be trained on twice, or from the wrong split, and a tar changed since (cut off, another
    output's copied over it) does not hold the samples index.parquet counts (ranks then got unequal batches).
    A stat and a small JSON per shard (the completion marker)."""
    listed: dict[str, set[str] | None] = {}  # output folder -> the shards its index.parquet lists
    for url in urls:
        root = location.parent(location.parent(url))
        done = location.join(root, "_signfeat", "done")
        if not location.is_dir(done):
            _check_listed(url, root, listed)
            continue
        marker = location.join(done, f"{_shard_name(url)}.json")
        if not location.is_file(marker):
            raise SignfeatError(f"{url}: not a shard the extraction in {root} committed (no completion marker): a copy or a leftover would "
                                f"be read twice or in the wrong split; move it out of the folder (`signfeat verify {shlex.quote(root)}` lists such files)")
        try:
            with location.open_stream(marker) as f:
                recorded = json.loads(f.read().decode("utf-8")).get("bytes")
        except (OSError, ValueError, AttributeError):
            recorded = None
        size = location.size(url) if recorded is not None else None  # one stat (a request on an object store)
        if recorded is not None and size != recorded:
            raise SignfeatError(f"{url}: {size} bytes, but the extraction wrote {recorded}: it changed since "
                                f"(`signfeat verify {shlex.quote(root)}` says how); rerun the same `signfeat extract` command to write it again")


def _check_listed(url: str, root: str, listed: dict[str, set[str] | None]) -> None:
    """An output handed on without its ``_signfeat/`` folder (DESIGN.md names the shards, index.parquet,
    failures.parquet and job.json as the output): its index.parquet says which tars are the output's shards. A copy
    (``x (copy).tar``) next to them was read twice, its samples trained and scored twice, without a word. A tar
    whose folder is no split of the index (a folder of tars beside an output) is not the index's to judge. A shard
    whose every clip failed has no index row: failures.parquet names it."""
    if root not in listed:
        index, failures = location.join(root, "index.parquet"), location.join(root, "failures.parquet")
        try:
            listed[root] = set(location.read_table(index, columns=["shard"]).to_pydict()["shard"]) if location.is_file(index) else None
            if listed[root] is not None and location.is_file(failures):  # a shard whose every clip failed: no index row
                listed[root] |= set(location.read_table(failures, columns=["shard"]).to_pydict()["shard"])
        except (OSError, ValueError, KeyError):
            listed[root] = None  # unreadable: _counts_from_index says so
    shards = listed[root]
    name = _shard_name(url)
    if shards is None or name in shards or not any(s.startswith(name.split("/")[0] + "/") for s in shards):
        return
    if shard_split(url) is None:  # no sample in it (every clip failed; a copy without failures.parquet): read as nothing
        return
    raise SignfeatError(f"{url}: not a shard the index.parquet of {root} lists: a copy or a leftover would be read twice or in "
                        "the wrong split; move it out of the folder")


_KEYS_NOTED: set[tuple[str, str, str]] = set()  # said once per process (the shards are counted by train and eval)


def note_repeated_keys(keys_by_url: dict[str, list[str]]) -> None:
    """A sample key in two tars (a folder of tars without an index holding a copy of one, ``x (copy).tar``; two
    outputs of one corpus named by one brace pattern) is read twice, trained and scored twice: said on stderr. Not
    refused: outputs of two corpora may share keys (one output's keys are unique: `verify` checks)."""
    seen: dict[str, str] = {}
    repeated: list[tuple[str, str, str]] = []
    for url, keys in keys_by_url.items():
        for key in keys:
            if key in seen:
                repeated.append((key, seen[key], url))
            else:
                seen[key] = url
    if repeated and repeated[0] not in _KEYS_NOTED:
        _KEYS_NOTED.add(repeated[0])
        key, first, second = repeated[0]
        print(f"note: {len(repeated)} sample key(s) are in more than one shard (first: {key} in {first} and {second}): a copied "
              "shard or two outputs of one corpus are read twice (move the copy out, or name one output) unless these are other clips "
              "that share a key", file=sys.stderr)


def shard_counts(urls: list[str]) -> list[int]:
    """Samples per shard: ``index.parquet`` of the extraction output when it lists them, else tar headers."""
    _check_committed(urls)
    counts = _counts_from_index(urls)
    if counts is not None:
        return counts
    keys_by_url: dict[str, list[str]] = {}
    for url in urls:
        try:
            with location.open_random(url) as f, tarfile.open(fileobj=f, mode="r:") as tar:  # seeks over member headers, reads no data
                keys_by_url[url] = list(dict.fromkeys(member_key(m.name)[0] for m in tar.getmembers() if m.isfile()))
                check_archive_end(f, tar.offset)  # a tar cut between two samples counted (and trained) as a shorter shard
        except (tarfile.TarError, ValueError) as exc:
            raise _damaged(url, exc) from None
    if len(keys_by_url) < len(urls):
        raise SignfeatError(f"shard {next(u for u in urls if urls.count(u) > 1)} is named twice: a run must read each sample once")
    note_repeated_keys(keys_by_url)
    return [len(keys_by_url[url]) for url in urls]


def _damaged(url: str, exc: Exception) -> SignfeatError:
    """A shard tarfile cannot read (truncated, not a tar): one line naming it instead of a traceback."""
    return SignfeatError(f"{url}: unreadable shard ({exc.args[0] if exc.args else exc}); `signfeat verify` lists what is damaged")


# what makes a stream's features: its sample JSON's record minus what changes only their precision (compute_dtype)
FEATURE_FIELDS = ("extractor", "model", "model_files", "revision", "backend", "arch", "weights", "tiny", "settings", "preprocessing")


def _features_of(meta: Any, streams: list[str]) -> dict[str, dict]:
    """stream -> what made its features, from a sample's JSON (streams it does not record are left out)."""
    recorded = meta.get("streams") if isinstance(meta, dict) else None
    if not isinstance(recorded, dict):
        return {}
    out = {s: {k: recorded[s].get(k) for k in FEATURE_FIELDS} for s in streams if isinstance(recorded.get(s), dict)}
    for stream, made in out.items():
        if isinstance(meta.get("decode"), dict):  # which frames each stream saw (target_fps, max_frames)
            made["decode"] = meta["decode"]
        given = made.get("model")  # as written in the config (not compared: see mixed_features)
        if made.get("model_files"):  # a local checkpoint: what it holds counts, not the path it was read from
            made = out[stream] = without_location(made)
        made["_model_given"] = given
    return out


def _older_local(model: Any) -> bool:
    """Whether a stream record without model_files names a local checkpoint (a path, not a Hub id)."""
    text = str(model or "")
    return bool(text) and (text.startswith(("/", ".", "~")) or text.count("/") != 1)


def mixed_features(a: dict[str, dict], b: dict[str, dict]) -> list[str]:
    """``stream: field a -> b`` for each stream both record with other settings (other model, token, scales...)."""
    out = []
    for stream in sorted(set(a) & set(b)):
        # shards of signfeat before model_files was recorded name a local checkpoint by its path only: which
        # model that was cannot be told, so model and model_files are not compared against them (a Hub id,
        # "org/name", is no such path: a local fine-tune and the Hub model stay apart)
        unknown = any(bool(x[stream].get("model_files")) and not y[stream].get("model_files")
                      and (_older_local(y[stream].get("model")) or y[stream].get("model") == x[stream].get("_model_given"))
                      for x, y in ((a, b), (b, a)))
        for k in (*FEATURE_FIELDS, "decode"):
            x, y = a[stream].get(k), b[stream].get(k)
            if k == "decode" and (x is None or y is None):  # shards of a signfeat that did not record it
                continue
            if unknown and k == "settings" and isinstance(x, dict) and isinstance(y, dict):  # smplx623's model folder
                x, y = ({key: v for key, v in d.items() if key != "model_dir"} for d in (x, y))
            if x == y or (unknown and k in ("model", "model_files")):
                continue
            if isinstance(x, dict) and isinstance(y, dict):  # settings, preprocessing: the entries that differ
                out += [f"{stream}.{k}.{sub}: {json.dumps(x.get(sub), default=str)} vs {json.dumps(y.get(sub), default=str)}"
                        for sub in sorted(set(x) | set(y)) if x.get(sub) != y.get(sub)]
            else:
                out.append(f"{stream}.{k}: {json.dumps(x, default=str)} vs {json.dumps(y, default=str)}")
    return out


def require_streams(urls: list[str], streams: list[str], widths: dict[str, int] | None = None) -> dict[str, dict]:
    """Fail up front, before any model is built, when shards lack a stream the recipe reads, hold it with
    another width than ``widths`` (the adapter's) says, or hold features of two extractions (another model,
    token, scales... for one stream: a folder holding two outputs): otherwise the first batch fails after the
    LLM is loaded, inside a DataLoader worker (a traceback, not a line), or the run trains on a mix. Reads the
    first sample of every shard: member names, its JSON and .npy headers only (an empty shard has none to
    check). Returns what made each stream's features (``FEATURE_FIELDS``; {} for shards that do not record it)."""
    widths = widths or {}
    features: dict[str, dict] = {}
    features_from = ""
    for url in urls:
        key, suffixes, shapes = None, set(), {}
        try:
            with location.open_random(url) as f, tarfile.open(fileobj=f, mode="r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    k, suffix = member_key(member.name)
                    if key is not None and k != key:
                        break
                    key = k
                    suffixes.add(suffix)
                    stream = suffix[: -len(".npy")] if suffix.endswith(".npy") else None
                    if stream in widths and stream in streams:
                        shapes[stream] = _npy_shape(tar.extractfile(member))
                    if suffix == "json":
                        mine = _features_of(json.loads(tar.extractfile(member).read()), streams)
                        clash = mixed_features(features, mine)
                        if clash:
                            raise SignfeatError(f"{url}: its features were made with other settings than {features_from}'s ({'; '.join(clash[:3])}): "
                                                "a run cannot mix two extractions; name one extraction's shards")
                        for stream, made in mine.items():
                            if stream not in features:
                                features[stream], features_from = made, features_from or url
        except (tarfile.TarError, ValueError) as exc:
            raise _damaged(url, exc) from None
        missing = [s for s in streams if f"{s}.npy" not in suffixes]
        if key is not None and missing:
            have = sorted(s[: -len(".npy")] for s in suffixes if s.endswith(".npy"))
            raise SignfeatError(f"{url}: shards have no stream {', '.join(missing)} (they hold {have or 'none'}); "
                                f"data.streams {streams} must name streams the extraction wrote")
        for stream, shape in shapes.items():
            if not shape or shape[-1] != widths[stream]:
                raise SignfeatError(f"{url}: stream {stream} of sample {key} has shape {shape}, but adapter.stream_widths.{stream} "
                                    f"is {widths[stream]}; set it to the width the extraction wrote")
    return features


def _npy_shape(fileobj) -> tuple[int, ...]:
    """The shape in a .npy header (numpy's own header reader; nothing else of the array is read)."""
    version = np.lib.format.read_magic(fileobj)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return tuple(read_header(fileobj)[0])


def lengths_from_index(urls: list[str], streams: list[str]) -> list[dict[str, int]] | None:
    """Rows of each stream for every sample of these shards, from the ``index.parquet`` of the extraction output
    each tar lies in (``len_{stream}``), or None when an index does not describe them all (hand-made shards)."""
    wanted = {(location.parent(location.parent(url)), _shard_name(url)) for url in urls}
    out: list[dict[str, int]] = []
    for root in sorted({root for root, _ in wanted}):
        try:
            table = location.read_table(location.join(root, "index.parquet"), columns=["shard", *(f"len_{s}" for s in streams)]).to_pylist()
        except (OSError, ValueError, KeyError):  # no index, or one without these streams: nothing to say
            return None
        out += [{s: int(row[f"len_{s}"]) for s in streams} for row in table if (root, row["shard"]) in wanted]
    return out


def extraction_failures(urls: list[str], split: str) -> dict[str, int]:
    """Clips of ``split`` that these shards' extraction planned into them but could not extract, by error class,
    from the ``failures.parquet`` of the output each tar lies in ({} for shards without one). A split scored without
    its failed clips is not the whole split: published test scores assume it is."""
    wanted = {(location.parent(location.parent(url)), _shard_name(url)) for url in urls}
    out: dict[str, int] = {}
    for root in sorted({root for root, _ in wanted}):
        try:
            table = location.read_table(location.join(root, "failures.parquet"), columns=["shard", "split", "error_class"]).to_pylist()
        except (OSError, ValueError, KeyError):  # none (hand-made shards), or unreadable: nothing to say
            continue
        for row in table:
            if (root, row["shard"]) in wanted and row["split"] == split:
                out[str(row["error_class"])] = out.get(str(row["error_class"]), 0) + 1
    return out


def check_visual_input(recipe, urls: list[str], split: str) -> int:
    """Samples of ``split`` (its shards ``urls``) whose features give the recipe's adapter no position: SpaMo's
    temporal CNN needs 16 rows of spatial + motion features after data.max_frames / max_len (short isolated
    signs at a low frame rate have fewer), and such a sample reaches the LLM as its text prompt alone. A split
    where every sample does is refused (a whole run on text alone, its VT-Align loss at chance with a zero
    gradient, looked like training); some of them are counted in a warning. Read from index.parquet; shards
    without one are not checked. Returns the count."""
    from trainer.adapters import visual_positions

    d = recipe.data
    lengths = lengths_from_index(urls, d.streams)
    if not lengths:
        return 0
    # as the model gets them: crop_streams cut to max_frames, every stream to max_len (``crop``)
    lengths = [{s: min(n, d.max_len, d.max_frames if s in d.crop_streams else n) for s, n in sample.items()} for sample in lengths]
    kind, streams = recipe.adapter.kind, d.streams
    blind = sum(visual_positions(kind, streams, sample) == 0 for sample in lengths)
    counted = streams[:2] if kind == "sign_adapter" else streams[:1]
    rows = f"rows of {' + '.join(counted)}"
    need = (" (its temporal CNN, K5 P2 K5 P2 as SpaMo's, needs 16 " + rows + " per clip: extract at a higher decode.target_fps, "
            "or use an adapter without it, adapter.kind=mlp)") if kind == "sign_adapter" else f" (no {rows})"
    if blind == len(lengths):
        longest = max(sum(sample[s] for s in counted) for sample in lengths)
        raise SignfeatError(f"split {split!r}: none of its {len(lengths)} samples gives the {kind} adapter a visual position{need}; "
                            f"the longest has {longest} {rows}, so the model would see text alone")
    if blind:
        print(f"warning: split {split!r}: {blind} of {len(lengths)} samples give the {kind} adapter no visual position{need}; "
              "the model sees their text prompt alone", file=sys.stderr)
    return blind


def _counts_from_index(urls: list[str]) -> list[int] | None:
    """Samples per shard from the ``index.parquet`` of the extraction output each tar lies in (a brace pattern
    may span several outputs), or None when an index does not describe them all."""
    per_root: dict[str, dict[str, list[str]]] = {}
    keys_by_url: dict[str, list[str]] = {}
    for url in urls:
        root = location.parent(location.parent(url))
        if root not in per_root:
            index = location.join(root, "index.parquet")
            if not location.is_file(index):
                return None
            try:
                table = location.read_table(index, columns=["shard", "key"]).to_pydict()
            except (OSError, ValueError, KeyError) as exc:  # pa.ArrowInvalid is a ValueError
                raise SignfeatError(f"{index}: unreadable ({exc}); `signfeat verify` lists what is damaged") from None
            per_root[root] = {}
            for shard, key in zip(table["shard"], table["key"]):
                per_root[root].setdefault(shard, []).append(key)
            if location.is_file(location.join(root, "failures.parquet")):  # shards whose every clip failed: empty
                for shard in location.read_table(location.join(root, "failures.parquet"), columns=["shard"]).to_pydict()["shard"]:
                    per_root[root].setdefault(shard, [])
        rel = _shard_name(url)
        if rel not in per_root[root]:
            return None  # the index does not describe these tars: count them
        keys_by_url[url] = per_root[root][rel]
    if len(set(urls)) < len(urls):  # a brace pattern naming one shard twice
        raise SignfeatError(f"shard {next(u for u in urls if urls.count(u) > 1)} is named twice: a run must read each sample once")
    note_repeated_keys(keys_by_url)  # two outputs of one corpus named by one pattern
    return [len(keys_by_url[url]) for url in urls]


@dataclass(frozen=True)
class ShardPiece:
    """Samples ``[start, stop)`` (positions inside the shard) of one shard."""

    url: str
    start: int
    stop: int


def rank_pieces(urls: list[str], counts: list[int], rank: int, world_size: int, batch_size: int,
                epoch: int, seed: int, shuffle: bool, worker: int = 0, num_workers: int = 1) -> list[ShardPiece]:
    """The pieces of shards that DataLoader worker ``worker`` of rank ``rank`` reads in ``epoch``: the rank's
    contiguous range of the epoch's sample order cut to whole batches (the same number on every rank), and
    of that a contiguous share of whole batches per worker (each worker collates its own batches).

    With ``shuffle``, the epoch's order is the shards in a shuffled order, starting at a random sample when
    the cut to whole batches leaves samples out (wrapping around): the samples left out are others each epoch,
    also with a single shard, whose order no shuffle of shards changes."""
    order = list(range(len(urls)))
    total = sum(counts)
    rank_batches = (total // world_size) // batch_size
    offset = 0
    if shuffle:
        rng = random.Random(seed * 100_003 + epoch)
        rng.shuffle(order)
        if total > rank_batches * batch_size * world_size:
            offset = rng.randrange(total)
    first = worker * rank_batches // num_workers
    last = (worker + 1) * rank_batches // num_workers
    lo = rank * (total // world_size) + first * batch_size
    hi = rank * (total // world_size) + last * batch_size
    # [lo, hi) of the epoch's order is [offset + lo, offset + hi) of the shards' concatenation, modulo total
    spans = [(offset + lo, min(offset + hi, total))] if offset + lo < total else []
    spans += [(max(offset + lo, total) - total, offset + hi - total)] if offset + hi > total else []
    pieces = []
    for span_lo, span_hi in spans:
        pos = 0
        for i in order:
            start, stop = max(span_lo, pos), min(span_hi, pos + counts[i])
            if start < stop:
                pieces.append(ShardPiece(urls[i], start - pos, stop - pos))
            pos += counts[i]
    return pieces


def batches_per_epoch(counts: list[int], world_size: int, batch_size: int) -> int:
    return sum(counts) // world_size // batch_size


# ------------------------------------------------------------------------------------------------ samples


def decode_sample(raw: dict[str, Any], streams: list[str], widths: dict[str, int] | None = None) -> dict[str, Any]:
    """A webdataset sample (member suffix -> bytes) -> {key, meta, text, <stream>: float32 array}, each array
    checked to be [T, D] with D = ``widths[stream]`` where given (require_streams sees only a shard's first sample)."""
    if "json" not in raw:
        raise SignfeatError(f"{raw.get('__url__')}: sample {raw.get('__key__')} has no json member")
    try:
        meta = json.loads(raw["json"])
    except ValueError as exc:  # a damaged shard: name it (`signfeat verify` lists every such sample)
        raise SignfeatError(f"{raw.get('__url__')}: {raw.get('__key__')}.json is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise SignfeatError(f"{raw.get('__url__')}: {raw.get('__key__')}.json is not a JSON object")
    # extract writes a clip's empty text as null (and shards from elsewhere may have none): both mean ""
    sample = {"key": raw["__key__"], "meta": meta, "text": meta.get("text") or ""}
    for name in streams:
        data = raw.get(f"{name}.npy")
        if data is None:
            raise SignfeatError(f"{raw.get('__url__')}: sample {raw['__key__']} has no {name}.npy (streams in recipe: {streams})")
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:  # a pickled (object) array, or not .npy at all
            raise SignfeatError(f"{raw.get('__url__')}: {raw['__key__']}.{name}.npy is unreadable without pickle: {exc}") from None
        width = (widths or {}).get(name)
        if array.ndim != 2 or (width is not None and array.shape[1] != width):
            raise SignfeatError(f"{raw['__url__']}: {raw['__key__']}.{name}.npy has shape {array.shape}, expected [T, {width or 'D'}]"
                                + (f" (adapter.stream_widths.{name})" if width is not None else ""))
        sample[name] = array.astype(np.float32, copy=False)
    return sample


def crop(sample: dict[str, Any], crop_streams: list[str], max_frames: int, max_len: int, streams: list[str],
         rng: random.Random | None) -> dict[str, Any]:
    """SpaMo: a random window of at most ``max_frames`` of each crop stream in training (``rng`` given),
    the centre window at eval; every stream capped at ``max_len`` (first positions kept)."""
    for name in streams:
        array = sample[name]
        if name in crop_streams and len(array) > max_frames:
            start = rng.randint(0, len(array) - max_frames) if rng is not None else (len(array) - max_frames) // 2
            array = array[start : start + max_frames]
        sample[name] = array[:max_len]
    return sample


def read_pieces(pieces: list[ShardPiece], streams: list[str]) -> Iterator[dict[str, Any]]:
    """Raw samples of the pieces, in order, through webdataset's tar reader (no decoders: bytes only).

    The tars are opened here, not by webdataset: with ``WDS_SECURE=1`` in the environment webdataset's
    ``gopen`` refuses every local path ("unsafe_gopen is False, cannot open local files"), and an object
    store's through pyarrow.fs take its options from the URL (``shards/location.py``); its tar expander and
    key grouping take the open stream and are unaffected."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    for piece in pieces:
        try:
            with location.open_stream(piece.url) as stream:
                samples = group_by_keys(tar_file_expander([{"url": piece.url, "stream": stream}]))
                held = 0
                for position, raw in enumerate(samples):
                    if position >= piece.stop:
                        break
                    held = position + 1
                    if position >= piece.start:
                        yield raw
                if held < piece.stop:  # a tar cut at a sample boundary reads as a shorter, valid tar
                    raise SignfeatError(f"{piece.url}: holds {held} samples where the run counted at least {piece.stop} "
                                        "(cut short or rewritten since it was listed); `signfeat verify` lists what is damaged")
        except tarfile.TarError as exc:  # webdataset re-raises tarfile's error (its args extended)
            raise _damaged(piece.url, exc) from None
        except OSError as exc:  # deleted or moved since the run listed it, or the object store went away mid-run
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SignfeatError(f"{piece.url}: cannot read the shard any more ({why}): deleted or moved since the run "
                                "listed it, or its store unreachable") from None


class ShardStream(IterableDataset):
    """One rank's samples of one epoch (training) or a whole split in order (eval, ``train=False``)."""

    def __init__(self, urls: list[str], counts: list[int], streams: list[str], *, train: bool, batch_size: int,
                 rank: int = 0, world_size: int = 1, epoch: int = 0, seed: int = 0, shard_shuffle: bool = True,
                 shuffle_buffer: int = 0, crop_streams: tuple[str, ...] = (), max_frames: int = 512,
                 max_len: int = 1 << 30, zero_visual: bool = False, widths: dict[str, int] | None = None):
        self.urls, self.counts, self.streams, self.train = urls, counts, list(streams), train
        self.widths = dict(widths or {})  # each sample's arrays are checked against them (the adapter's)
        self.batch_size, self.rank, self.world_size, self.epoch, self.seed = batch_size, rank, world_size, epoch, seed
        self.shard_shuffle, self.shuffle_buffer = shard_shuffle, shuffle_buffer
        self.crop_streams, self.max_frames, self.max_len, self.zero_visual = list(crop_streams), max_frames, max_len, zero_visual

    def pieces(self, worker: int = 0, num_workers: int = 1) -> list[ShardPiece]:
        if not self.train:  # every sample, in order
            return [ShardPiece(u, 0, c) for u, c in zip(self.urls, self.counts)][worker::num_workers]
        return rank_pieces(self.urls, self.counts, self.rank, self.world_size, self.batch_size, self.epoch,
                           self.seed, self.shard_shuffle, worker, num_workers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = self.pieces(worker, num_workers)
        # one generator per (seed, epoch, rank, worker): the same order every time this epoch is replayed
        rng = random.Random(hash((self.seed, self.epoch, self.rank, worker)) if self.train else 0)
        samples = (self._prepare(raw, rng) for raw in read_pieces(mine, self.streams))
        if self.train and self.shuffle_buffer > 1:
            samples = shuffle_buffer(samples, self.shuffle_buffer, rng)
        yield from samples

    def _prepare(self, raw: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        sample = decode_sample(raw, self.streams, self.widths)
        sample = crop(sample, self.crop_streams, self.max_frames, self.max_len, self.streams, rng if self.train else None)
        if self.zero_visual:
            for name in self.streams:
                sample[name] = np.zeros_like(sample[name])
        return sample


def shuffle_buffer(samples: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    buffer: list[dict] = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= size:
            i = rng.randrange(len(buffer))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


# ------------------------------------------------------------------------------------------------ batches


@dataclass
class Batch:
    keys: list[str]
    texts: list[str]  # raw target strings (references)
    metas: list[dict]
    features: dict[str, torch.Tensor]  # stream -> float32 [B, T_max, D], zero padded
    lengths: dict[str, torch.Tensor]  # stream -> int64 [B]
    target_ids: torch.Tensor  # int64 [B, L] tokenised targets (+ end token), pad_token_id padded
    target_mask: torch.Tensor  # bool [B, L]

    def to(self, device) -> "Batch":
        return Batch(self.keys, self.texts, self.metas, {k: v.to(device, non_blocking=True) for k, v in self.features.items()},
                     {k: v.to(device) for k, v in self.lengths.items()}, self.target_ids.to(device), self.target_mask.to(device))

    def __len__(self) -> int:
        return len(self.keys)


def pad_stream(arrays: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(a) for a in arrays], dtype=torch.long)
    width = arrays[0].shape[1]
    out = torch.zeros(len(arrays), max(1, int(lengths.max())), width, dtype=torch.float32)
    for i, a in enumerate(arrays):
        if len(a):
            out[i, : len(a)] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return out, lengths


def tokenize_targets(tokenizer, texts: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Target token ids with the tokenizer's end token, truncated on the right to ``max_tokens``."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max_tokens - 1]
        rows.append(ids + [eos])
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = True
    return ids, mask


def check_target_tokens(tokenizer, texts: list[str], split: str, tokenizer_name: str) -> float:
    """The share of the targets' characters (spaces aside) that ``tokenizer`` can only write as its unknown
    token. An English-only vocabulary (Flan-T5's SentencePiece) turns Chinese or other unseen scripts into
    ``<unk>``: the model would be trained to write ``<unk>`` and its decoded predictions scored as empty.
    Characters, not tokens, are counted: SentencePiece writes a whole run of unknown characters as one ``<unk>``
    after a ``▁``, so an all-Chinese target was 50 % unknown tokens. Refused above 50 %; a warning naming the
    missing characters above 1 %. Tokenizers without an unknown token (byte-level BPE, ByT5, Llama's byte
    fallback) pass. Returns the share."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not texts:
        return 0.0
    known: dict[str, bool] = {}  # character -> whether the tokenizer writes it without its unknown token
    total = 0
    missing: dict[str, int] = {}  # character it cannot write -> occurrences
    for text in texts:
        for ch in text:
            if ch.isspace():
                continue
            if ch not in known:
                known[ch] = unk not in tokenizer(ch, add_special_tokens=False)["input_ids"]
            total += 1
            if not known[ch]:
                missing[ch] = missing.get(ch, 0) + 1
    unknown = sum(missing.values())
    share = unknown / total if total else 0.0
    if share <= 0.01:
        return share
    seen = "".join(sorted(missing, key=lambda c: -missing[c])[:20])
    message = (f"split {split!r}: {share:.0%} of the targets' characters ({unknown} of {total}, {len(texts)} texts) can only be written as "
               f"the unknown token of the {tokenizer_name} tokenizer (most frequent: {seen!r}); ")
    if share > 0.5:
        raise SignfeatError(message + "the model would learn to write <unk>. Use an LLM whose vocabulary covers the targets' script "
                            "(google/mt5-*, Qwen, Llama), or llm.tokenizer=byt5 / bpe for a tiny model")
    print("warning: " + message + "those characters can never be predicted", file=sys.stderr)
    return share


class Collate:
    """Samples -> a Batch. ``require_text`` (training): a sample without a text is refused, never trained
    to translate into nothing (eval leaves such samples unscored instead)."""

    def __init__(self, tokenizer, streams: list[str], max_target_tokens: int, lowercase_targets: bool = False,
                 require_text: bool = False):
        self.tokenizer, self.streams = tokenizer, streams
        self.max_target_tokens, self.lowercase_targets, self.require_text = max_target_tokens, lowercase_targets, require_text

    def __call__(self, samples: list[dict[str, Any]]) -> Batch:
        if self.require_text:
            for s in samples:
                if not s["text"].strip():
                    raise SignfeatError(f"training sample {s['key']} ({s['meta'].get('id')!r}) has no text: a translation model "
                                        "needs a target for every training sample (leave such clips out of the training split; "
                                        "the manifest marks them missing_text)")
        features, lengths = {}, {}
        for name in self.streams:
            features[name], lengths[name] = pad_stream([s[name] for s in samples])
        texts = [s["text"] for s in samples]
        targets = [t.lower() for t in texts] if self.lowercase_targets else texts
        ids, mask = tokenize_targets(self.tokenizer, targets, self.max_target_tokens)
        return Batch([s["key"] for s in samples], texts, [s["meta"] for s in samples], features, lengths, ids, mask)


class _Batched(IterableDataset):
    """A ShardStream's samples grouped and collated inside the worker that read them. In training every
    worker holds whole batches only (``rank_pieces``), so ``drop_last`` drops nothing there."""

    def __init__(self, stream: ShardStream, collate: Collate, drop_last: bool):
        self.stream, self.collate, self.drop_last = stream, collate, drop_last

    def __iter__(self) -> Iterator["Batch | _WorkerError"]:
        group: list[dict] = []
        try:
            for sample in self.stream:
                group.append(sample)
                if len(group) == self.stream.batch_size:
                    yield self.collate(group)
                    group = []
            if group and not self.drop_last:
                yield self.collate(group)
        except SignfeatError as exc:  # handed over as a value: see batches()
            yield _WorkerError(str(exc))


@dataclass
class _WorkerError:
    """A SignfeatError raised in a DataLoader worker. Raised there, the DataLoader re-raises it in the main
    process with the worker's whole traceback as its message, which the CLI would print instead of one line."""

    message: str


def batches(dataset: ShardStream, collate: Collate, num_workers: int, *, drop_last: bool) -> Iterator[Batch]:
    """Padded batches, collated in the DataLoader workers, taken from the workers in turn (deterministic)."""
    # its own generator: a DataLoader iterator otherwise draws its base seed from the global torch RNG,
    # which would shift the dropout masks after every epoch boundary and break exact resume
    # workers reading an object store are started afresh, not forked: the S3 client that listed the shards runs
    # threads that a fork does not copy, and a forked worker can hang on its locks (as s3fs#369 reports)
    remote = num_workers and any(location.is_remote(u) for u in dataset.urls)
    loader = DataLoader(_Batched(dataset, collate, drop_last), batch_size=None, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0), persistent_workers=False,
                        prefetch_factor=4 if num_workers else None, multiprocessing_context="spawn" if remote else None)
    for item in loader:
        if isinstance(item, _WorkerError):
            raise SignfeatError(item.message)
        yield item


def read_split_texts(urls: list[str], limit: int | None = None) -> list[dict]:
    """The JSON of every sample of some shards (no arrays decoded), or of the first ``limit``: in-context
    example pools, the BPE tokenizer's training texts, the targets' token check."""
    out = []
    for url in urls:
        # a local tar is read seeking over the arrays (a local stream is a plain, seekable file); an object store's
        # front to back (a ranged request per member would cost more than the arrays' bytes)
        with location.open_stream(url) as f, tarfile.open(fileobj=f, mode="r|" if location.is_remote(url) else "r:") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".json"):
                    out.append(json.loads(tar.extractfile(member).read()))
                    if limit is not None and len(out) >= limit:
                        return out
    return out
