import numpy as np
import pytest
import torch

from tests.trainer.conftest import tiny_recipe
from trainer.data import Collate
from trainer.llm import IGNORE, build_model, split_prompt
from trainer.recipe import recipe_from_dict


def _model(kind, tmp_path, **llm):
    recipe = recipe_from_dict(tiny_recipe(tmp_path, tmp_path / "run", kind, llm=llm) if llm else tiny_recipe(tmp_path, tmp_path / "run", kind))
    return build_model(recipe, torch.device("cpu")).eval()


def _batch(model, texts=("hallo regen", "süden")):
    rng = np.random.default_rng(0)
    samples = [{"key": f"k{i}", "meta": {}, "text": t, "clip_s2": rng.normal(size=(20 + 8 * i, 16)).astype(np.float32),
                "videomae": rng.normal(size=(3 + i, 8)).astype(np.float32)} for i, t in enumerate(texts)]
    return Collate(model.tokenizer, ["clip_s2", "videomae"], 64)(samples)


def _inputs(kind, tmp_path):
    """A tiny model of ``kind``, a batch, the adapter output and the spliced LLM inputs."""
    model = _model(kind, tmp_path)
    batch = _batch(model)
    visual, mask = model.adapter(batch.features, batch.lengths)
    return model, batch, visual, mask, model.build_inputs(visual, mask, batch)


def test_decoder_only_labels_cover_exactly_the_target_tokens(tmp_path):
    model, batch, visual, mask, inputs = _inputs("qwen2", tmp_path)
    prefix, suffix = model.prompt_ids()
    for i, text in enumerate(batch.texts):
        target = list(text.encode("utf-8"))
        expected = [b + 3 for b in target] + [model.tokenizer.eos_token_id]  # ByT5 ids: byte + 3, then </s>
        labelled = inputs.labels[i][inputs.labels[i] != IGNORE].tolist()
        assert labelled == expected
        # left padded: padding first, then prompt / visual / suffix, then the target at the end
        n_real = int(inputs.attention_mask[i].sum())
        n_prompt = len(prefix) + int(mask[i].sum()) + len(suffix)
        assert n_real == n_prompt + len(expected)
        assert torch.all(inputs.labels[i][: inputs.labels.shape[1] - len(expected)] == IGNORE)
        assert torch.all(inputs.attention_mask[i][: inputs.labels.shape[1] - n_real] == 0)


def test_decoder_only_loss_ignores_prompt_and_padding(tmp_path):
    model, batch, visual, mask, inputs = _inputs("qwen2", tmp_path)
    loss = model(batch)["ce"]
    logits = model.llm(inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask).logits
    # independent reference: log-softmax picked at each target token's position, averaged by hand
    logp, picked = torch.log_softmax(logits, -1), []
    for i in range(len(batch)):
        positions = (inputs.labels[i] != IGNORE).nonzero().flatten()
        picked += [-logp[i, p - 1, inputs.labels[i, p]] for p in positions.tolist()]
    assert torch.allclose(loss, torch.stack(picked).mean(), atol=1e-5)


def test_encoder_decoder_input_is_visual_then_prompt_with_end_token(tmp_path):
    model, batch, visual, mask, inputs = _inputs("t5", tmp_path)
    prefix, suffix = model.prompt_ids()
    assert prefix == []  # "{sign}Translate the given sentence into German.": visual tokens first
    assert model.tokenizer.decode(suffix[:-1]) == "Translate the given sentence into German."
    assert suffix[-1] == model.tokenizer.eos_token_id
    for i in range(len(batch)):
        n_visual = int(mask[i].sum())
        assert int(inputs.attention_mask[i].sum()) == n_visual + len(suffix)
        assert torch.allclose(inputs.embeds[i, :n_visual], visual[i, :n_visual])
        prompt = model.embed_ids(suffix)
        assert torch.allclose(inputs.embeds[i, n_visual : n_visual + len(suffix)], prompt)
    # labels: the target tokens (+ </s>) only; padding -> -100, never the pad token
    assert inputs.labels.shape == batch.target_ids.shape
    assert torch.equal(inputs.labels != IGNORE, batch.target_mask)
    assert not torch.any(inputs.labels == model.tokenizer.pad_token_id)


def test_base_llm_is_frozen_and_lora_is_trainable(tmp_path):
    model = _model("t5", tmp_path)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("adapter.") or "lora_" in n or n == "logit_scale" for n in trainable)
    assert any("lora_" in n for n in trainable)


def test_spamo_lora_defaults(tmp_path):
    recipe = recipe_from_dict({})
    assert (recipe.llm.lora.r, recipe.llm.lora.alpha, recipe.llm.lora.dropout, recipe.llm.lora.target_modules) == (16, 32, 0.1, ["q", "v"])


def test_prompt_template_split():
    p = split_prompt("[INST] <sign>{sign}</sign> Translate the sign language into {language} text. [/INST]", "German")
    assert p.prefix == "[INST] <sign>" and p.suffix == "</sign> Translate the sign language into German text. [/INST]"


@pytest.mark.parametrize("kind", ["t5", "qwen2"])
def test_generate_is_deterministic_by_default(tmp_path, kind):
    model = _model(kind, tmp_path)
    batch = _batch(model)
    first = model.generate(batch, num_beams=2, max_new_tokens=6)
    assert first == model.generate(batch, num_beams=2, max_new_tokens=6)
    assert len(first) == 2


def test_in_process_bpe_tokenizer_round_trips_any_script():
    from trainer.llm import train_bpe_tokenizer

    texts = ["hallo regen süden", "今天冷明天", "hello rain tomorrow"] * 5
    tok = train_bpe_tokenizer(texts, 300)
    assert tok.decode(tok("süden 今天 rain", add_special_tokens=False)["input_ids"]) == "süden 今天 rain"
    assert len(tok("hallo regen süden", add_special_tokens=False)["input_ids"]) < len("hallo regen süden".encode())
    assert tok.eos_token_id is not None and tok.pad_token_id is not None


def test_per_sample_language_from_dataset(tmp_path):
    model = _model("t5", tmp_path, language_by_dataset={"csl": "Chinese"})
    assert model.language_of({"dataset": "csl"}) == "Chinese" and model.language_of({"dataset": "x"}) == "German"
    _, suffix = model.prompt_ids("", "Chinese")
    assert model.tokenizer.decode(suffix[:-1]) == "Translate the given sentence into Chinese."


def test_in_context_examples_come_from_the_training_split_never_the_own_text(tiny_shards):
    import random

    from shards.reader import read_samples
    from trainer.loop import in_context_examples

    recipe = recipe_from_dict(tiny_recipe(tiny_shards, tiny_shards / "unused", "t5", data={"train_split": "big"},
                                          llm={"in_context": {"enabled": True, "num": 2}}))
    examples = in_context_examples(recipe)
    big = sorted(s["json"]["text"] for p in sorted((tiny_shards / "big").glob("*.tar")) for s in read_samples(p))
    assert sorted(t for t, _ in examples.pairs) == big  # the training split's texts, nothing from dev / test
    rng, own = random.Random(0), big[0]
    for _ in range(100):
        chosen = examples.choose(own, rng)
        assert len(chosen) == 2 and own not in chosen and all(c in big for c in chosen)
    assert examples.draw(own, rng).startswith(" ")
    assert not recipe_from_dict({}).llm.in_context.enabled  # off by default


def test_in_context_examples_with_only_the_own_text_to_show_is_an_error_not_a_hang():
    import random
    import signal

    from pipeline.errors import SignfeatError
    from trainer.llm import InContextExamples

    examples = InContextExamples([{"text": None}, {"text": ""}, {}], num=2, source_field="")  # extract writes "" as null
    assert [t for t, _ in examples.pairs] == ["", "", ""]
    signal.signal(signal.SIGALRM, lambda *a: pytest.fail("choose() never returned"))
    signal.alarm(10)
    try:
        with pytest.raises(SignfeatError, match="every training sample has the text ''"):
            examples.choose("", random.Random(0))
        assert examples.choose("other", random.Random(0)) == ["", ""]
    finally:
        signal.alarm(0)
