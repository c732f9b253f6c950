"""``signfeat demo-corpus``: a small deterministic toy sign language in every layout signfeat reads.

The toy language: a vocabulary of weather words, each signed as its own motion of two coloured "hands"
(path shape, place, hand size) in front of a "face" whose mouth opens for some words. A sentence is a
sequence of 2-4 words, signed one after another with a short rest between; its text is the sequence of
the words' spoken forms (English, German or Chinese by layout). A model trained on features of these
videos can learn to translate them, which is what the trainer's tests use it for.

Layouts, each with annotation files in a format ``signfeat manifest build`` reads:
- ``clips/``: one H.264 mp4 per sentence (plus an .mkv with a non-ASCII name) -> ``annotations/clips.csv`` (table)
- ``how2sign/raw_videos/``: long videos of several sentences -> ``annotations/how2sign_realigned_{split}.csv`` (ranges)
- ``PHOENIX-2014-T/features/fullFrame-210x260px/{split}/{name}/images0001.png`` -> ``PHOENIX-2014-T.{split}.corpus.csv``
- ``csl/frames/{id}/000000.jpg`` (CSL-Daily-style JPEG folders) -> ``annotations/csl.jsonl`` (table)
Deliberately bad items (their ids start with ``bad-``): a truncated mp4, a zero-byte mp4, a text file named
.mp4, an empty frame folder, a row with no text, a duplicate id (a second ``clip-0002``), a range past the
end of its video; and ``dup-of-clip-0003``, a byte-identical copy that probes fine and that curation drops.
``demo_corpus.json`` records what each clip signs (word indices, signer) for tests and training.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import SignfeatError

VOCAB = [  # gloss, English, German, Chinese
    ("HELLO", "hello", "hallo", "你好"),
    ("THANKS", "thanks", "danke", "谢谢"),
    ("WEATHER", "weather", "wetter", "天气"),
    ("RAIN", "rain", "regen", "雨"),
    ("SUN", "sun", "sonne", "太阳"),
    ("TOMORROW", "tomorrow", "morgen", "明天"),
    ("TODAY", "today", "heute", "今天"),
    ("COLD", "cold", "kalt", "冷"),
    ("WARM", "warm", "warm", "暖"),
    ("NORTH", "north", "norden", "北"),
    ("SOUTH", "south", "süden", "南"),
    ("WIND", "wind", "wind", "风"),
]
LANG_COLUMN = {"en": 1, "de": 2, "zh": 3}
FPS = 25
WORD_FRAMES = 10  # frames per signed word
REST_FRAMES = 2  # frames between words (hands back at rest)
SIGNERS = ["S1", "S2", "S3"]
_SIGNER_LOOK = [  # background, shirt, skin
    ((200, 205, 210), (40, 60, 140), (230, 190, 160)),
    ((210, 200, 190), (120, 40, 40), (180, 130, 100)),
    ((190, 210, 195), (30, 110, 60), (140, 100, 70)),
]


@dataclass(frozen=True)
class Sentence:
    words: tuple[int, ...]  # vocabulary indices
    signer: int

    def text(self, lang: str) -> str:
        sep = "" if lang == "zh" else " "
        return sep.join(VOCAB[w][LANG_COLUMN[lang]] for w in self.words)

    @property
    def num_frames(self) -> int:
        return len(self.words) * WORD_FRAMES + (len(self.words) - 1) * REST_FRAMES


def _hand_path(word: int, phase: float) -> tuple[float, float, float, float]:
    """Right and left hand centres (x, y in [0, 1]) at a phase in [0, 1) of a word's sign."""
    angle = 2 * math.pi * phase
    shape, place = word % 4, word // 4  # 4 path shapes x 3 places = 12 distinct signs
    cy = (0.45, 0.62, 0.78)[place]
    amp = 0.14
    if shape == 0:  # circle
        rx, ry = 0.62 + amp * math.cos(angle), cy + amp * math.sin(angle)
    elif shape == 1:  # horizontal swing
        rx, ry = 0.55 + amp * math.sin(angle), cy
    elif shape == 2:  # vertical swing
        rx, ry = 0.65, cy + amp * math.sin(angle)
    else:  # diagonal
        rx, ry = 0.6 + amp * math.sin(angle), cy - amp * math.sin(angle)
    mode = word % 3
    if mode == 0:  # left hand rests at the side
        lx, ly = 0.22, 0.85
    elif mode == 1:  # mirrors the right hand
        lx, ly = 1.0 - rx, ry
    else:  # bobs up and down in front of the chest
        lx, ly = 0.35, 0.6 + 0.08 * math.cos(2 * angle)
    return rx, ry, lx, ly


def render_sentence(sentence: Sentence, width: int = 64, height: int = 64) -> np.ndarray:
    """uint8 [T, H, W, 3] frames of one signed sentence. Deterministic: the same sentence, the same pixels."""
    bg, shirt, skin = (np.array(c, np.uint8) for c in _SIGNER_LOOK[sentence.signer % len(_SIGNER_LOOK)])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy, xx = yy / height, xx / width
    base = np.empty((height, width, 3), np.uint8)
    base[:] = bg
    base[(yy > 0.55) & (np.abs(xx - 0.5) < 0.3)] = shirt  # torso
    base[((xx - 0.5) / 0.13) ** 2 + ((yy - 0.28) / 0.17) ** 2 < 1] = skin  # face
    # Per frame: (word or -1 for rest, phase)
    plan: list[tuple[int, float]] = []
    for i, w in enumerate(sentence.words):
        if i:
            plan += [(-1, 0.0)] * REST_FRAMES
        plan += [(w, k / WORD_FRAMES) for k in range(WORD_FRAMES)]
    frames = np.empty((len(plan), height, width, 3), np.uint8)
    for t, (w, phase) in enumerate(plan):
        img = base.copy()
        if w < 0:
            rx, ry, lx, ly, size, mouth = 0.78, 0.85, 0.22, 0.85, 0.06, False
        else:
            rx, ry, lx, ly = _hand_path(w, phase)
            size = 0.05 if w % 2 else 0.08  # closed / open hand
            mouth = w % 5 == 0
        mouth_h = 0.05 if mouth else 0.015
        img[((xx - 0.5) / 0.06) ** 2 + ((yy - 0.36) / mouth_h) ** 2 < 1] = (120, 20, 30)
        img[(xx - 0.45) ** 2 + (yy - 0.24) ** 2 < 0.02**2] = (20, 20, 20)  # eyes
        img[(xx - 0.55) ** 2 + (yy - 0.24) ** 2 < 0.02**2] = (20, 20, 20)
        img[(xx - lx) ** 2 + (yy - ly) ** 2 < size**2] = (250, 200, 40)  # left hand: yellow
        img[(xx - rx) ** 2 + (yy - ry) ** 2 < size**2] = (230, 60, 200)  # right hand: magenta
        frames[t] = img
    return frames


def write_video(path: Path, frames: np.ndarray, fps: int = FPS, codec: str = "libx264") -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options={"fflags": "+bitexact"}) as container:  # no random Matroska UID: same seed, same bytes
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            # x264's assembly (here an AVX-512 Xeon) gave other bytes and pixels (up to 20 levels) now and then for the
            # same frames and settings, in 1 corpus of 3; its C code is the same every time, and 2x slower on 64-pixel clips
            stream.options = {"crf": "12", "preset": "fast", "bf": "2", "g": "25", "x264-params": "asm=0"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_frames(folder: Path, frames: np.ndarray, pattern: str, **save_kw) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(frames):
        Image.fromarray(img).save(folder / pattern.format(i), **save_kw)


def _sentences(rng: np.random.Generator, n: int) -> list[Sentence]:
    out = []
    for _ in range(n):
        length = int(rng.integers(2, 5))
        words = tuple(int(w) for w in rng.choice(len(VOCAB), size=length, replace=True))
        out.append(Sentence(words, int(rng.integers(0, len(SIGNERS)))))
    return out


def _split_of(i: int) -> str:
    return ("train", "train", "train", "train", "train", "train", "dev", "test")[i % 8]


def make_demo_corpus(out: Path, seed: int = 0, clips: int = 48, size: int = 64) -> dict:
    """Write the corpus under ``out`` (replacing it) and return a summary with the annotation paths."""
    if clips < 16:
        raise ValueError(f"the demo corpus needs at least 16 clips (4 per layout), got {clips}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / "demo_corpus.json").is_file():  # only an earlier demo corpus is replaced: `demo-corpus ~/data` deleted it
            raise SignfeatError(f"demo-corpus: {out} is not empty and is no demo corpus (no demo_corpus.json); give a new or empty folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    # written first, so a demo corpus interrupted half-way is still one a rerun replaces; the summary overwrites it
    (out / "demo_corpus.json").write_text(json.dumps({"root": str(out), "seed": seed, "clips": clips, "complete": False}))
    ann = out / "annotations"
    ann.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    sentences = _sentences(rng, clips)
    per = clips // 4
    groups = {
        "clips": sentences[:per],
        "how2sign": sentences[per : 2 * per],
        "phoenix": sentences[2 * per : 3 * per],
        "csl": sentences[3 * per :],
    }
    truth: dict[str, dict] = {}

    # --- table layout: mp4 clips (and one mkv with a non-ASCII name and spaces) + bad items
    rows = []
    for i, s in enumerate(groups["clips"]):
        clip_id = f"clip-{i:04d}"
        name = f"clips/{clip_id}.mp4" if i != 1 else "clips/Gebärde Nr 1.mkv"
        if i == 1:
            clip_id = "gebärde-1"
        write_video(out / name, render_sentence(s, size, size))
        rows.append({"id": clip_id, "path": name, "text": s.text("en"), "split": _split_of(i), "signer": SIGNERS[s.signer]})
        truth[clip_id] = {"words": list(s.words), "signer": s.signer, "status": "ok", "layout": "clips"}
    # an exact copy under another id: probes ok, curation drops it as a duplicate of clip-0003
    shutil.copyfile(out / rows[3]["path"], out / "clips/clip-0003 copy.mp4")
    rows.append({"id": "dup-of-clip-0003", "path": "clips/clip-0003 copy.mp4", "text": groups["clips"][3].text("en"), "split": "train", "signer": SIGNERS[groups["clips"][3].signer]})
    truth["dup-of-clip-0003"] = {"words": list(groups["clips"][3].words), "signer": groups["clips"][3].signer, "status": "ok", "layout": "clips", "duplicate_of": rows[3]["id"]}
    ok_bytes = (out / rows[0]["path"]).read_bytes()
    (out / "clips/bad-truncated.mp4").write_bytes(ok_bytes[: len(ok_bytes) // 2])
    (out / "clips/bad-empty.mp4").write_bytes(b"")
    (out / "clips/bad-text.mp4").write_text("this is not a video\n")
    bad_rows = [
        ({"id": "bad-truncated", "path": "clips/bad-truncated.mp4", "text": "hello", "split": "train", "signer": "S1"}, "corrupt"),
        ({"id": "bad-empty", "path": "clips/bad-empty.mp4", "text": "hello", "split": "train", "signer": "S1"}, "empty_file"),
        ({"id": "bad-text", "path": "clips/bad-text.mp4", "text": "hello", "split": "train", "signer": "S1"}, "unreadable"),
        ({"id": "bad-notext", "path": rows[0]["path"], "text": "", "split": "train", "signer": "S1"}, "missing_text"),
        ({"id": rows[2]["id"], "path": rows[3]["path"], "text": "a second row with an id already used", "split": "train", "signer": "S1"}, "duplicate_id"),
    ]
    for row, status in bad_rows:
        rows.append(row)
        if status != "duplicate_id":
            truth[row["id"]] = {"status": status, "layout": "clips"}
    with open(ann / "clips.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "path", "text", "split", "signer"])
        writer.writeheader()
        writer.writerows(rows)

    # --- How2Sign layout: long videos of several sentences, clips as ranges; as in How2Sign, each raw video's
    # sentences are of one split (sentences of one recording in train and test made curate warn of a leak)
    h2s = groups["how2sign"]
    by_split: dict[str, list[list[str]]] = {}
    video_names = [f"vid{v}-rgb_front" for v in range(max(3, len(h2s) // 4))]  # ~4 sentences each, >= one per split
    for v, video_name in enumerate(video_names):
        members = h2s[v::len(video_names)]
        split = ("train", "dev", "test", "train", "train", "train")[v % 6]
        parts, t = [], 0
        for j, s in enumerate(members):
            frames = render_sentence(s, size, size)
            gap = render_sentence(Sentence((0,), s.signer), size, size)[:5]  # a few frames between sentences
            parts += [gap, frames]
            t += len(gap)
            sent_id = f"{video_name}_{j}-rgb_front"
            by_split.setdefault(split, []).append(
                [f"vid{v}", video_name, f"vid{v}_{j}", sent_id, f"{t / FPS:.2f}", f"{(t + len(frames)) / FPS:.2f}", s.text("en")]
            )
            truth[sent_id] = {"words": list(s.words), "signer": s.signer, "status": "ok", "layout": "how2sign"}
            t += len(frames)
        write_video(out / "how2sign/raw_videos" / f"{video_name}.mp4", np.concatenate(parts))
        if v == 0:
            video_len = t / FPS
            by_split.setdefault("train", []).append(
                ["vid0", video_name, "vid0_99", "bad-past-end", f"{video_len + 2:.2f}", f"{video_len + 5:.2f}", "rain"]
            )
            truth["bad-past-end"] = {"status": "range_out_of_bounds", "layout": "how2sign"}
    for split, lines in by_split.items():
        name = {"train": "train", "dev": "val", "test": "test"}[split]
        with open(ann / f"how2sign_realigned_{name}.csv", "w", encoding="utf-8") as f:
            f.write("\t".join(["VIDEO_ID", "VIDEO_NAME", "SENTENCE_ID", "SENTENCE_NAME", "START_REALIGNED", "END_REALIGNED", "SENTENCE"]) + "\n")
            for line in lines:
                f.write("\t".join(line) + "\n")

    # --- PHOENIX-2014T layout: PNG folders, German texts
    phoenix = out / "PHOENIX-2014-T"
    lines_by_split: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    for i, s in enumerate(groups["phoenix"]):
        split = _split_of(i)
        name = f"{i + 1:02d}April_2010_Thursday_heute-{1000 + i}"
        folder = phoenix / "features/fullFrame-210x260px" / split / name
        _write_frames(folder, render_sentence(s, width=size * 210 // 260, height=size), "images{:04d}.png", compress_level=1)
        gloss = " ".join(VOCAB[w][0] for w in s.words)
        lines_by_split[split].append(f"{name}|{name}/*.png|-1|-1|Signer0{s.signer + 1}|{gloss}|{s.text('de')}")
        truth[name] = {"words": list(s.words), "signer": s.signer, "status": "ok", "layout": "phoenix"}
    manual = phoenix / "annotations/manual"
    manual.mkdir(parents=True)
    for split, lines in lines_by_split.items():
        with open(manual / f"PHOENIX-2014-T.{split}.corpus.csv", "w", encoding="utf-8") as f:
            f.write("name|video|start|end|speaker|orth|translation\n")
            f.writelines(line + "\n" for line in lines)

    # --- CSL-Daily-style JPEG folders, Chinese texts, JSONL table; one folder mixes .png and .jpg
    records = []
    for i, s in enumerate(groups["csl"]):
        clip_id = f"S{i:06d}_P0000_T00"
        folder = out / "csl/frames" / clip_id
        frames = render_sentence(s, size, size)
        _write_frames(folder, frames, "{:06d}.jpg", quality=95)
        if i == 0:  # a folder mixing formats: every other frame as PNG
            for k in range(0, len(frames), 2):
                (folder / f"{k:06d}.jpg").unlink()
                _write_frames(folder, frames[k : k + 1], f"{k:06d}.png")
        # no split column, as a CSL-400h-scale corpus arrives: curation assigns splits
        records.append({"id": clip_id, "path": f"csl/frames/{clip_id}", "text": s.text("zh"), "signer": SIGNERS[s.signer], "fps": 30})
        truth[clip_id] = {"words": list(s.words), "signer": s.signer, "status": "ok", "layout": "csl"}
    (out / "csl/frames/bad-empty-folder").mkdir(parents=True)
    records.append({"id": "bad-empty-folder", "path": "csl/frames/bad-empty-folder", "text": "雨", "signer": "S1"})
    truth["bad-empty-folder"] = {"status": "empty_folder", "layout": "csl"}
    with open(ann / "csl.jsonl", "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")

    annotations = sorted(str(p) for p in ann.iterdir()) + sorted(str(p) for p in manual.iterdir())
    summary = {"root": str(out), "seed": seed, "clips": clips, "annotations": annotations, "truth": truth}
    (out / "demo_corpus.json").write_text(json.dumps(summary, ensure_ascii=False, indent=1))
    return summary
