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


def _gpt2(recipe, tokenizer):
    """A tiny GPT-2 (learned absolute positions) as the LLM of a SignTranslator."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from trainer.llm import SignTranslator

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=512,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.5,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return SignTranslator(recipe, tokenizer, GPT2LMHeadModel(config)).eval()


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_a_decoder_only_batch_loss_is_that_of_its_samples_alone(tmp_path, family):
    """Left padding must not move a sample's positions: the batch's CE equals the token-weighted mean of each
    sample's CE computed alone (GPT-2's learned positions were counted through the padding)."""
    recipe = recipe_from_dict(tiny_recipe(tmp_path, tmp_path / "run", "qwen2"))
    model = build_model(recipe, torch.device("cpu")).eval()
    if family == "gpt2":
        model = _gpt2(recipe, model.tokenizer)
    rng = np.random.default_rng(0)
    samples = [{"key": f"k{i}", "meta": {}, "text": t, "clip_s2": rng.normal(size=(12 + 9 * i, 16)).astype(np.float32),
                "videomae": rng.normal(size=(2 + i, 8)).astype(np.float32)}
               for i, t in enumerate(("hallo regen sonne morgen", "süden", "kalt warm"))]
    collate = Collate(model.tokenizer, ["clip_s2", "videomae"], 64)
    with torch.no_grad():
        together = float(model(collate(samples))["ce"])
        alone = [float(model(collate([s]))["ce"]) for s in samples]
    tokens = [int(collate([s]).target_mask.sum()) for s in samples]
    assert together == pytest.approx(np.average(alone, weights=tokens), abs=2e-5)


def test_bos_is_prepended_exactly_when_the_tokenizer_adds_one(tmp_path):
    """A Llama 3 tokenizer adds <|begin_of_text|> in its post-processor while transformers reports
    add_bos_token False; the prompt starts with BOS as the tokenizer's own output does."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    from trainer.llm import SignTranslator, tokenizer_adds_bos, train_bpe_tokenizer

    model = _model("qwen2", tmp_path)
    plain = train_bpe_tokenizer(["hallo regen", "süden wind"], 280)
    llama3 = train_bpe_tokenizer(["hallo regen", "süden wind"], 280)
    bos = llama3.bos_token_id
    llama3.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    llama3.save_pretrained(tmp_path / "llama3")
    llama3 = AutoTokenizer.from_pretrained(tmp_path / "llama3")
    assert llama3("hallo")["input_ids"][0] == bos  # what the tokenizer itself does
    assert tokenizer_adds_bos(llama3) and not tokenizer_adds_bos(plain)
    recipe = recipe_from_dict(tiny_recipe(tmp_path, tmp_path / "run", "qwen2"))
    for tok, expected in ((llama3, [bos]), (plain, [])):
        translator = SignTranslator(recipe, tok, model.llm)
        prefix, _ = translator.prompt_ids()
        assert prefix[: len(expected)] == expected and (expected or prefix[:1] != [bos])


def test_the_models_generation_config_does_not_change_eval_decoding(tmp_path):
    """Qwen2.5-Instruct ships repetition_penalty 1.05, top_k 20, temperature 0.7: eval decodes as scores.json
    says (plain beam search / greedy), whatever the model's generation_config holds."""
    model = _model("qwen2", tmp_path)
    batch = _batch(model, ("hallo regen sonne morgen", "süden wind"))
    plain = model.generate(batch, num_beams=1, max_new_tokens=12)
    config = model.llm.generation_config
    config.repetition_penalty, config.no_repeat_ngram_size, config.do_sample, config.top_k, config.temperature = 3.0, 1, True, 2, 0.3
    # the model's own generate() follows it (the check below could fail) ...
    visual, mask = model.adapter(batch.features, batch.lengths)
    inputs = model.build_inputs(visual, mask, batch, with_targets=False)
    own = model.llm.generate(inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask, num_beams=1, max_new_tokens=12,
                             do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
    assert model.tokenizer.batch_decode(own, skip_special_tokens=True) != plain
    # ... eval does not
    assert model.generate(batch, num_beams=1, max_new_tokens=12) == plain


def test_lora_all_linear_shorthand(tmp_path):
    model = _model("qwen2", tmp_path, lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["all-linear"]})
    parts = [name.split(".") for name, _ in model.llm.named_parameters() if ".lora_A." in name]
    wrapped = {p[p.index("lora_A") - 1] for p in parts}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= wrapped
    assert not any("lm_head" in name and "lora" in name for name, _ in model.llm.named_parameters())


def test_a_checkpoint_of_the_other_kind_is_a_one_line_error(tmp_path):
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    from pipeline.errors import SignfeatError

    folder = tmp_path / "t5"
    T5ForConditionalGeneration(T5Config(vocab_size=384, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)).save_pretrained(folder)
    ByT5Tokenizer().save_pretrained(folder)
    recipe = recipe_from_dict(tiny_recipe(tmp_path, tmp_path / "run", "qwen2", llm={"name": str(folder), "tiny": None}))
    with pytest.raises(SignfeatError, match="is not a decoder_only model.*encoder_decoder"):
        build_model(recipe, torch.device("cpu"))


def test_bf16_encoder_decoder_loss_is_taken_in_float32(tmp_path):
    model = _model("t5", tmp_path, dtype="bfloat16")
    batch = _batch(model)
    visual, mask = model.adapter(batch.features, batch.lengths)
    inputs = model.build_inputs(visual, mask, batch)
    with torch.no_grad():
        logits = model.llm(inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask, labels=inputs.labels).logits
        reference = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), inputs.labels.flatten(), ignore_index=IGNORE)
        loss = model(batch)["ce"]
    assert loss.dtype == torch.float32 and float(loss) == pytest.approx(float(reference), abs=1e-6)


def test_training_refuses_a_sample_without_text_and_eval_leaves_it_unscored(tmp_path):
    from pipeline.errors import SignfeatError

    model = _model("t5", tmp_path)
    rng = np.random.default_rng(0)
    samples = [{"key": k, "meta": {"id": k}, "text": t, "clip_s2": rng.normal(size=(8, 16)).astype(np.float32),
                "videomae": rng.normal(size=(2, 8)).astype(np.float32)} for k, t in (("a", "hallo"), ("b", ""))]
    with pytest.raises(SignfeatError, match="training sample b .* has no text"):
        Collate(model.tokenizer, ["clip_s2", "videomae"], 64, require_text=True)(samples)
    assert Collate(model.tokenizer, ["clip_s2", "videomae"], 64)(samples).texts == ["hallo", ""]  # eval reads it
