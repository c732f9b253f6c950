"""Small synthetic feature shards in the exact extraction layout (DESIGN.md), and tiny recipes over them.

Each word of a toy vocabulary has a fixed random feature vector; a sentence's spatial stream shows each
word's vector for a few frames (plus noise), its motion stream one window per word: the features encode
the sentence, so a model can learn to translate them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from shards.sample import encode_sample

WORDS = ["hallo", "regen", "sonne", "morgen", "heute", "kalt", "warm", "süden", "wind", "danke"]
SPATIAL, MOTION, PER_FRAME = 16, 8, 12  # tiny stream widths (clip_s2, videomae, dinov2)
FRAMES_PER_WORD = 8


def sentence_streams(words: list[int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    table = np.random.default_rng(1234)  # the same word vectors in every shard and test
    spatial_table = table.normal(size=(len(WORDS), SPATIAL))
    motion_table = table.normal(size=(len(WORDS), MOTION))
    frame_table = table.normal(size=(len(WORDS), PER_FRAME))
    frames = np.repeat(np.array(words), FRAMES_PER_WORD)
    noise = lambda shape: 0.05 * rng.normal(size=shape)
    return {
        "clip_s2": (spatial_table[frames] + noise((len(frames), SPATIAL))).astype(np.float16),
        "videomae": (motion_table[np.array(words)] + noise((len(words), MOTION))).astype(np.float16),
        "dinov2": (frame_table[frames] + noise((len(frames), PER_FRAME))).astype(np.float16),
        "smplx623": np.pad(frame_table[frames], ((0, 0), (0, 623 - PER_FRAME))).astype(np.float32),
    }


def write_shards(root: Path, split: str, sentences: list[list[int]], per_shard: int, seed: int = 0, prefix: str = "syn") -> list[str]:
    """``root/{split}/{prefix}-{i:06d}.tar`` with ``per_shard`` samples each; returns the texts in order."""
    rng = np.random.default_rng(seed)
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    texts = []
    for start in range(0, len(sentences), per_shard):
        with wds.TarWriter(str(folder / f"{prefix}-{start // per_shard:06d}.tar"), encoder=False) as sink:
            for i, words in enumerate(sentences[start : start + per_shard], start=start):
                text = " ".join(WORDS[w] for w in words)
                key = f"{split}-{i:05d}"
                meta = {"id": key, "text": text, "split": split, "dataset": "synthetic"}
                sink.write({"__key__": key, **encode_sample(key, meta, sentence_streams(words, rng))})
                texts.append(text)
    return texts


def random_sentences(n: int, seed: int, min_words: int = 2, max_words: int = 3) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [list(rng.integers(0, len(WORDS), size=int(rng.integers(min_words, max_words + 1)))) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """train: 4 sentences (one shard); dev and test: the same 4 (the overfit check); big: 30 in 4 shards."""
    root = tmp_path_factory.mktemp("shards")
    sentences = [[0, 1, 2, 3], [4, 5, 6, 7, 8], [9, 2, 5, 1], [3, 7, 0, 6, 4]]  # >= 4 words: BLEU-4 has 4-grams
    for split in ("train", "dev", "test"):
        write_shards(root, split, sentences, per_shard=4)
    write_shards(root, "big", random_sentences(30, seed=5), per_shard=8)
    return root


def tiny_recipe(shards: Path, out_dir: Path, kind: str = "t5", **sections) -> dict:
    """A recipe dict for a tiny model over the synthetic shards (``sections`` merged in per section)."""
    llm = {
        "t5": {"kind": "encoder_decoder", "family": "t5", "lora": {"r": 16, "alpha": 32, "dropout": 0.0,
               "target_modules": ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]}},
        "qwen2": {"kind": "decoder_only", "family": "qwen2", "prompt": "[INST] <sign>{sign}</sign> Translate into {language}. [/INST]",
                  "lora": {"r": 16, "alpha": 32, "dropout": 0.0,
                           "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}},
    }[kind]
    recipe = {
        "name": f"tiny-{kind}", "out_dir": str(out_dir), "seed": 0, "device": "cpu", "progress": False, "log_every": 1,
        "data": {"shards": str(shards), "streams": ["clip_s2", "videomae"], "batch_size": 4, "shuffle_buffer": 4},
        "adapter": {"kind": "sign_adapter", "hidden": 32, "stream_widths": {"clip_s2": SPATIAL, "videomae": MOTION, "dinov2": PER_FRAME}},
        "llm": {"tokenizer": "byt5", "language": "German", "tiny": {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 128}, **llm},
        "vt_align": {"enabled": False},
        "optim": {"lr": 3e-3, "max_steps": 10, "grad_accum": 1, "warmup_ratio": 0.1, "weight_decay": 0.0},
        "eval": {"num_beams": 1, "max_new_tokens": 40, "at_end": False, "batch_size": 4},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            recipe[section] = {**recipe.get(section, {}), **values}
        else:
            recipe[section] = values
    return recipe
