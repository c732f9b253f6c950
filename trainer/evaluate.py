"""``signfeat eval``: translate a split with a trained checkpoint, score BLEU-1..4 and ROUGE-L.

- Decoding: deterministic beam search by default (5 beams, at most 64 new tokens). SpaMo's release
  samples inside beam search (``do_sample=True, top_p=0.9``), so its scores move from run to run; that is
  ``eval.do_sample=true`` here, never the default.
- Predictions and references are put in Unicode NFC first (a decomposed "ü" from a macOS file or a corpus
  would not match the model's composed one), then scored as they are: no other normalisation.
- BLEU-n: sacrebleu's cumulative corpus BLEU with ``max_ngram_order=n`` (n = 1..4) and its signature;
  tokenizer ``auto`` by default: ``char`` when most of the references' letters are Chinese characters or kana
  (CSL-Daily is scored per character in the SLT literature: SLRT, GFSLT-VLP), else 13a.
- Lowercasing of predictions and references before scoring is ``eval.lowercase`` (on in the SpaMo recipe,
  as in its release) and is reported with the scores.
- ROUGE-L: the mean sentence F1 of rouge-score with Porter stemming, twice: with rouge-score's own
  tokenizer (``rougeL``: it keeps only [a-z0-9], so German umlauts split words and Chinese text vanishes)
  and with a Unicode-aware tokenizer (``rougeL_unicode``: letters of any script, CJK characters one token
  each, stemming only for ASCII words); and ``rougeL_coco``, the ROUGE-L many SLT papers publish (signjoey,
  nlg-eval for GFSLT-VLP: COCO caption evaluation's, beta 1.2, tokens split at spaces, punctuation kept, no
  stemming; per character when BLEU's tokenizer is ``char``), a mean of sentence scores. (SLRT publishes
  tf_seq2seq's ROUGE-L, beta = P / R: none of these.)
- ``predictions.jsonl`` (key, reference, prediction) is written next to ``scores.json``.
"""

from __future__ import annotations

import json
import random
import sys
import regex
import unicodedata
from pathlib import Path

import torch

from pipeline.errors import SignfeatError
from trainer.data import (Collate, ShardStream, batches, check_visual_input, extraction_failures, list_shards, mixed_features, require_streams,
                          shard_counts)

# ------------------------------------------------------------------------------------------------ metrics


def bleu_scores(predictions: list[str], references: list[str], tokenize: str = "13a", lowercase: bool = False) -> dict:
    """BLEU-1..4 (cumulative, corpus level) and sacrebleu's signature of BLEU-4."""
    from sacrebleu.metrics import BLEU

    out: dict = {}
    for n in range(1, 5):
        # force: sacrebleu's "you forgot to detokenize" warning fires on every PHOENIX reference (" ." ends them
        # all, as the corpus writes it), where attaching the periods scores the same
        metric = BLEU(tokenize=tokenize, lowercase=lowercase, max_ngram_order=n, force=True)
        out[f"bleu{n}"] = metric.corpus_score(predictions, [references]).score
        if n == 4:
            out["bleu_signature"] = str(metric.get_signature())
    return out


# Chinese characters and Japanese kana: one token each (no spaces between words). Other scripts: words of
# letters, combining marks (Devanagari's and Thai's vowel signs: without them "का" and "कि" were one word)
# and digits; Korean is written with spaces, so a Hangul word stays one token.
_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}"
_TOKEN = regex.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[\p{{L}}\p{{M}}\p{{N}}])+")


class UnicodeTokenizer:
    """A rouge-score tokenizer for any script: lowercased words of Unicode letters, combining marks and digits
    (so ``süden`` and ``किताब`` stay one word), each Chinese character or kana a token; Porter stemming of ASCII words longer than 3 characters,
    as rouge-score's own tokenizer does."""

    def __init__(self, use_stemmer: bool = True):
        from nltk.stem import porter

        self.stemmer = porter.PorterStemmer() if use_stemmer else None

    def tokenize(self, text: str) -> list[str]:
        # NFC first: a decomposed "ü" (u + combining diaeresis, as macOS file names and some corpora write it)
        # would otherwise split the word at the combining mark
        tokens = _TOKEN.findall(unicodedata.normalize("NFC", text).lower())
        if self.stemmer is not None:
            tokens = [self.stemmer.stem(t) if len(t) > 3 and t.isascii() else t for t in tokens]
        return tokens


def rouge_l(predictions: list[str], references: list[str], unicode: bool = False, lowercase: bool = False) -> float:
    """Mean sentence ROUGE-L F1 (x100) of rouge-score with stemming."""
    from rouge_score import rouge_scorer

    tokenizer = UnicodeTokenizer() if unicode else None
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True, tokenizer=tokenizer)
    return _mean_x100(scorer.score(reference, prediction)["rougeL"].fmeasure for prediction, reference in _cased(predictions, references, lowercase))


def _cased(predictions: list[str], references: list[str], lowercase: bool):
    """(prediction, reference) pairs, lowercased when asked."""
    for prediction, reference in zip(predictions, references):
        yield (prediction.lower(), reference.lower()) if lowercase else (prediction, reference)


def _mean_x100(values) -> float:
    values = list(values)
    return 100.0 * sum(values) / len(values) if values else 0.0


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming, one row kept)."""
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l_coco(predictions: list[str], references: list[str], characters: bool = False, lowercase: bool = False,
                 beta: float = 1.2) -> float:
    """ROUGE-L as the COCO caption evaluation computes it, the one signjoey and nlg-eval (GFSLT-VLP) report for
    sign language translation: per sentence, the LCS of the tokens (split at each space of the text stripped at
    its ends, as nlg-eval strips it; punctuation kept, no stemming; characters, spaces dropped, with
    ``characters``, as COCO scores characters joined by spaces) gives precision P and recall R, and
    F = (1 + beta^2) P R / (R + beta^2 P); the mean over sentences, x100. rouge-score cannot weight recall
    (its F is beta 1), hence this one. (SLRT's ROUGE-L is tf_seq2seq's, with beta = P / R: not this.)"""
    def sentence(prediction: str, reference: str) -> float:
        if characters:  # COCO splits "" into [""]: an empty pair is one matching token, in both modes
            hyp = [c for c in prediction if not c.isspace()] or [""]
            ref = [c for c in reference if not c.isspace()] or [""]
        else:
            hyp, ref = prediction.strip().split(" "), reference.strip().split(" ")
        lcs = _lcs_length(ref, hyp) if hyp and ref else 0
        if not lcs:
            return 0.0
        p, r = lcs / len(hyp), lcs / len(ref)
        return (1 + beta**2) * p * r / (r + beta**2 * p)

    return _mean_x100(sentence(p, r) for p, r in _cased(predictions, references, lowercase))


_CJK_CHAR = regex.compile(rf"[{_CJK}]")


def resolve_bleu_tokenize(tokenize: str, references: list[str]) -> str:
    """``auto`` -> ``char`` when more than half of the references' letters and digits are Chinese characters or
    kana (they are written without spaces: 13a would count a sentence as one word), else ``13a``."""
    if tokenize != "auto":
        return tokenize
    text = "".join(references)
    letters = sum(ch.isalnum() for ch in text)
    return "char" if letters and len(_CJK_CHAR.findall(text)) > letters / 2 else "13a"


def score(predictions: list[str], references: list[str], tokenize: str = "auto", lowercase: bool = False) -> dict:
    if len(predictions) != len(references):  # zip-like scorers would silently score the shorter list only
        raise SignfeatError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:  # sacrebleu fails with an IndexError; a mean over no sentence is no score
        raise SignfeatError("no predictions to score")
    # NFC: every metric sees one spelling of each character (a decomposed "ü" in the references made BLEU and
    # rougeL lower, while rougeL_unicode, which normalised, did not move)
    predictions = [unicodedata.normalize("NFC", p) for p in predictions]
    references = [unicodedata.normalize("NFC", r) for r in references]
    tokenize = resolve_bleu_tokenize(tokenize, references)
    scores = bleu_scores(predictions, references, tokenize, lowercase)
    scores["rougeL"] = rouge_l(predictions, references, unicode=False, lowercase=lowercase)
    scores["rougeL_unicode"] = rouge_l(predictions, references, unicode=True, lowercase=lowercase)
    scores["rougeL_coco"] = rouge_l_coco(predictions, references, characters=tokenize == "char", lowercase=lowercase)
    scores.update(bleu_tokenize=tokenize, lowercase=lowercase,
                  rouge="rougeL, rougeL_unicode: rouge-score, mean sentence F1, Porter stemming, case-insensitive whatever lowercase "
                  "says (both tokenizers lowercase, as rouge-score's does); rougeL: its default tokenizer ([a-z0-9] only), "
                  "rougeL_unicode: Unicode-aware tokenizer. rougeL_coco: COCO caption evaluation's (signjoey, nlg-eval), "
                  f"mean sentence F with beta 1.2, tokens {'characters' if tokenize == 'char' else 'split at spaces'}, no stemming. "
                  "All on NFC text", samples=len(predictions))
    return scores


# ------------------------------------------------------------------------------------------------ running


def eval_shards(recipe, split: str) -> tuple[list[str], list[int], dict[str, dict]]:
    """The split's shards, sample counts and what made their features, checked: the recipe's streams are there
    and there is a sample (a split whose clips all failed extraction has only empty shards; the scorers cannot
    take zero)."""
    urls = list_shards(recipe.data.shards, split)
    counts = shard_counts(urls)  # first: a tar the extraction did not commit is named as such, not for lacking streams
    features = require_streams(urls, recipe.data.streams, recipe.stream_widths())
    if not sum(counts):
        raise SignfeatError(f"split {split!r}: its {len(urls)} shard(s) under {recipe.data.shards} hold no samples; nothing to evaluate")
    return urls, counts, features


def refuse_other_features(trained: dict, given: dict, trained_on: str, split: str) -> None:
    """A model trained on one extraction's features, given another's (another model, token or scales for a
    stream) predicts nonsense without an error: refused. Shards that do not record their settings pass."""
    clash = mixed_features(trained, given)
    if clash:
        raise SignfeatError(f"split {split!r}: its features were made with other settings than {trained_on}'s ({'; '.join(clash[:3])}); "
                            "give the shards of the extraction the model was trained on")


def evaluate_model(model, recipe, split: str, out_dir: Path | None, extra: dict | None = None) -> dict:
    """Translate ``split`` in order with ``model``; scores (with ``extra`` added) and predictions (written to
    ``out_dir``)."""
    from trainer.loop import in_context_examples

    e, d = recipe.eval, recipe.data
    urls, counts, _ = eval_shards(recipe, split)
    stream = ShardStream(urls, counts, d.streams, train=False, batch_size=e.batch_size, widths=recipe.stream_widths(),
                         crop_streams=d.crop_streams, max_frames=d.max_frames, max_len=d.max_len, zero_visual=d.zero_visual)
    collate = Collate(model.tokenizer, d.streams, d.max_target_tokens)
    examples = in_context_examples(recipe)  # training split only; fixed seed: same prompts every run
    rng = random.Random(recipe.llm.in_context.seed)
    device = model.logit_scale.device
    keys, ids, references, predictions = [], [], [], []
    was_training = model.training
    model.eval()
    for batch in batches(stream, collate, num_workers=0, drop_last=False):
        if e.max_samples and len(keys) >= e.max_samples:
            break
        # a sample's own sentence is never its example (it may also be a training sentence: PHOENIX repeats many)
        extras = [examples.draw(text, rng) for text in batch.texts] if examples is not None else None
        with torch.no_grad(), _autocast(device):
            predictions += model.generate(batch.to(device), num_beams=e.num_beams, max_new_tokens=e.max_new_tokens,
                                          do_sample=e.do_sample, top_p=e.top_p, extras=extras)
        keys += batch.keys
        ids += [meta.get("id") for meta in batch.metas]  # the corpus's own id (the key is made safe for tar names)
        references += batch.texts
    if e.max_samples:
        keys, ids, references, predictions = keys[: e.max_samples], ids[: e.max_samples], references[: e.max_samples], predictions[: e.max_samples]
    model.train(was_training)
    # a sample without a text has no reference: scoring it against "" would count a perfect model wrong. It is
    # translated all the same (predictions.jsonl holds every sample; an unlabelled split is translated, not scored)
    scored = [i for i, r in enumerate(references) if r]
    if len(scored) < len(keys):
        first = next(k for k, r in zip(keys, references) if not r)
        print(f"eval {split}: {len(keys) - len(scored)} sample(s) without a text are translated but not scored (first: {first})", file=sys.stderr)
    if scored:
        scores = score([predictions[i] for i in scored], [references[i] for i in scored], e.bleu_tokenize, e.lowercase)
    else:
        scores = {"samples": 0}
    scores["translated"] = len(keys)
    scores["unscored_without_text"] = len(keys) - len(scored)
    failed = extraction_failures(urls, split)
    if failed and not e.max_samples:
        # test-set scores are compared with published ones, which assume the whole test set
        print(f"note: eval {split}: {sum(failed.values())} clip(s) of split {split!r} failed extraction "
              f"({', '.join(f'{k}: {v}' for k, v in sorted(failed.items()))}; the output's failures.parquet says why): "
              f"scored on {len(keys)} of {len(keys) + sum(failed.values())} clips", file=sys.stderr)
    scores["failed_extraction"] = dict(sorted(failed.items()))
    scores.update(split=split, decoding={"num_beams": e.num_beams, "max_new_tokens": e.max_new_tokens,
                                         "do_sample": e.do_sample, **({"top_p": e.top_p} if e.do_sample else {})},
                  in_context=recipe.llm.in_context.enabled, **(extra or {}))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / "predictions.jsonl").open("w", encoding="utf-8") as f:
            for key, clip_id, reference, prediction in zip(keys, ids, references, predictions):
                f.write(json.dumps({"key": key, "id": clip_id, "reference": reference or None, "prediction": prediction}, ensure_ascii=False) + "\n")
        (out_dir / "scores.json").write_text(json.dumps(scores, indent=1, ensure_ascii=False), encoding="utf-8")
    return {"scores": scores, "predictions": predictions, "references": references, "keys": keys}


def _autocast(device: torch.device):
    from trainer.loop import autocast

    return autocast(device)


def evaluate_checkpoint(checkpoint: str | Path, split: str, overrides: list[str] | None = None,
                        out_dir: str | Path | None = None) -> dict:
    """Rebuild the recipe's model from a checkpoint (recipe inside it, ``overrides`` on top), evaluate."""
    from trainer.loop import checkpoint_file, file_in_the_way, load_checkpoint, pick_device, recipe_changes, refuse_model_changes, resolve_checkpoint
    from trainer.llm import build_model
    from trainer.recipe import recipe_from_dict

    path = resolve_checkpoint(checkpoint)
    state = checkpoint_file(path, "state.json")
    recipe = recipe_from_dict(state["recipe"], overrides)
    changed = recipe_changes(state["recipe"], recipe.to_dict())
    refuse_model_changes(path, changed)  # the scores would be of another model than the checkpoint's
    if changed:  # another split's shards, beam size, ...: allowed, never silently (scores.json records them)
        print(f"evaluating {path} with a changed recipe: {'; '.join(changed)}", file=sys.stderr)
    from manifests.formats import normalise_split

    split = normalise_split(split) or split  # validation -> dev, as the manifests name it
    device = pick_device(recipe)
    out = Path(out_dir) if out_dir is not None else path / f"eval-{split}"
    if (blocker := file_in_the_way(out)) is not None:  # found after translating the whole split, the scores were lost
        raise SignfeatError(f"--out {out}: {blocker} is a file; give a folder for predictions.jsonl and scores.json")
    if (out / "scores.json").is_file():  # comparing eval settings replaced the earlier results without a word
        print(f"note: {out} holds an earlier evaluation: its predictions.jsonl and scores.json are replaced "
              "(give --out DIR to keep both)", file=sys.stderr)
    urls, _, features = eval_shards(recipe, split)  # before the model is loaded
    refuse_other_features(state.get("stream_features") or {}, features, f"checkpoint {path}", split)
    check_visual_input(recipe, urls, split)
    model = build_model(recipe, device, tokenizer_dir=path)
    load_checkpoint(path, model)
    result = evaluate_model(model, recipe, split, out, extra={"recipe_changes": changed})
    result["out_dir"] = str(out)
    return result
