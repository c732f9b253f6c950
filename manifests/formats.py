"""Annotation formats -> manifest rows (before probing).

Each parser yields plain dicts with the manifest's annotation columns (id, dataset, split, signer, text,
source_kind, path, start_s, end_s, fps) plus ``status``/``error`` when the row itself is unusable (no
text, unparsable line). A bad row is yielded with its error, never skipped: every annotation row ends up
in the manifest.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import unicodedata
from pathlib import Path
from typing import Any, Iterator

from pipeline.errors import SignfeatError

FORMATS = ("auto", "phoenix", "how2sign", "csldaily", "table")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg")
PHOENIX_HEADER = ["name", "video", "start", "end", "speaker", "orth", "translation"]
HOW2SIGN_HEADER = ["VIDEO_ID", "VIDEO_NAME", "SENTENCE_ID", "SENTENCE_NAME", "START_REALIGNED", "END_REALIGNED", "SENTENCE"]
PHOENIX_FRAMES_DIR = Path("features") / "fullFrame-210x260px"
CSLDAILY_FRAMES_DIR = Path("sentence") / "frames_512x512"
CSLDAILY_SPLIT_FILE = "split_1.txt"
CSLDAILY_FPS = 30.0  # CSL-Daily's recordings are 30 fps; the release ships their frames as JPEG folders
# Split names are normalised so every corpus uses the same three words.
SPLIT_ALIASES = {"train": "train", "training": "train", "dev": "dev", "val": "dev", "valid": "dev", "validation": "dev", "test": "test",
                 "testing": "test"}


def normalise_split(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    return SPLIT_ALIASES.get(text.lower(), text)


def misspelt_split(value: str | None) -> str | None:
    """The split word a table's split value reads as a typo of (``tset`` -> test), else None. Such a row would be
    extracted into a split of its own that training and evaluation never read. A typo here is one letter swapped
    with its neighbour, left out or doubled/added, keeping the first letter (``trian``, ``tst``, ``validaton``,
    ``testt``); words such as ``rain``, ``text``, ``rest``, ``calibration`` or ``test_unseen`` are splits of
    the user's own and pass."""
    word = (value or "").lower()
    if len(word) < 3 or not word.isalpha() or word in SPLIT_ALIASES:
        return None
    for alias, split in SPLIT_ALIASES.items():
        if len(alias) >= 3 and word[0] == alias[0] and _one_typo(word, alias):
            return split
    return None


def _one_typo(word: str, alias: str) -> bool:
    """``word`` is ``alias`` with two neighbouring letters swapped, one letter left out, or one added."""
    if len(word) == len(alias):
        diff = [i for i in range(len(word)) if word[i] != alias[i]]
        return len(diff) == 2 and diff[1] == diff[0] + 1 and word[diff[0]] == alias[diff[1]] and word[diff[1]] == alias[diff[0]]
    short, long = sorted((word, alias), key=len)
    return len(long) - len(short) == 1 and any(long[:i] + long[i + 1:] == short for i in range(len(long)))


def _name_tokens(name: str) -> list[str]:
    """The words of a file name (``PHOENIX-2014-T.dev.corpus`` -> PHOENIX, 2014, T, dev, corpus)."""
    return [t for t in re.split(r"[._\-]", name) if t]


def _split_from_filename(path: Path) -> str | None:
    for token in _name_tokens(path.name.lower()):
        if token in SPLIT_ALIASES:
            return SPLIT_ALIASES[token]
    return None


def _misspelt_split_in_filename(path: Path) -> tuple[str, str] | None:
    """(word, split) when a word of the file name reads as a typo of a split word (``corpus_tset.csv``) and no
    word is a split word itself."""
    if _split_from_filename(path) is not None:
        return None
    for token in _name_tokens(path.name.lower()):
        meant = misspelt_split(token)
        if meant:
            return token, meant
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def _as_on_disk(path: Path, listings: dict[Path, dict[str, list[str]]] | None = None) -> Path:
    """``path``, or the one path on disk that differs from it only in Unicode normalisation: "Müller" typed (NFC)
    and a file name macOS wrote (NFD) look the same, but a Linux file system holds other bytes, and the row was a
    bare "no such file". ``listings``: folder -> NFC name -> names, a cache for one annotation file's rows. A
    ValueError when several names there differ from it only in normalisation."""
    if os.path.lexists(path):
        return path
    listings = {} if listings is None else listings
    here, parts = (Path(path.anchor), path.parts[1:]) if path.anchor else (Path("."), path.parts)
    for part in parts:
        step = here / part
        if not os.path.lexists(step):
            if here not in listings:
                try:
                    names = os.listdir(here)
                except OSError:
                    return path
                listings[here] = {}
                for name in names:
                    listings[here].setdefault(_nfc(name), []).append(name)
            same = listings[here].get(_nfc(part), [])
            if len(same) > 1:  # "Jürgén" typed in a third form: which of them is meant cannot be told
                raise ValueError(f"no {step}, but {len(same)} names in {here} differ from {part!r} only in Unicode normalisation "
                                 f"({', '.join(ascii(n) for n in sorted(same))}): write the one meant byte for byte")
            if not same:
                return path
            step = here / same[0]
        here = step
    return here


_FILLERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")  # Hangul fillers and the blank Braille cell: letters that show nothing
_BLACK_FLAG = "\U0001F3F4"  # a subdivision flag: the black flag, then tag characters (U+E0020-E007F), e.g. England's


def _shows_something(char: str) -> bool:
    return not (char.isspace() or char in _FILLERS or unicodedata.category(char) in ("Cf", "Mn", "Me", "Cc"))


def _trimmed_at_an_end(char: str) -> bool:
    """Whitespace, fillers and invisible format characters (zero-width space and joiners, direction marks and
    isolates, soft hyphen, a stray BOM...) mean nothing at a text's ends."""
    return char.isspace() or char in _FILLERS or unicodedata.category(char) == "Cf"


def _is_tag(char: str) -> bool:
    return "\U000E0020" <= char <= "\U000E007F"


def _sentence(value: Any) -> str | None:
    """A clip's text without whitespace or invisible characters at either end; None when no character of it
    shows anything ("\u200b" or a Hangul filler passed as a text, and a model would be taught to answer with
    nothing visible). A flag's tag characters at the end stay (the black flag and its tags are England's flag);
    variation selectors are not format characters and stay (U+FE0F after a heart makes it red)."""
    if value is None:
        return None
    text = str(value)
    start, end = 0, len(text)
    while start < end and _trimmed_at_an_end(text[start]):
        start += 1
    while end > start and _trimmed_at_an_end(text[end - 1]):
        if _is_tag(text[end - 1]):
            first = end - 1
            while first > start and _is_tag(text[first - 1]):
                first -= 1
            if first > start and text[first - 1] == _BLACK_FLAG:
                break
        end -= 1
    text = text[start:end]
    return text if any(_shows_something(c) for c in text) else None


def _clip_id(value: Any) -> str | None:
    """A table's id exactly as written (the id users join on afterwards: " x" and "x\u00a0" are not "x"), or
    None when there is none. A JSON number must be whole: 1e5 or true would become "100000.0" or "True"."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (bool, float)):  # JSON true, 1e5, 7.0: their Python text is not what the file says
        raise ValueError(f"id {json.dumps(value)}: a JSON {'true/false' if isinstance(value, bool) else 'number with a fraction or exponent'}; "
                         "write the id as a string")
    return str(value)


def _float(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):  # JSON's true is no number of seconds (float(True) == 1.0)
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _row(**kw: Any) -> dict[str, Any]:
    row = {"status": None, "error": None, "start_s": None, "end_s": None, "fps": None, "signer": None}
    row.update(kw)
    if row.get("status") is None and row.get("text") is None:
        row["status"], row["error"] = "missing_text", "the annotation gives no text for this clip"
    return row


def _bad_row(source: Path, line: int, message: str, clip_id: str | None = None, **kw: Any) -> dict[str, Any]:
    return _row(
        _where=f"{source}:{line}",
        id=clip_id or f"{source.name}:{line}",
        text=None,
        source_kind=kw.pop("source_kind", "video"),
        path=kw.pop("path", ""),
        status="bad_annotation",
        error=f"{source}:{line}: {message}",
        **kw,
    )


def sniff_format(path: Path) -> str:
    if path.suffix.lower() == ".parquet":
        return "table"
    with open(path, "rb") as f:
        if path.suffix.lower() in (".pkl", ".pickle") or f.read(1) == b"\x80":  # a pickle (protocol 2+ starts with 0x80)
            return "csldaily"
    first = _first_line(path)
    if first.split("|")[:5] == PHOENIX_HEADER[:5]:
        return "phoenix"
    if "SENTENCE_NAME" in first and "START_REALIGNED" in first:
        return "how2sign"
    return "table"


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        return f.readline().strip()


# ----------------------------------------------------------------------------------------------- PHOENIX-2014T


def phoenix_root(root: Path, annotation: Path | None = None) -> Path:
    """The folder holding ``features/``: the given root, or one of its parents, or a PHOENIX-2014-T child, or
    the release folder the corpus file lies in (``PHOENIX-2014-T/annotations/manual/``: a build mixing corpora
    has one --root above them all, and the release unpacks as PHOENIX-2014-T-release-v3/PHOENIX-2014-T)."""
    beside = [annotation.resolve().parents[i] for i in range(min(3, len(annotation.resolve().parents)))] if annotation else []
    for cand in [root, *root.parents, root / "PHOENIX-2014-T", *beside]:
        if (cand / PHOENIX_FRAMES_DIR).is_dir():
            return cand
    return root


def parse_phoenix(annotation: Path, root: Path, dataset: str | None = None, **_: Any) -> Iterator[dict[str, Any]]:
    split = _split_from_filename(annotation)
    base = phoenix_root(root, annotation) / PHOENIX_FRAMES_DIR
    listings: dict[Path, dict[str, list[str]]] = {}
    with open(annotation, encoding="utf-8-sig", newline="") as f:
        header = f.readline().rstrip("\r\n").split("|")
        if header[: len(PHOENIX_HEADER)] != PHOENIX_HEADER:
            raise SignfeatError(f"{annotation}: not a PHOENIX-2014T corpus file (header {'|'.join(header)!r})")
        for line_no, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("|")
            if len(cols) > len(PHOENIX_HEADER) and PHOENIX_HEADER[-1] == "translation":  # a '|' inside the translation
                cols = [*cols[: len(PHOENIX_HEADER) - 1], "|".join(cols[len(PHOENIX_HEADER) - 1 :])]
            if len(cols) != len(PHOENIX_HEADER):
                yield _bad_row(annotation, line_no, f"expected {len(PHOENIX_HEADER)} '|'-separated fields, got {len(cols)}",
                               clip_id=cols[0].strip() or None, dataset=dataset or "phoenix2014t", split=split, source_kind="frames")
                continue
            rec = dict(zip(PHOENIX_HEADER, cols))
            if not rec["name"].strip():
                yield _bad_row(annotation, line_no, "no name (the clip id)", dataset=dataset or "phoenix2014t", split=split, source_kind="frames")
                continue
            try:
                folder = _phoenix_folder(base / (split or ""), rec["video"], rec["name"].strip(), listings)
            except ValueError as exc:
                yield _bad_row(annotation, line_no, str(exc), clip_id=rec["name"].strip(), dataset=dataset or "phoenix2014t",
                               split=split, source_kind="frames")
                continue
            yield _row(
                _where=f"{annotation}:{line_no}",
                id=rec["name"].strip(),
                dataset=dataset or "phoenix2014t",
                split=split,
                signer=_text(rec["speaker"]),
                text=_sentence(rec["translation"]),
                source_kind="frames",
                path=str(folder),
                fps=25.0,
            )


def _phoenix_folder(split_dir: Path, video: str, name: str, listings: dict[Path, dict[str, list[str]]] | None = None) -> Path:
    """The frame folder of a PHOENIX row. ``video`` is like ``NAME/1/*.png``: the folder is everything before the
    glob; but PHOENIX-2014-T's release keeps the frames in ``NAME/`` itself (``NAME/images0001.png``: no ``1/``,
    which only the older PHOENIX-2014 layout has), so a missing ``NAME/1`` falls back to ``NAME``."""
    folder = _as_on_disk(split_dir / (video.split("*")[0].rstrip("/") or name), listings)
    if not folder.is_dir() and folder.name == "1":
        parent = _as_on_disk(folder.parent, listings)
        if parent.is_dir():
            return parent
    return folder


# ----------------------------------------------------------------------------------------------- How2Sign


def _walk(root: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk in sorted order, following symlinked folders (a shared dataset linked into a project) and visiting
    each real folder once (no cycles). The caller may prune ``dirs`` in place."""
    seen: set[str] = set()
    for dirpath, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        yield dirpath, dirs, files


def index_videos(root: Path) -> dict[str, list[str]]:
    """Stem -> paths of the videos under root with that stem, in sorted walk order, not the file system's
    listing order, which differs between machines (one walk, shared by all annotation files of a build)."""
    found: dict[str, list[str]] = {}
    seen: set[tuple] = set()
    for dirpath, _dirs, files in _walk(root):
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_EXTENSIONS:  # keyed by the NFC name: a macOS (NFD) file name and a typed one match
                _add_once(found, seen, _nfc(stem), os.path.join(dirpath, name))
    return found


def _add_once(found: dict[str, list[str]], seen: set[tuple], name: str, path: str) -> None:
    """``path`` under ``name``, unless a path already there is the same file or folder: a video linked into
    raw_videos/ (symbolically or hard) from a shared store that also lies under the root is one video, not two.
    ``seen`` holds the identities added so far (one stat per path: comparing each path with every earlier one of its
    name took hours for 100k folders that each hold a video.mp4)."""
    identity = (name, *_file_identity(path))
    if identity not in seen:
        seen.add(identity)
        found.setdefault(name, []).append(path)


def _file_identity(path: str) -> tuple:
    """One file or folder under two paths, a symbolic or a hard link, has one identity: its device and inode."""
    try:
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:  # a dangling link
        return ("path", os.path.realpath(path))


def _only_one(videos: dict[str, list[str]], stem: str, what: str = "videos", role: str = "") -> str | None:
    """The one video (or folder) named ``stem`` under the root, or None; a ValueError naming them when there are several (a
    sentence clip next to OpenPose's rendering of it, features/openpose_output/video/NAME.mp4; a CSL-Daily frame
    folder next to a hand-crop folder of the same name: picking one by sort order read the wrong pictures)."""
    found = videos.get(_nfc(stem)) or []
    if len(found) > 1:
        def name(path: str) -> str:
            base = os.path.basename(path)
            return os.path.splitext(base)[0] if what == "videos" else base

        exact = [p for p in found if name(p) == stem]  # byte for byte: a name in NFC and another in NFD both exist
        if len(exact) == 1:
            return exact[0]
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        forms = " (their names differ only in Unicode normalisation)" if len({name(p) for p in found}) > 1 else ""
        raise ValueError(f"{len(found)} {what} named {stem}{'.*' if what == 'videos' else ''}{role} under --root ({shown}){forms}; "
                         "give a --root that holds only one of them")
    return found[0] if found else None


def parse_how2sign(annotation: Path, root: Path, dataset: str | None = None, video_index: dict[str, list[str]] | None = None,
                   **_: Any) -> Iterator[dict[str, Any]]:
    split = _split_from_filename(annotation)
    videos = video_index if video_index is not None else index_videos(root)
    with open(annotation, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[: len(HOW2SIGN_HEADER)]] != HOW2SIGN_HEADER:
            raise SignfeatError(f"{annotation}: not a How2Sign realigned file (expected a tab-separated header {' '.join(HOW2SIGN_HEADER)})")
        names = [h.strip() for h in header]  # the seven columns, then any a user added
        for cols in reader:
            line_no = reader.line_num
            if not any(c.strip() for c in cols):
                continue
            if len(cols) > len(names) and names[-1] == "SENTENCE":  # a tab inside the sentence (TSV has no quoting)
                cols = [*cols[: len(names) - 1], "\t".join(cols[len(names) - 1 :])]
            if len(cols) != len(names):
                yield _bad_row(annotation, line_no, f"expected {len(names)} tab-separated fields, got {len(cols)}",
                               clip_id=cols[3].strip() or None if len(cols) > 3 else None, dataset=dataset or "how2sign", split=split)
                continue
            rec = dict(zip(names, cols))
            name = rec["SENTENCE_NAME"].strip()
            if not name:
                yield _bad_row(annotation, line_no, "no SENTENCE_NAME (the clip id)", dataset=dataset or "how2sign", split=split)
                continue
            common = dict(id=name, dataset=dataset or "how2sign", split=split, text=_sentence(rec["SENTENCE"]), _where=f"{annotation}:{line_no}")
            try:
                clip = _only_one(videos, name)
                raw_video = (_only_one(videos, rec["VIDEO_NAME"].strip(), role=" (this sentence's raw video)")
                             or str(root / f"{rec['VIDEO_NAME'].strip()}.mp4"))  # missing: the probe says
            except ValueError as exc:
                yield _row(source_kind="video", path="", status="bad_annotation", error=f"{annotation}:{line_no}: {exc}", **common)
                continue
            if clip:  # the sentence-level clip exists: used whole, its raw video named as its source (one split)
                yield _row(source_kind="video", path=clip, source=raw_video, **common)
                continue
            try:
                start, end = float(rec["START_REALIGNED"]), float(rec["END_REALIGNED"])
            except ValueError:
                yield _bad_row(annotation, line_no, f"bad START/END {rec['START_REALIGNED']!r} {rec['END_REALIGNED']!r}", clip_id=name,
                               dataset=dataset or "how2sign", split=split, source_kind="range")
                continue
            yield _row(source_kind="range", path=raw_video, start_s=start, end_s=end, **common)


# ----------------------------------------------------------------------------------------------- CSL-Daily


def index_folders(root: Path, names: set[str]) -> dict[str, list[str]]:
    """Name -> paths of the folders under root named as one of ``names``, in sorted walk order (a matching folder
    is not descended into, so a corpus of 20k frame folders is one listing of their parent)."""
    found: dict[str, list[str]] = {}
    seen: set[tuple] = set()
    wanted = {_nfc(n) for n in names}  # keyed by the NFC name, as index_videos
    for dirpath, dirs, _files in _walk(root):
        for name in [d for d in dirs if _nfc(d) in wanted]:
            _add_once(found, seen, _nfc(name), os.path.join(dirpath, name))
        dirs[:] = [d for d in dirs if _nfc(d) not in wanted]
    return found


def _csldaily_splits(split_file: Path) -> dict[str, str]:
    """``name|split`` lines of CSL-Daily's ``split_1.txt`` (header ``name|split``) -> name -> train/dev/test."""
    with open(split_file, encoding="utf-8-sig", newline="") as f:
        header = f.readline().rstrip("\r\n").split("|")
        if [h.strip() for h in header] != ["name", "split"]:
            raise SignfeatError(f"{split_file}: not a CSL-Daily split file (expected the header 'name|split', got {'|'.join(header)!r})")
        splits = {}
        for line_no, line in enumerate(f, start=2):
            if not line.strip():
                continue
            cols = [c.strip() for c in line.rstrip("\r\n").split("|")]
            if len(cols) != 2 or not cols[0] or not cols[1]:
                raise SignfeatError(f"{split_file}:{line_no}: expected 'name|split', got {line.strip()!r}")
            splits[cols[0]] = normalise_split(cols[1])
    return splits


def _python2_utf8(value: Any) -> Any:
    """A Python 2 ``str`` (UTF-8 bytes) comes out of a latin1-decoded pickle as one character per byte
    (``ä»`` for 今): its bytes decoded as UTF-8. Text that is not such bytes is returned as it is."""
    if isinstance(value, str) and any(ord(c) > 0x7F for c in value) and all(ord(c) < 0x100 for c in value):
        try:
            return value.encode("latin1").decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def parse_csldaily(annotation: Path, root: Path, dataset: str | None = None, **_: Any) -> Iterator[dict[str, Any]]:
    """CSL-Daily's ``sentence_label/csl2020ct_v2.pkl``: a dict whose ``info`` lists one dict per sentence
    (``name``, ``length``, ``label_char``, ``label_word``, ``label_gloss``, ``signer``...). Text = the
    characters joined (the sentence as written: Chinese has no spaces between words); the split comes from
    ``split_1.txt`` beside the pickle (rows it does not name get none, and curation draws one); frames are the
    folder named as the sentence under ``--root`` (the release's ``sentence/frames_512x512/NAME/``; with none
    there, the release folder the pickle lies in), at 30 fps.
    The pickle is read with restricted globals (plain containers only): nothing in it can run."""
    from motion.params_io import safe_load_pickle  # lazy: numpy only, but manifests need it for this format alone

    try:
        data = safe_load_pickle(annotation)
    except SignfeatError as exc:
        raise SignfeatError(f"{annotation}: {exc}") from None
    info = data.get("info") if isinstance(data, dict) else None
    if not isinstance(info, list):
        raise SignfeatError(f"{annotation}: not a CSL-Daily annotation file (expected a dict with an 'info' list, "
                            f"got {type(data).__name__}{' with keys ' + ', '.join(map(str, list(data)[:6])) if isinstance(data, dict) else ''})")
    split_file = annotation.parent / CSLDAILY_SPLIT_FILE
    splits = _csldaily_splits(split_file) if split_file.is_file() else {}
    dataset = dataset or "csldaily"
    names = {str(item["name"]).strip() for item in info if isinstance(item, dict) and item.get("name") is not None}
    folders = index_folders(root, names)
    release = annotation.resolve().parent.parent  # sentence_label/..: the default --root is the pickle's own folder
    if not folders and (release / CSLDAILY_FRAMES_DIR).is_dir():
        root, folders = release, index_folders(release / CSLDAILY_FRAMES_DIR, names)
    for i, item in enumerate(info):
        if not isinstance(item, dict) or not str(item.get("name") or "").strip():
            yield _bad_row(annotation, i, f"info[{i}] is not a dict with a 'name'", dataset=dataset, source_kind="frames")
            continue
        name = str(item["name"]).strip()
        try:
            folder = _only_one(folders, name, what="folders")
        except ValueError as exc:
            yield _bad_row(annotation, i, str(exc), clip_id=name, dataset=dataset, split=splits.get(name), source_kind="frames")
            continue
        chars = item.get("label_char") or item.get("label_word")
        if isinstance(chars, (list, tuple)):
            chars = [_python2_utf8(c) for c in chars]
        if chars is not None and not (isinstance(chars, (list, tuple)) and all(isinstance(c, str) for c in chars)):
            yield _bad_row(annotation, i, f"info[{i}] ({name}): label_char must be a list of strings, got {type(chars).__name__}",
                           clip_id=name, dataset=dataset, split=splits.get(name), source_kind="frames")
            continue
        signer = item.get("signer")
        yield _row(
            id=name,
            dataset=dataset,
            split=splits.get(name),
            signer=None if signer is None else str(signer),
            text=_sentence("".join(chars)) if chars else None,
            source_kind="frames",
            path=folder or str(root / CSLDAILY_FRAMES_DIR / name),  # missing: the probe reports it
            fps=CSLDAILY_FPS,
        )


# ----------------------------------------------------------------------------------------------- generic table

TABLE_REQUIRED = ("id", "path", "text")
TABLE_OPTIONAL = ("split", "signer", "start", "end", "fps", "dataset", "source_kind", "source")
# other spellings of a table column: read as nothing, a range became its whole video and a split was dropped
_COLUMN_ALIASES = {"start_s": "start", "end_s": "end", "start_time": "start", "end_time": "end", "begin": "start", "stop": "end",
                   "speaker": "signer", "sentence": "text", "translation": "text", "video": "path", "file": "path"}


def _misspelled_columns(names: Any) -> list[str]:
    """``"'Start' (meant: start)"`` for each column that is another spelling of one the table reads."""
    known = set(TABLE_REQUIRED + TABLE_OPTIONAL)
    out = []
    for name in names or []:
        if not isinstance(name, str) or name in known:
            continue
        folded = name.strip().lower()
        meant = folded if folded in known else _COLUMN_ALIASES.get(folded)
        if meant is not None and meant not in (names or []):
            out.append(f"{name!r} (meant: {meant})")
    return out


def _table_kind(given: str | None, path: Path, start: float | None, end: float | None) -> str:
    """A table row's source_kind: the ``source_kind`` column when given, else inferred from the path: SMPL-X
    parameters (a .pkl/.npz/.npy file or a folder of per-frame parameter files), a frame folder, a range, a video.
    Raises ValueError for a kind that is not one, or a time range on parameters."""
    from manifests.schema import PARAMS_KIND, SOURCE_KINDS
    from motion.params_io import is_params_path

    if given is not None:
        kind = given.lower()
        if kind not in SOURCE_KINDS:
            raise ValueError(f"source_kind {given!r} is not one of {', '.join(SOURCE_KINDS)}")
        if kind == "range" and start is None and end is None:
            raise ValueError("source_kind range needs start and/or end")
    elif is_params_path(path):
        kind = PARAMS_KIND
    elif path.is_dir():
        kind = "frames"
    elif start is not None or end is not None:
        kind = "range"
    else:
        kind = "video"
    if start is not None or end is not None:  # a time range is only ever applied to a range row: never drop it silently
        if kind == PARAMS_KIND:
            raise ValueError("start/end cut videos; an SMPL-X parameters clip (source_kind smplx) takes the whole file")
        if kind == "frames":
            raise ValueError("start/end cut videos; a frame folder is one whole clip (put the clip's frames in a folder of their own)")
        if kind == "video":
            raise ValueError("source_kind video takes the whole file; a row with start/end is source_kind range")
    return kind


def _table_header_problems(annotation: Path, names: list[str]) -> None:
    """A table whose header lacks a column it needs, or names one the table reads in another spelling: refused."""
    missing = [c for c in TABLE_REQUIRED if c not in names]
    if missing:
        raise SignfeatError(f"{annotation}: table annotations need columns {list(TABLE_REQUIRED)}; missing {missing} (found {names})")
    misspelled = _misspelled_columns(names)
    if misspelled:
        raise SignfeatError(f"{annotation}: column(s) {', '.join(misspelled)} would be ignored; the table reads "
                            f"{list(TABLE_REQUIRED + TABLE_OPTIONAL)} (rename them)")


def _parquet_records(annotation: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """A Parquet table's rows, numbered from 1, read batch by batch. Values Parquet types beyond JSON's (dates,
    decimals, binary) are given as text, as a CSV would hold them."""
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(annotation)
    except Exception as exc:  # pyarrow's ArrowInvalid / OSError: not Parquet, or cut off
        raise SignfeatError(f"{annotation}: not a readable Parquet file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    _table_header_problems(annotation, table.schema_arrow.names)

    def plain(value: Any) -> Any:
        if value is None or isinstance(value, (str, bool, int, float, list, dict)):
            return value
        if isinstance(value, bytes):
            return value.decode("utf-8", "backslashreplace")
        return str(value)

    number = 0
    for batch in table.iter_batches(batch_size=8192):
        for rec in batch.to_pylist():
            number += 1
            yield number, _checked_record({k: plain(v) for k, v in rec.items()})


def _table_records(annotation: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    suffix = annotation.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet_records(annotation)
        return
    if suffix == ".json":  # a JSON array of records (or one object); JSON lines otherwise, as .jsonl
        text = annotation.read_text(encoding="utf-8-sig")
        try:
            whole = json.loads(text)
        except ValueError as exc:
            if text.lstrip().startswith("["):  # an array with a syntax error: one error naming where, not one per line
                raise SignfeatError(f"{annotation}: not valid JSON ({exc}); a .json annotation file is an array of records") from None
            whole = None
        if isinstance(whole, dict) and not ({"id", "path"} & set(whole)):
            lists = [k for k, v in whole.items() if isinstance(v, list)]
            raise SignfeatError(f"{annotation}: a JSON object without id/path; a .json annotation file is an array of records, or one record"
                                + (f" (are the records under {lists[0]!r}? give that array as the file)" if lists else ""))
        if isinstance(whole, list) and whole and all(isinstance(r, dict) and not ({"id", "path"} & set(r)) for r in whole):
            nested = sorted({k for r in whole for k, v in r.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)})
            if nested:  # WLASL: [{"gloss": ..., "instances": [{video_id, frame_start, ...}]}]: one "no id" row per gloss
                raise SignfeatError(f"{annotation}: its records have no id/path and hold lists of records ({nested[0]!r}); a .json "
                                    "annotation file holds one record per clip: flatten them first (README, 'Other corpora')")
        if isinstance(whole, (list, dict)):
            for number, rec in enumerate(whole if isinstance(whole, list) else [whole], start=1):  # record N, not a line
                yield number, _checked_record(rec) if isinstance(rec, dict) else {"__error__": f"record {number} is not a JSON object"}
            return
    if suffix in (".jsonl", ".json", ".ndjson"):
        with open(annotation, encoding="utf-8-sig") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    if not isinstance(rec, dict):
                        raise ValueError("a line must hold one JSON object")
                except ValueError as exc:
                    yield line_no, {"__error__": f"bad JSON line: {exc}"}
                    continue
                yield line_no, _checked_record(rec)
        return
    # CSV is RFC 4180 (quoted fields may hold commas, quotes, newlines); TSV is IANA text/tab-separated-values: no
    # quoting, a field holds no tab or newline, so a quote is a character of the text (a text starting with '"'
    # must not swallow the rows after it until the next quote)
    tsv = suffix in (".tsv", ".tab")
    # an unclosed quote swallows the rest of the file into one field: past csv's 128 KiB limit that was a _csv.Error
    # traceback instead of the row's bad_annotation (_swallowed_rows)
    csv.field_size_limit(2**31 - 1)
    with open(annotation, encoding="utf-8-sig", newline="") as f:
        lines = list(f)  # as csv reads them (newline=""): a row after an unclosed quote is read again from its line
    dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tsv else {"delimiter": ","}
    header = csv.reader(iter(lines), **dialect)
    fieldnames = next(header, None)
    if not fieldnames:
        raise SignfeatError(f"{annotation}: the file is empty; a table annotation starts with a header naming its columns "
                            f"({', '.join(TABLE_REQUIRED)}, and any of {', '.join(TABLE_OPTIONAL)})")
    _table_header_problems(annotation, list(fieldnames))
    start = header.line_num  # lines before the rows: the header's (a quoted header name may span lines)
    while start is not None:
        reader = csv.DictReader(iter(lines[start:]), fieldnames=fieldnames, **dialect)
        ended, restart = 0, None  # ended: the previous row's last line, counted from lines[start]
        for rec in reader:
            # the line the row starts on (reader.line_num is where it ends: a quoted field may hold line breaks): the
            # first line after the previous row that is not blank (DictReader skips blank lines)
            line = start + ended + 1
            while line <= len(lines) and not lines[line - 1].rstrip("\r\n"):
                line += 1
            ended = reader.line_num
            # first: an unclosed quote that ends at a later quoted field ("quoted, with comma") also leaves the row
            # with more fields than the header, and that message hid the rows the quote swallowed
            swallowed = None if tsv else _swallowed_rows({k: v for k, v in rec.items() if k is not None}, len(fieldnames))
            raw = "".join(lines[line - 1:]) if start + ended >= len(lines) else ""
            if not tsv and not swallowed and raw and any(rec.get(k) is None for k in fieldnames) and raw.count('"') % 2 \
                    and re.search(r'(^|,)"', raw):  # a field that opens with a quote (6" tall, unquoted, is a text)
                # the file's last row, short of fields, with an odd number of quotes: a quote that ran to the end of
                # the file, taking the row's other fields into its text (the row was ok, its split None)
                yield line, {"__error__": "an unclosed quote runs to the end of the file, taking the row's other fields into "
                                          "one (close it)", "id": _id_on_line(lines[line - 1], fieldnames)}
                continue
            if swallowed:
                yield line, {"__error__": f"field {swallowed[0]!r} runs over {swallowed[1]} more line(s) shaped as rows of this "
                                          "table: an unclosed quote? (close it; the rows after it are read from the next line on)",
                             "id": _id_on_line(lines[line - 1], fieldnames)}
                restart = line  # the rows it swallowed are read again, from the line after the one it opens on
                break
            if None in rec:
                yield line, {"__error__": f"more fields than the header has: {rec[None]!r}", "id": rec.get("id")}
                continue
            yield line, rec
        start = restart


def _checked_record(rec: dict[str, Any]) -> dict[str, Any]:
    """A JSON record, or an error record for one the manifest cannot hold: a string with a lone UTF-16 surrogate
    (an emoji cut in half: JSON allows "\\ud83d", UTF-8 cannot store it; the build crashed at the end), or a
    key that is another spelling of a column the table reads."""
    for key, value in rec.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                safe = {k: v.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(v, str) else v for k, v in rec.items()}
                return {**safe, "__error__": f"{key}: not valid Unicode ({safe[key][:60]!r}: a lone surrogate, a character cut in half?)"}
    misspelled = _misspelled_columns(list(rec))
    if misspelled:
        return {**rec, "__error__": f"key(s) {', '.join(misspelled)} would be ignored; rename them"}
    return rec


def _id_on_line(line: str, fieldnames: list[str]) -> str | None:
    """The id a row with an unclosed quote has on its own line (the parsed row's id field may hold other rows' text
    when the quote is in the id column or before it), its quote marks taken off."""
    if "id" not in fieldnames:
        return None
    fields = next(csv.reader([line.rstrip("\r\n")], quoting=csv.QUOTE_NONE), [])
    index = fieldnames.index("id")
    return fields[index].strip('"') if index < len(fields) else None


def _swallowed_rows(rec: dict[str, Any], width: int) -> tuple[str, int] | None:
    """(column, lines) when a quoted field holds lines that each parse as a whole row of the table: a text
    with an unclosed quote swallows the rows after it into itself (RFC 4180 lets a quoted field hold newlines,
    so only lines shaped like rows count)."""
    def fields(line: str) -> int:
        return len(next(csv.reader([line]), []))

    for column, value in rec.items():
        if isinstance(value, str) and "\n" in value:
            # the row's own line must end as a whole row would: its first line holds this field and the ones after
            # it (a text's first line "Hello, friend." does not, for a field with two after it)
            after = len(rec) - list(rec).index(column) - 1
            if fields(value.splitlines()[0]) != after + 1:
                continue
            lines = [line for line in value.splitlines()[1:] if line.strip()]
            rows = sum(1 for line in lines if fields(line) == width)
            # every later line a row; or, when it ran on for rows, all but the last (the rest of the row with the
            # quote that closed it). A quoted text whose lines only sometimes hold enough commas stays a text.
            if rows and (rows == len(lines) or (rows >= 2 and rows >= len(lines) - 1)):
                return column, rows
            # or every line between is a row (none, for two unclosed quotes on consecutive lines) and the last one,
            # with the fields read after this one, makes a whole row: the start of the row whose quote closed this
            # one ("c3,clip.mp4,rain" + "train", "S1"). A text whose lines hold commas in all these numbers is rare.
            if after and rows == len(lines) - 1 and fields(lines[-1]) + after == width:
                return column, len(lines)
    return None


def _table_dataset(annotation: Path) -> str:
    """A table's default dataset: its file name without a split word (``corpus_train.csv`` and ``corpus_test.csv``
    are one dataset, so curation keeps their signers apart), or its folder's name when nothing else is left."""
    tokens = [t for t in _name_tokens(annotation.stem) if t.lower() not in SPLIT_ALIASES]
    return "_".join(tokens) or annotation.parent.name or annotation.stem


def _under(root: Path, written: str) -> Path:
    path = Path(written).expanduser()
    return path if path.is_absolute() else root / path


def _table_source(source: str | None, root: Path) -> str | None:
    """A table's ``source`` as written (a YouTube id...), or, when it names a file or folder (under ``--root``,
    or absolute), that path made absolute as ``path`` is: a range's unit is its absolute video path, and a
    relative spelling of the same video would be another unit."""
    if source is None:
        return None
    candidate = _under(root, source)
    return str(candidate.absolute()) if candidate.exists() else source


def parse_table(annotation: Path, root: Path, dataset: str | None = None, **_: Any) -> Iterator[dict[str, Any]]:
    default_dataset = dataset or _table_dataset(annotation)
    # rows without a split column take the file name's split word, as PHOENIX and How2Sign files do: train.csv
    # and test.csv were reassigned at random by curation (8 of 10 test rows went to train)
    file_split = _split_from_filename(annotation)
    file_typo = _misspelt_split_in_filename(annotation)
    listings: dict[Path, dict[str, list[str]]] = {}
    for line_no, rec in _table_records(annotation):
        try:
            clip_id = _clip_id(rec.get("id"))
        except ValueError as exc:
            yield _bad_row(annotation, line_no, str(exc), clip_id=None, dataset=default_dataset)
            continue
        nested = [c for c in TABLE_REQUIRED + TABLE_OPTIONAL if isinstance(rec.get(c), (list, dict))]  # other keys are not read
        if nested and "__error__" not in rec:  # a JSON line's list/object would become its Python repr as text or path
            rec = {"__error__": f"{', '.join(map(str, nested))}: expected a string or number, got a JSON list/object"}
        if "__error__" in rec or clip_id is None:
            yield _bad_row(annotation, line_no, rec.get("__error__", "no id"), clip_id=clip_id, dataset=default_dataset)
            continue
        raw_path = _text(rec.get("path"))
        if raw_path is None:
            yield _bad_row(annotation, line_no, "no path", clip_id=clip_id, dataset=default_dataset)
            continue
        path = _under(root, raw_path)
        written = rec.get("path")
        if isinstance(written, str) and written.strip() != written and not os.path.lexists(path):
            as_written = _under(root, written)  # a file whose own name starts or ends with a space (the field was trimmed)
            path = as_written if os.path.lexists(as_written) else path
        try:
            path = _as_on_disk(path, listings)
        except ValueError as exc:
            yield _bad_row(annotation, line_no, str(exc), clip_id=clip_id, dataset=default_dataset, path=str(path))
            continue
        try:
            start, end, fps = _float(rec.get("start")), _float(rec.get("end")), _float(rec.get("fps"))
        except (TypeError, ValueError) as exc:
            yield _bad_row(annotation, line_no, f"bad start/end/fps: {exc}", clip_id=clip_id, dataset=default_dataset, path=str(path))
            continue
        if fps is not None and not (math.isfinite(fps) and fps > 0):
            # "nan", "inf", 0 or a negative rate would become a frame folder's time base (negative or NaN
            # durations and fps in the manifest and the shards), so the row is unusable as written
            yield _bad_row(annotation, line_no, f"fps must be a positive number, got {rec.get('fps')!r}", clip_id=clip_id, dataset=default_dataset, path=str(path))
            continue
        try:
            kind = _table_kind(_text(rec.get("source_kind")), path, start, end)
        except ValueError as exc:
            yield _bad_row(annotation, line_no, str(exc), clip_id=clip_id, dataset=default_dataset, path=str(path))
            continue
        except OSError as exc:  # a folder without read or search permission: this row's problem, not the build's
            yield _row(id=clip_id, dataset=_text(rec.get("dataset")) or default_dataset, split=normalise_split(rec.get("split")) or file_split,
                       signer=_text(rec.get("signer")), text=_sentence(rec.get("text")), source_kind="video", path=str(path),
                       status="unreadable", error=f"{path}: cannot look into it ({exc.strerror or exc})")
            continue
        split = normalise_split(rec.get("split"))
        meant = misspelt_split(split)
        if meant:
            yield _bad_row(annotation, line_no, f"split {split!r} reads as a misspelling of {meant!r} (a split of its own would never be "
                           "trained or evaluated on); write the split word", clip_id=clip_id, dataset=default_dataset, path=str(path))
            continue
        if split is None and file_typo:
            yield _bad_row(annotation, line_no, f"no split, and the file name's {file_typo[0]!r} reads as a misspelling of {file_typo[1]!r} "
                           "(curation would draw a split at random); rename the file or give a split column", clip_id=clip_id,
                           dataset=default_dataset, path=str(path))
            continue
        yield _row(
            _where=f"{annotation}:{line_no}",
            id=clip_id,
            dataset=_text(rec.get("dataset")) or default_dataset,
            split=split or file_split,
            signer=_text(rec.get("signer")),
            text=_sentence(rec.get("text")),
            source_kind=kind,
            path=str(path),
            start_s=start,
            end_s=end,
            fps=fps,
            source=_table_source(_text(rec.get("source")), root),
        )


PARSERS = {"phoenix": parse_phoenix, "how2sign": parse_how2sign, "csldaily": parse_csldaily, "table": parse_table}
