"""The frozen LLM with LoRA, and the model that feeds it: adapter output spliced into ``inputs_embeds``.

Encoder-decoder (T5 / Flan-T5 / mT5), SpaMo's layout: encoder input = [prompt prefix] [visual tokens]
[prompt suffix + the tokenizer's end token], attention mask over all of them; the decoder is trained on the
target tokens (+ end token). With SpaMo's template "{sign}Translate the given sentence into {language}."
the prefix is empty: visual tokens first, as in its release.

Decoder-only (Qwen2.5, Llama): one sequence [BOS?] [prefix] [visual] [suffix] [target + end token], left
padded so that ``generate`` continues every row from its last prompt token. Positions count from each row's
first real token (``position_ids`` from the attention mask, as ``generate`` makes them): a model with learned
absolute positions (GPT-2) would otherwise train on positions shifted by the padding. BOS is prepended when the
tokenizer itself adds one (Llama 2 and 3 do; Qwen has none). Only target positions carry labels: prompt,
visual and padding positions are -100 and never enter the loss.
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import SignfeatError
from trainer.adapters import build_adapter
from trainer.data import Batch
from trainer.vt_align import vt_align_loss

IGNORE = -100


# ------------------------------------------------------------------------------------------------ loading


def train_bpe_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE trained here on ``texts`` (no download): words of a small corpus become single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(sorted(texts), trainer)  # sorted: the same vocabulary whatever the shard order
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="</s>", bos_token="<s>")


TOKENIZER_FILE = "tokenizer.json"  # a checkpoint's BPE tokenizer (tokenizers' JSON format)


def load_tokenizer(cfg, recipe=None, saved: Path | None = None):
    """The recipe's tokenizer. ``saved``: a checkpoint folder; its BPE tokenizer is used instead of training one
    (the training split's texts may have changed since, and another vocabulary would change every prediction)."""
    if cfg.tokenizer == "bpe" and saved is not None and (saved / TOKENIZER_FILE).is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(tokenizer_file=str(saved / TOKENIZER_FILE), pad_token="<pad>", eos_token="</s>", bos_token="<s>")
    if cfg.tokenizer == "bpe" and saved is not None:
        # trained again, on whatever the training split holds now, it would be another vocabulary: every
        # prediction changed, or a misleading "base LLM differs" error
        raise SignfeatError(f"checkpoint {saved}: its BPE tokenizer ({TOKENIZER_FILE}) is missing: the folder was copied without "
                            "it (copy the whole checkpoint folder), or an older signfeat made it before checkpoints held their "
                            "tokenizer (evaluate or resume it with that version, or train again)")
    if cfg.tokenizer == "bpe":
        from trainer.data import list_shards, read_split_texts

        d = recipe.data
        texts = [m.get("text") or "" for m in read_split_texts(list_shards(d.shards, d.train_split))]  # null text: ""
        return train_bpe_tokenizer([t.lower() for t in texts] if d.lowercase_targets else texts, cfg.bpe_vocab_size)
    if cfg.tokenizer == "byt5":
        from transformers import ByT5Tokenizer

        tokenizer = ByT5Tokenizer()  # bytes: needs no vocabulary file, no download
    else:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.name)
        except OSError as exc:
            raise SignfeatError(f"llm tokenizer {cfg.tokenizer or cfg.name!r}: cannot load ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
    if tokenizer.pad_token_id is None:  # Llama ships without a pad token; pads are masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tiny_config(cfg, tokenizer):
    """A small config of the recipe's family (random weights; CPU tests and the demo)."""
    t = cfg.tiny
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if cfg.family == "t5":
        from transformers import T5Config

        return T5Config(vocab_size=len(tokenizer), d_model=t.hidden, d_kv=t.hidden // t.heads, d_ff=t.ffn,
                        num_layers=t.layers, num_decoder_layers=t.layers, num_heads=t.heads, dropout_rate=0.0,
                        feed_forward_proj="gated-gelu", tie_word_embeddings=True,  # tied: logits scaled by d_model^-0.5
                        decoder_start_token_id=tokenizer.pad_token_id, **ids)
    common = dict(vocab_size=len(tokenizer), hidden_size=t.hidden, intermediate_size=t.ffn, num_hidden_layers=t.layers,
                  num_attention_heads=t.heads, num_key_value_heads=t.kv_heads, max_position_embeddings=4096,
                  tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                  initializer_range=0.2,  # the default 0.02 makes tied logits too flat for a 64-wide model to learn
                  **ids)
    if cfg.family == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**common)
    from transformers import LlamaConfig

    return LlamaConfig(**common)


def load_base_llm(cfg, tokenizer, dtype: torch.dtype) -> nn.Module:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if cfg.kind == "encoder_decoder" else AutoModelForCausalLM
    if cfg.tiny is not None:
        config = tiny_config(cfg, tokenizer)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.tiny.init_seed)  # checkpoints hold no base weights: rebuild them identically
            model = auto.from_config(config)
        return model.to(dtype)
    try:
        return auto.from_pretrained(cfg.name, dtype=dtype)
    except OSError as exc:
        raise SignfeatError(f"llm {cfg.name!r}: cannot load ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
    except ValueError as exc:  # transformers' "Unrecognized configuration class ... for this kind of AutoModel"
        if "Unrecognized configuration class" not in str(exc):
            raise
        other = "decoder_only" if cfg.kind == "encoder_decoder" else "encoder_decoder"
        raise SignfeatError(f"llm {cfg.name!r} is not a {cfg.kind} model ({auto.__name__} cannot build it); "
                            f"is it llm.kind={other}?") from None


def add_lora(model: nn.Module, cfg) -> nn.Module:
    """PEFT LoRA on the named modules; every base parameter frozen. Returns the transformers model with the
    LoRA layers injected (calls go straight to it, no PEFT wrapper in between)."""
    from peft import LoraConfig, TaskType, get_peft_model

    for p in model.parameters():
        p.requires_grad_(False)
    task = TaskType.SEQ_2_SEQ_LM if cfg.kind == "encoder_decoder" else TaskType.CAUSAL_LM
    targets = list(cfg.lora.target_modules)
    # PEFT's shorthand for every linear layer but the output head is a string, not a module name
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules="all-linear" if targets == ["all-linear"] else targets, bias="none", task_type=task)
    try:
        return get_peft_model(model, lora).get_base_model()
    except ValueError as exc:
        raise SignfeatError(f"llm.lora.target_modules {cfg.lora.target_modules}: {exc}") from None


# ------------------------------------------------------------------------------------------------ prompts


@dataclass
class Prompt:
    prefix: str  # text before the visual tokens
    suffix: str  # text after them


def split_prompt(template: str, language: str) -> Prompt:
    text = template.replace("{language}", language)
    prefix, _, suffix = text.partition("{sign}")
    return Prompt(prefix, suffix)


class InContextExamples:
    """SpaMo's ``{source}={target}`` examples, drawn only from the training split (never a sample's own)."""

    def __init__(self, metas: list[dict], num: int, source_field: str):
        self.num = num
        self.pairs = []
        for meta in metas:
            target = meta.get("text") or ""  # null text (extract's empty text): ""
            source = meta.get(source_field, "") if source_field else ""
            self.pairs.append((target, f"{source}={target}" if source else target))
        if len(self.pairs) <= num:
            raise SignfeatError(f"llm.in_context: the training split has {len(self.pairs)} samples, need more than {num}")
        self.targets = {target for target, _ in self.pairs}

    def choose(self, own_text: str, rng: random.Random) -> list[str]:
        if self.targets == {own_text}:  # every example is the sample's own text: the draw below would never end
            raise SignfeatError(f"llm.in_context: every training sample has the text {own_text!r}; no other text to show as an example")
        chosen: list[str] = []
        while len(chosen) < self.num:
            target, example = self.pairs[rng.randrange(len(self.pairs))]
            if target != own_text:
                chosen.append(example)
        return chosen

    def draw(self, own_text: str, rng: random.Random) -> str:
        """The text appended to the prompt: `` ex1 ex2``."""
        return " " + " ".join(self.choose(own_text, rng))


# ------------------------------------------------------------------------------------------------ model


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether the tokenizer itself starts a text with BOS (asked, not read from ``add_bos_token``: a
    Llama 3 tokenizer adds it in its post-processor while transformers reports add_bos_token False)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """0, 1, ... from each row's first attended token (padding gets 1, never attended), as ``generate`` does."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)


# how the translations are searched; a model's generation_config (Qwen2.5-Instruct: repetition_penalty 1.05,
# top_k 20, temperature 0.7) would otherwise fill in whatever generate() is not told (transformers gives
# the model's values precedence over its own defaults), so eval's decoding is set in full here
NEUTRAL_SEARCH = dict(repetition_penalty=1.0, encoder_repetition_penalty=1.0, length_penalty=1.0, no_repeat_ngram_size=0,
                      encoder_no_repeat_ngram_size=0, min_length=0, early_stopping=False, num_beam_groups=1, diversity_penalty=0.0)
NEUTRAL_SAMPLING = dict(temperature=1.0, top_k=0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0)


@dataclass
class LLMInputs:
    embeds: torch.Tensor  # [B, S, H]
    attention_mask: torch.Tensor  # [B, S] long
    labels: torch.Tensor | None  # encoder-decoder: [B, L] target ids; decoder-only: [B, S]; -100 = no loss


class SignTranslator(nn.Module):
    """Adapter (trained) + LLM (frozen, LoRA trained) + VT-Align logit scale (trained)."""

    def __init__(self, recipe, tokenizer, llm: nn.Module):
        super().__init__()
        self.kind = recipe.llm.kind
        self.tokenizer = tokenizer
        self.llm = llm
        self.adapter = build_adapter(recipe, llm.get_input_embeddings().embedding_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(recipe.vt_align.init_logit_scale)))
        self.template, self.language = recipe.llm.prompt, recipe.llm.language
        self.language_by_dataset = dict(recipe.llm.language_by_dataset)
        self.vt = recipe.vt_align
        self.bos = [tokenizer.bos_token_id] if self.kind == "decoder_only" and tokenizer_adds_bos(tokenizer) else []
        # learned absolute positions (GPT-2) must count from each left-padded row's first token; models
        # without a position_ids argument (Bloom's ALiBi, from the mask) need none
        self.pass_positions = self.kind == "decoder_only" and "position_ids" in inspect.signature(llm.forward).parameters

    # -- pieces

    def embed_ids(self, ids: list[int] | torch.Tensor) -> torch.Tensor:
        table = self.llm.get_input_embeddings()
        ids = torch.as_tensor(ids, dtype=torch.long, device=table.weight.device)
        return table(ids)

    def language_of(self, meta: dict | None) -> str:
        return self.language_by_dataset.get((meta or {}).get("dataset", ""), self.language)

    def prompt_ids(self, extra: str = "", language: str | None = None) -> tuple[list[int], list[int]]:
        tok = self.tokenizer
        prompt = split_prompt(self.template, language or self.language)
        prefix = self.bos + tok(prompt.prefix, add_special_tokens=False)["input_ids"]
        suffix = tok(prompt.suffix + extra, add_special_tokens=False)["input_ids"]
        if self.kind == "encoder_decoder":
            suffix = suffix + [tok.eos_token_id]  # SpaMo: the tokenizer's end token closes the encoder input
        return prefix, suffix

    def build_inputs(self, visual: torch.Tensor, visual_mask: torch.Tensor, batch: Batch,
                     extras: list[str] | None = None, with_targets: bool = True) -> LLMInputs:
        """Per sample [prefix][valid visual][suffix](decoder-only: [target]); padded; labels as documented."""
        rows, labels = [], []
        n = visual.shape[0]
        extras = extras or [""] * n
        dtype = self.llm.get_input_embeddings().weight.dtype
        for i in range(n):
            prefix, suffix = self.prompt_ids(extras[i], self.language_of(batch.metas[i]))
            parts = [self.embed_ids(prefix), visual[i][visual_mask[i]].to(dtype), self.embed_ids(suffix)]
            label = [IGNORE] * (len(prefix) + int(visual_mask[i].sum()) + len(suffix))
            if self.kind == "decoder_only" and with_targets:
                target = batch.target_ids[i][batch.target_mask[i]]
                parts.append(self.embed_ids(target))
                label += target.tolist()
            rows.append(torch.cat(parts, dim=0))
            labels.append(label)
        width = max(len(r) for r in rows)
        hidden = rows[0].shape[1]
        embeds = rows[0].new_zeros(n, width, hidden)
        mask = torch.zeros(n, width, dtype=torch.long, device=embeds.device)
        seq_labels = torch.full((n, width), IGNORE, dtype=torch.long, device=embeds.device)
        for i, row in enumerate(rows):
            # right padding for the encoder, left padding for decoder-only models
            span = slice(0, len(row)) if self.kind == "encoder_decoder" else slice(width - len(row), width)
            embeds[i, span] = row
            mask[i, span] = 1
            seq_labels[i, span] = torch.tensor(labels[i], device=embeds.device)
        if not with_targets:
            return LLMInputs(embeds, mask, None)
        if self.kind == "encoder_decoder":
            target_labels = batch.target_ids.masked_fill(~batch.target_mask, IGNORE)
            return LLMInputs(embeds, mask, target_labels)
        return LLMInputs(embeds, mask, seq_labels)

    def text_embeddings(self, batch: Batch) -> torch.Tensor:
        return self.embed_ids(batch.target_ids)

    # -- training

    def forward(self, batch: Batch, extras: list[str] | None = None, run_llm: bool = True) -> dict[str, torch.Tensor]:
        """Losses of one batch: ``vt`` (VT-Align, when enabled), ``ce`` (when ``run_llm``), ``loss`` (the sum
        that is optimised: VT-Align alone during warm-up, CE + lambda * VT after)."""
        visual, visual_mask = self.adapter(batch.features, batch.lengths)
        out: dict[str, torch.Tensor] = {}
        if self.vt.enabled:
            out["vt"] = vt_align_loss(visual, visual_mask, self.text_embeddings(batch).to(visual.dtype), batch.target_mask,
                                      self.logit_scale, self.vt.pooling)
        if not run_llm:
            out["loss"] = out["vt"]
            return out
        inputs = self.build_inputs(visual, visual_mask, batch, extras)
        if self.kind == "encoder_decoder":
            # the decoder reads the labels shifted right (the model's own rule); the loss is taken here, in float32
            # (passing labels would also run the model's own loss: a second, bf16 log-softmax over the vocabulary)
            decoder_ids = self.llm.prepare_decoder_input_ids_from_labels(labels=inputs.labels)
            logits = self.llm(inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask, decoder_input_ids=decoder_ids).logits
            out["ce"] = nn.functional.cross_entropy(logits.flatten(0, 1).float(), inputs.labels.flatten(), ignore_index=IGNORE)
        else:
            positions = {"position_ids": positions_from_mask(inputs.attention_mask)} if self.pass_positions else {}
            logits = self.llm(inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask, **positions).logits
            out["ce"] = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), inputs.labels[:, 1:].flatten(),
                                                    ignore_index=IGNORE)
        out["loss"] = out["ce"] + self.vt.weight * out["vt"] if self.vt.enabled else out["ce"]
        return out

    # -- inference

    @torch.no_grad()
    def generate(self, batch: Batch, *, num_beams: int = 5, max_new_tokens: int = 64, do_sample: bool = False,
                 top_p: float = 0.9, extras: list[str] | None = None) -> list[str]:
        visual, visual_mask = self.adapter(batch.features, batch.lengths)
        inputs = self.build_inputs(visual, visual_mask, batch, extras, with_targets=False)
        options = dict(num_beams=num_beams, max_new_tokens=max_new_tokens, do_sample=do_sample,
                       pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id, **NEUTRAL_SEARCH)
        if do_sample:
            options.update(NEUTRAL_SAMPLING, top_p=top_p)
        else:  # say so explicitly: a model's generation_config may default to sampling
            options.update(top_p=None, top_k=None, temperature=None)
        ids = self.llm.generate(inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask, **options)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)


def trainable_state(model: SignTranslator) -> dict[str, torch.Tensor]:
    """What a checkpoint holds: the adapter (parameters and BatchNorm statistics), the LoRA weights, the
    logit scale. Never the frozen base weights."""
    state = {f"adapter.{k}": v for k, v in model.adapter.state_dict().items()}
    state.update({f"llm.{k}": v for k, v in model.llm.state_dict().items() if "lora_" in k})
    state["logit_scale"] = model.logit_scale.detach()
    return {k: v.detach().contiguous() for k, v in state.items()}


def load_trainable_state(model: SignTranslator, state: dict[str, torch.Tensor]) -> None:
    adapter = {k[len("adapter."):]: v for k, v in state.items() if k.startswith("adapter.")}
    lora = {k[len("llm."):]: v for k, v in state.items() if k.startswith("llm.")}
    missing = [k for k in model.llm.state_dict() if "lora_" in k and k not in lora]
    if missing:
        raise SignfeatError(f"checkpoint: LoRA weight {missing[0]} missing (recipe's LoRA settings differ?)")
    try:
        model.adapter.load_state_dict(adapter)
        model.llm.load_state_dict(lora, strict=False)
    except RuntimeError as exc:  # torch's size-mismatch report: one line of it, not a state-dict dump
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line or "Missing" in line or "Unexpected" in line), str(exc)[:300])
        raise SignfeatError(f"checkpoint: its weights do not fit the model the recipe builds ({detail})") from None
    with torch.no_grad():
        model.logit_scale.copy_(state["logit_scale"])


def base_checksum(model: SignTranslator) -> str:
    """A digest of every frozen base parameter (tests: the base does not move; resume: same base)."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for name, p in sorted(model.llm.named_parameters()):
        if "lora_" not in name:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def build_model(recipe, device: torch.device, tokenizer_dir: Path | None = None) -> SignTranslator:
    """The recipe's model; ``tokenizer_dir``: a checkpoint whose saved tokenizer to use (see load_tokenizer)."""
    cfg = recipe.llm
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(cfg.dtype) or (
        torch.bfloat16 if device.type == "cuda" else torch.float32)
    tokenizer = load_tokenizer(cfg, recipe, saved=tokenizer_dir)
    llm = add_lora(load_base_llm(cfg, tokenizer, dtype), cfg)
    model = SignTranslator(recipe, tokenizer, llm)
    return model.to(device)
