import math

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from trainer.evaluate import UnicodeTokenizer, bleu_scores, rouge_l, score

PREDS = ["the cold wind blows from the north today", "tomorrow rain in the south", "hello thanks", "warm sun shining all day"]
REFS = ["the cold wind comes from the north today", "tomorrow rain in the south and west", "hello thank you", "warm sun all day long"]


def _cumulative_bleu(result, n):
    """BLEU-n by hand from sacrebleu's 4-gram statistics: geometric mean of the first n precisions x BP."""
    precisions = [result.counts[i] / result.totals[i] for i in range(n)]
    bp = 1.0 if result.sys_len > result.ref_len else math.exp(1 - result.ref_len / result.sys_len)
    return 100 * bp * math.exp(sum(math.log(p) for p in precisions) / n)


def test_bleu_matches_sacrebleu_called_directly():
    ours = bleu_scores(PREDS, REFS)
    direct = sacrebleu.corpus_bleu(PREDS, [REFS])
    assert abs(ours["bleu4"] - direct.score) < 1e-9
    for n in range(1, 5):
        assert abs(ours[f"bleu{n}"] - _cumulative_bleu(direct, n)) < 1e-6
    assert "tok:13a" in ours["bleu_signature"] and "case:mixed" in ours["bleu_signature"]


def test_bleu_lowercase_and_zh_tokenizer_match_sacrebleu():
    preds, refs = ["Hello Rain"], ["hello rain"]
    assert abs(bleu_scores(preds, refs, lowercase=True)["bleu4"] - sacrebleu.corpus_bleu(preds, [refs], lowercase=True).score) < 1e-9
    assert abs(bleu_scores(preds, refs, lowercase=True)["bleu2"] - 100.0) < 1e-9 and bleu_scores(preds, refs)["bleu1"] == 0.0
    zh_p, zh_r = ["今天冷明天下雨"], ["今天很冷明天下雨"]
    ours = bleu_scores(zh_p, zh_r, tokenize="zh")
    assert abs(ours["bleu4"] - sacrebleu.corpus_bleu(zh_p, [zh_r], tokenize="zh").score) < 1e-9
    assert "tok:zh" in ours["bleu_signature"]


def test_rouge_l_matches_rouge_score_called_directly():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    direct = 100 * sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(PREDS, REFS)) / len(PREDS)
    assert abs(rouge_l(PREDS, REFS) - direct) < 1e-9
    # on ASCII text the Unicode-aware tokenizer agrees with rouge-score's own
    assert abs(rouge_l(PREDS, REFS, unicode=True) - direct) < 1e-9


def test_unicode_tokenizer_keeps_umlauts_and_chinese():
    tok = UnicodeTokenizer()
    assert tok.tokenize("Süden, Regen!") == ["süden", "regen"]
    assert tok.tokenize("今天冷") == ["今", "天", "冷"]
    assert tok.tokenize("raining days") == ["rain", "day"]  # Porter stemming of ASCII words
    assert rouge_l(["今天冷"], ["今天冷"]) == 0.0  # rouge-score's own tokenizer drops Chinese entirely
    assert rouge_l(["今天冷"], ["今天冷"], unicode=True) == 100.0
    assert rouge_l(["süden"], ["sueden"], unicode=True) == 0.0


def test_score_reports_names_and_settings():
    s = score(PREDS, REFS, lowercase=True)
    assert {"bleu1", "bleu2", "bleu3", "bleu4", "bleu_signature", "rougeL", "rougeL_unicode", "lowercase"} <= set(s)
    assert s["lowercase"] is True and "case:lc" in s["bleu_signature"]


def test_score_refuses_lists_of_different_lengths():
    from pipeline.errors import SignfeatError

    with pytest.raises(SignfeatError, match="2 predictions for 3 references"):
        score(["a b", "c"], ["a b", "c", "d"])


def test_unicode_tokenizer_reads_decomposed_letters_as_one_word():
    import unicodedata

    composed = "Süden Übermorgen"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    assert UnicodeTokenizer().tokenize(decomposed) == UnicodeTokenizer().tokenize(composed) == ["süden", "übermorgen"]
    assert rouge_l([decomposed], [composed], unicode=True) == 100.0


def test_unicode_tokenizer_keeps_vowel_signs_and_hangul_words():
    # combining vowel signs (Devanagari, Thai) were dropped: different words scored 100; Hangul is written with
    # spaces between words, so a Korean word is one token, not one per syllable
    tok = UnicodeTokenizer()
    assert tok.tokenize("किताब का") == ["किताब", "का"]
    assert rouge_l(["का"], ["कि"], unicode=True) == 0.0
    assert rouge_l(["ดี"], ["ดู"], unicode=True) == 0.0
    assert tok.tokenize("안녕하세요 세계") == ["안녕하세요", "세계"]
    assert tok.tokenize("カタカナです") == ["カ", "タ", "カ", "ナ", "で", "す"]


def test_score_of_nothing_is_a_clear_error():
    from pipeline.errors import SignfeatError

    with pytest.raises(SignfeatError, match="no predictions to score"):
        score([], [])


def test_rouge_l_coco_is_the_beta_1_2_f_of_rouge_score_s_own_lcs_precision_and_recall():
    """The ROUGE-L signjoey / SLRT / nlg-eval publish weights recall by beta 1.2 over space-split tokens; checked
    against the precision and recall of rouge-score's independent LCS, on tokens split the same way."""
    from rouge_score.rouge_scorer import _score_lcs

    from trainer.evaluate import rouge_l_coco

    preds = [*PREDS, "regen im süden .", "", "a b", "x y z"]
    refs = [*REFS, "regen und wind im süden .", "wind", "a b c d e f", "x y z"]
    expected = 0.0
    for p, r in zip(preds, refs):
        lcs = _score_lcs(r.split(" "), p.split(" "))
        if lcs.precision and lcs.recall:
            expected += 2.44 * lcs.precision * lcs.recall / (lcs.recall + 1.44 * lcs.precision)
    assert rouge_l_coco(preds, refs) == pytest.approx(100 * expected / len(preds), abs=1e-9)
    assert rouge_l_coco(["a b"], ["a b c d e f"]) == pytest.approx(100 * 2.44 * (1 / 3) / (1 / 3 + 1.44))  # P 1, R 1/3
    assert rouge_l_coco(["今天很冷。"], ["今天冷。"], characters=True) == pytest.approx(100 * 2.44 * 0.8 / (1 + 1.44 * 0.8))  # P .8, R 1
    assert rouge_l_coco(["Regen"], ["regen"]) == 0.0 and rouge_l_coco(["Regen"], ["regen"], lowercase=True) == 100.0
    # as pycocoevalcap / nlg-eval score them: an empty pair is one matching token in both modes (char mode gave 0),
    # and spaces at a prediction's ends do not count (nlg-eval strips each line; " hello world" gave 83)
    assert rouge_l_coco(["", "北京"], ["", "北京"], characters=True) == rouge_l_coco(["", "a b"], ["", "a b"]) == 100.0
    assert rouge_l_coco([" hello world", "good morning "], ["hello world", "good morning"]) == 100.0


def test_auto_bleu_tokenizer_scores_chinese_per_character_and_nfc_makes_spellings_one():
    zh_p, zh_r = ["今天冷明天下雨"], ["今天很冷明天下雨"]
    s = score(zh_p, zh_r)
    assert s["bleu_tokenize"] == "char" and "tok:char" in s["bleu_signature"]
    assert s["bleu4"] == pytest.approx(sacrebleu.corpus_bleu(zh_p, [zh_r], tokenize="char").score, abs=1e-9)
    assert score(PREDS, REFS)["bleu_tokenize"] == "13a" and score(PREDS, REFS, tokenize="zh")["bleu_tokenize"] == "zh"
    assert score(["2019年 today"], ["2019年 today"])["bleu_tokenize"] == "13a"  # one Chinese character of 11 letters
    nfd, nfc = "heute regen im su\u0308den und wind", "heute regen im s\u00fcden und wind"
    decomposed = score([nfc], [nfd])
    assert all(decomposed[m] == pytest.approx(100.0) for m in ("bleu1", "bleu4", "rougeL", "rougeL_unicode", "rougeL_coco")), decomposed


def test_phoenix_style_references_raise_no_detokenize_warning(caplog):
    """Every PHOENIX reference ends in " .": sacrebleu warned four times per eval that the data was not detokenized."""
    refs = [f"am tag {i} regen im norden ." for i in range(120)]
    sacrebleu.corpus_bleu(refs, [refs])  # the warning this test looks for, from sacrebleu called directly
    assert "tokenized period" in caplog.text
    caplog.clear()
    score(refs, refs)
    assert "tokenized period" not in caplog.text and "detokenize" not in caplog.text
