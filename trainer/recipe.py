"""A training recipe: typed dataclasses loaded from YAML, ``key=value`` overrides, validated up front.

    recipe = load_recipe("configs/recipes/spamo.yaml", ["optim.lr=1e-4", "data.batch_size=4"])

Every key must be a field of its section (a typo is an error, not a silently ignored setting); every value
is checked against the field's type and the section's own ``validate`` before anything is built or read.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import SignfeatError

STREAM_WIDTHS = {"clip_s2": 2048, "videomae": 1024, "dinov2": 768, "smplx623": 623}  # DESIGN.md defaults


@dataclass
class DataConfig:
    # the extraction output folder (OUT/{split}/*.tar), or a folder of tars / a brace pattern
    # (dir/demo-{000000..000003}.tar), of which each split takes the shards whose samples are of it
    shards: str = ""
    train_split: str = "train"
    eval_split: str = "dev"
    streams: list[str] = field(default_factory=lambda: ["clip_s2", "videomae"])
    # SpaMo: random crop of the spatial (per-frame) stream to at most 512 frames in training; the motion
    # stream (videomae windows) is never cropped. Streams not named here are cropped only by max_len.
    crop_streams: list[str] = field(default_factory=lambda: ["clip_s2"])
    max_frames: int = 512  # training-time random crop length of crop_streams (eval: centre crop)
    max_len: int = 2048  # hard cap of any stream's length (first positions kept) to bound memory
    batch_size: int = 8
    num_workers: int = 0
    shuffle_buffer: int = 256
    shard_shuffle: bool = True
    max_target_tokens: int = 64  # SpaMo release: max_txt_len 64 (targets truncated on the right)
    lowercase_targets: bool = False  # SpaMo release lowercases training targets (`sample['text'].lower()`)
    # ablation: every feature replaced by zeros (the demo's "no visual input" run); clip lengths are kept, and
    # with adapter.standardize the adapter sees the constant -mean/std
    zero_visual: bool = False

    def validate(self) -> None:
        from manifests.formats import normalise_split

        # the names the manifests give splits (validation -> dev), so a recipe may use either spelling
        self.train_split = normalise_split(self.train_split) or self.train_split
        self.eval_split = normalise_split(self.eval_split) or self.eval_split
        # a relative folder or pattern is read from where the command runs: the run records it absolute, so an eval or
        # a resume from another folder reads the same shards (it was "data.shards features: no such folder")
        if isinstance(self.shards, str) and self.shards.strip() and "://" not in self.shards:
            self.shards = os.path.join(os.getcwd(), os.path.expanduser(self.shards))  # joined, not normalised: a brace pattern stays one
        if not self.streams:
            raise SignfeatError("data.streams: name at least one stream")
        if len(set(self.streams)) != len(self.streams):  # [clip_s2, clip_s2] fed one stream as both spatial and motion input
            raise SignfeatError(f"data.streams: a stream named twice in {self.streams}")
        for name in self.crop_streams:
            if name not in self.streams:
                raise SignfeatError(f"data.crop_streams: {name!r} is not in data.streams {self.streams}")
        _positive("data", batch_size=self.batch_size, max_frames=self.max_frames, max_len=self.max_len,
                  max_target_tokens=self.max_target_tokens, shuffle_buffer=self.shuffle_buffer)
        if self.num_workers < 0:
            raise SignfeatError("data.num_workers: must be >= 0")


@dataclass
class AdapterConfig:
    # sign_adapter: SpaMo (per-stream linear -> joined -> K5 P2 K5 P2 -> MLP); mlp: LLaVA-SLT / SL-LLaMA
    # connector (optional local-window transformer first); motion: LSLM-style MLP over smplx623.
    kind: str = "sign_adapter"
    hidden: int = 768  # sign_adapter: common width of the projected streams (SpaMo inter_hidden); motion: its MLP width; unused by mlp
    stream_widths: dict[str, int] = field(default_factory=dict)  # overrides of STREAM_WIDTHS (tiny extractors)
    # per-dimension standardisation of every stream with its training-split mean / std (first
    # standardize_samples samples), stored with the adapter weights. Off in the paper recipes (their adapters
    # see raw features); on for the demo, whose random-weight features share a large constant offset.
    standardize: bool = False
    standardize_samples: int = 2000
    ltn: bool = False  # SL-LLaMA: local-window transformer before the MLP
    ltn_window: int = 8  # attention limited to +-window/2 frames
    ltn_layers: int = 1
    ltn_heads: int = 8

    def validate(self) -> None:
        if self.kind not in ("sign_adapter", "mlp", "motion"):
            raise SignfeatError(f"adapter.kind: expected sign_adapter, mlp or motion, got {self.kind!r}")
        _positive("adapter", hidden=self.hidden, ltn_window=self.ltn_window, ltn_layers=self.ltn_layers, ltn_heads=self.ltn_heads,
                  standardize_samples=self.standardize_samples)
        _positive("adapter.stream_widths", **self.stream_widths)
        if self.ltn and self.kind != "mlp":
            raise SignfeatError("adapter.ltn: the local-window transformer belongs to the mlp connector")


@dataclass
class TinyLLMConfig:
    """A small random-weight LLM of the recipe's family, built from a config (tests, demo, CPU)."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 128
    init_seed: int = 0  # the base weights are not in checkpoints: they are rebuilt from this seed

    def validate(self) -> None:
        _positive("llm.tiny", hidden=self.hidden, layers=self.layers, heads=self.heads, kv_heads=self.kv_heads, ffn=self.ffn)
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise SignfeatError(f"llm.tiny: hidden ({self.hidden}) must be a multiple of heads ({self.heads}), "
                                f"and heads a multiple of kv_heads ({self.kv_heads})")


@dataclass
class LoRAConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["q", "v"])

    def validate(self) -> None:
        _positive("llm.lora", r=self.r, alpha=self.alpha)
        if not 0 <= self.dropout < 1:
            raise SignfeatError("llm.lora.dropout: expected 0 <= dropout < 1")
        if not self.target_modules:
            raise SignfeatError("llm.lora.target_modules: name at least one module")


@dataclass
class InContextConfig:
    """SpaMo's in-context examples ``{source}={target}`` appended to the prompt. Off by default: SpaMo's
    release takes them from the same batch, at test time too, which puts test references into test
    prompts. Here they come only from the training split (never the sample's own text)."""

    enabled: bool = False
    num: int = 2
    source_field: str = ""  # JSON field of a sample with a translation to use as source ("" -> target only)
    seed: int = 0  # eval picks its examples with this seed (same prompts every run)

    def validate(self) -> None:
        if self.num < 1:
            raise SignfeatError("llm.in_context.num: must be >= 1")


@dataclass
class LLMConfig:
    kind: str = "encoder_decoder"  # or decoder_only
    name: str = "google/flan-t5-xl"  # Hugging Face id or local path
    family: str = "t5"  # t5 | qwen2 | llama (the tiny variant's architecture)
    tiny: TinyLLMConfig | None = None  # set: build a random-weight model of `family` (no download)
    # "" -> the model's own; "byt5" -> ByT5Tokenizer() (bytes, no download); "bpe" -> a byte-level BPE of
    # bpe_vocab_size trained in-process on the training split's texts (deterministic; tiny models only)
    tokenizer: str = ""
    bpe_vocab_size: int = 512
    language: str = "German"
    # per-sample target language from the sample JSON's ``dataset`` (SpaMo's release formats the prompt with
    # each sample's own language); datasets not listed use ``language``
    language_by_dataset: dict[str, str] = field(default_factory=dict)
    # "{sign}" marks where the visual embeddings go; "{language}" is filled in.
    prompt: str = "{sign}Translate the given sentence into {language}."
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    in_context: InContextConfig = field(default_factory=InContextConfig)
    dtype: str = "auto"  # auto: bf16 weights on GPU, fp32 on CPU

    def validate(self) -> None:
        if self.kind not in ("encoder_decoder", "decoder_only"):
            raise SignfeatError(f"llm.kind: expected encoder_decoder or decoder_only, got {self.kind!r}")
        if self.family not in ("t5", "qwen2", "llama"):
            raise SignfeatError(f"llm.family: expected t5, qwen2 or llama, got {self.family!r}")
        if self.tokenizer == "bpe":
            _positive("llm", bpe_vocab_size=self.bpe_vocab_size)
        if (self.family == "t5") != (self.kind == "encoder_decoder"):
            raise SignfeatError(f"llm.family {self.family!r} does not match llm.kind {self.kind!r}")
        if self.prompt.count("{sign}") != 1:
            raise SignfeatError("llm.prompt: must contain {sign} exactly once (where the visual embeddings go)")
        unknown = sorted(set(re.findall(r"\{[A-Za-z_]\w*\}", self.prompt)) - {"{sign}", "{language}"})
        if unknown:  # a typo ({lang}) was trained into the prompt as written
            raise SignfeatError(f"llm.prompt: unknown placeholder(s) {', '.join(unknown)}; the prompt takes {{sign}} and {{language}}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise SignfeatError(f"llm.dtype: expected auto, float32 or bfloat16, got {self.dtype!r}")
        if self.tiny is not None:
            self.tiny.validate()
        self.lora.validate()
        self.in_context.validate()


@dataclass
class VTAlignConfig:
    """SpaMo eq. 1: CLIP-style contrastive loss between pooled adapter output and pooled target embeddings."""

    enabled: bool = False
    warmup_steps: int = 0  # optimizer steps with only this loss (LLM not run). Paper: 4K P14T, 15K How2Sign
    weight: float = 1.0  # lambda after warm-up: CE + lambda * L_vt (SpaMo release: 1.0)
    pooling: str = "masked"  # masked: mean over valid positions; unmasked: SpaMo release (pads averaged in)
    init_logit_scale: float = 2.6592  # ln(1 / 0.07), as CLIP and SpaMo's release

    def validate(self) -> None:
        if self.pooling not in ("masked", "unmasked"):
            raise SignfeatError(f"vt_align.pooling: expected masked or unmasked, got {self.pooling!r}")
        if self.warmup_steps < 0 or not 0 <= self.weight < math.inf:  # NaN is neither
            raise SignfeatError("vt_align: warmup_steps and weight must be >= 0")
        if not -math.inf < self.init_logit_scale <= math.log(100):  # CLIP caps the scale exp(s) at 100; NaN fails too
            raise SignfeatError(f"vt_align.init_logit_scale: expected a number <= ln(100) = 4.605 (CLIP's cap), got {self.init_logit_scale!r}")


@dataclass
class OptimConfig:
    lr: float = 6e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1  # linear warm-up over this fraction of max_steps, then cosine down
    min_lr_ratio: float = 0.0  # the cosine ends at lr * this (SpaMo release: 0; SpaMo paper: 5e-5 / 1e-4 = 0.5)
    max_steps: int = 1000  # optimizer steps
    grad_accum: int = 2
    clip_grad: float = 1.0  # 0: no clipping

    def validate(self) -> None:
        _positive("optim", lr=self.lr, max_steps=self.max_steps, grad_accum=self.grad_accum, eps=self.eps)
        # AdamW refuses these only once the model is loaded; a negative clip_grad would silently mean "no clipping"
        _nonneg("optim", weight_decay=self.weight_decay, clip_grad=self.clip_grad)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise SignfeatError("optim.betas: expected two numbers in [0, 1)")
        if not 0 <= self.warmup_ratio < 1:
            raise SignfeatError("optim.warmup_ratio: expected 0 <= ratio < 1")
        if not 0 <= self.min_lr_ratio <= 1:
            raise SignfeatError("optim.min_lr_ratio: expected 0 <= ratio <= 1")


@dataclass
class EvalConfig:
    num_beams: int = 5
    max_new_tokens: int = 64
    do_sample: bool = False  # SpaMo release: sampling inside beam search (top_p 0.9): scores vary run to run
    top_p: float = 0.9
    bleu_tokenize: str = "auto"  # sacrebleu tokenizer: auto (char for Chinese references, else 13a), 13a, char, zh, none...
    lowercase: bool = False  # lowercase predictions and references before scoring (SpaMo release: on)
    batch_size: int = 8
    every: int = 0  # evaluate on data.eval_split every N optimizer steps during training
    at_end: bool = True  # evaluate on data.eval_split when training ends
    max_samples: int = 0  # 0: the whole split

    def validate(self) -> None:
        _positive("eval", num_beams=self.num_beams, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
        _nonneg("eval", every=self.every, max_samples=self.max_samples)  # -1 would evaluate every step / no sample
        if not 0 < self.top_p <= 1:
            raise SignfeatError("eval.top_p: expected 0 < top_p <= 1")
        from sacrebleu.metrics.bleu import BLEU

        if self.bleu_tokenize == "auto":
            return
        if self.bleu_tokenize not in BLEU.TOKENIZERS:
            raise SignfeatError(f"eval.bleu_tokenize: expected auto or one of {sorted(BLEU.TOKENIZERS)}, got {self.bleu_tokenize!r}")
        try:  # built once now: ja-mecab, ko-mecab, spm and flores need extra packages, which failed after training
            BLEU(tokenize=self.bleu_tokenize)
        except Exception as exc:  # sacrebleu raises RuntimeError / ImportError with an install hint
            raise SignfeatError(f"eval.bleu_tokenize {self.bleu_tokenize}: {' '.join(str(exc).split())}") from None


@dataclass
class Recipe:
    name: str = "recipe"
    follows: str = ""  # which paper / release numbers this recipe uses (documentation, kept in recipe.json and state.json)
    out_dir: str = "runs/recipe"
    seed: int = 0
    device: str = "auto"  # auto: cuda when available
    log_every: int = 10
    checkpoint_every: int = 0  # 0: only at the end
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    vt_align: VTAlignConfig = field(default_factory=VTAlignConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> "Recipe":
        self.data.validate()
        self.adapter.validate()
        self.llm.validate()
        self.vt_align.validate()
        self.optim.validate()
        self.eval.validate()
        _nonneg("", checkpoint_every=self.checkpoint_every)  # -1 would checkpoint every step (step % -1 == 0)
        _positive("", log_every=self.log_every)
        if not str(self.out_dir).strip():  # "" wrote checkpoints/ and log.jsonl into the current folder
            raise SignfeatError("out_dir: give the run's folder")
        if not 0 <= self.seed < 2**63:  # torch's and numpy's seeds
            raise SignfeatError(f"seed: expected 0 <= seed < 2**63, got {self.seed}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise SignfeatError(f"device: expected auto, cpu or cuda, got {self.device!r}")
        if self.adapter.kind == "sign_adapter" and len(self.data.streams) != 2:
            raise SignfeatError("adapter.kind sign_adapter: data.streams must be [spatial, motion], e.g. [clip_s2, videomae]")
        if self.adapter.kind in ("mlp", "motion") and len(self.data.streams) != 1:
            raise SignfeatError(f"adapter.kind {self.adapter.kind}: data.streams must name one stream")
        if self.vt_align.warmup_steps > 0 and not self.vt_align.enabled:
            raise SignfeatError("vt_align.warmup_steps > 0 needs vt_align.enabled: true")
        if self.vt_align.warmup_steps >= self.optim.max_steps:
            if self.vt_align.enabled:
                raise SignfeatError("vt_align.warmup_steps must be < optim.max_steps (else the LLM never trains)")
        return self

    def stream_width(self, name: str) -> int:
        widths = {**STREAM_WIDTHS, **self.adapter.stream_widths}
        if name not in widths:
            raise SignfeatError(f"stream {name!r}: width unknown; set adapter.stream_widths.{name}")
        return widths[name]

    def stream_widths(self) -> dict[str, int]:
        """The width the adapter takes of each stream the recipe reads."""
        return {name: self.stream_width(name) for name in self.data.streams}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _positive(section: str, **values) -> None:
    for key, value in values.items():
        if not 0 < value < math.inf:  # NaN and inf too (optim.lr=.inf would train on NaN)
            raise SignfeatError(f"{section + '.' if section else ''}{key}: must be a finite number > 0, got {value!r}")


def _nonneg(section: str, **values) -> None:
    for key, value in values.items():
        if not 0 <= value < math.inf:
            raise SignfeatError(f"{section + '.' if section else ''}{key}: must be a finite number >= 0, got {value!r}")


# ---------------------------------------------------------------------------------------------- building


def _build(cls, data: Any, path: str):
    """``cls`` from a plain dict, checking keys and value types; ``path`` names the section in messages."""
    if not isinstance(data, dict):
        raise SignfeatError(f"{path or 'recipe'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise SignfeatError(f"{path + '.' if path else ''}{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {key: _coerce(hints[key], value, f"{path + '.' if path else ''}{key}") for key, value in data.items()}
    return cls(**kwargs)


def _coerce(hint, value, path: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # X | None
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, {} if value is None else value, path)
    if origin is list:
        if not isinstance(value, list):
            raise SignfeatError(f"{path}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SignfeatError(f"{path}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise SignfeatError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SignfeatError(f"{path}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SignfeatError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise SignfeatError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def _string_field(key: str) -> tuple[bool, bool]:
    """(whether recipe key ``a.b.c`` holds a string, whether it may be null), from the Recipe dataclasses."""
    cls: Any = Recipe
    hint: Any = None
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls):
            return False, False
        hint = typing.get_type_hints(cls).get(part)
        if hint is None:
            return False, False
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
        if optional:
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        cls = hint
    return hint is str, optional


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``a.b.c=value`` into the nested dict. The value is parsed as YAML (numbers, true/false, lists [a, b]),
    except for a string setting, which takes the text as given (quoted YAML also reads; ``null`` where the
    setting may be null): as YAML, ``llm.prompt={sign} ...`` was a parse error and ``... #2`` lost its end to a
    comment, in silence."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SignfeatError(f"override {item!r}: expected key=value")
        is_string, nullable = _string_field(key)
        if is_string:
            value = text
            if text[:1] in ("'", '"') or (nullable and text in ("null", "~")):  # a quoted YAML string (or null) reads as one
                try:
                    parsed = yaml.safe_load(text)
                    value = parsed if isinstance(parsed, str) or parsed is None else text
                except yaml.YAMLError:
                    pass  # '"{sign}" is ...': text that starts with a quote
        else:
            try:
                value = yaml.safe_load(text) if text != "" else ""
            except yaml.YAMLError as exc:
                raise SignfeatError(f"override {item!r}: value is not valid YAML ({exc.__class__.__name__}: "
                                    f"{str(exc).splitlines()[0]})") from None
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SignfeatError(f"override {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def recipe_from_dict(data: dict, overrides: list[str] | None = None) -> Recipe:
    # a deep copy: overrides write into nested sections, and the caller's dict (a checkpoint's recipe, compared
    # with the result to report what changed) must keep its values
    data = apply_overrides(copy.deepcopy(dict(data or {})), list(overrides or []))
    return _build(Recipe, data, "").validate()


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A recipe file as a dict; ``base: other.yaml`` (relative to this file) is read first and this file's
    sections are merged over it key by key (the tiny variants are their full recipe plus a few changes)."""
    from pipeline.yaml_file import load_yaml

    if path.is_file() and path.resolve() in seen:
        raise SignfeatError(f"recipe {path}: base recipes form a cycle")
    data = load_yaml(path, "recipe") or {}
    if not isinstance(data, dict):
        raise SignfeatError(f"recipe {path}: expected a mapping at the top")
    base = data.pop("base", None)
    if base is None:
        return data
    return _merge(_read_yaml(path.parent / str(base), seen + (path.resolve(),)), data)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    data = _read_yaml(Path(path))
    try:
        return recipe_from_dict(data, overrides)
    except SignfeatError as exc:  # which file (of a base chain, or an extraction config given by mistake) was meant
        raise SignfeatError(f"recipe {path}: {exc}") from None
