from pathlib import Path

import pytest

from pipeline.errors import SignfeatError
from trainer.recipe import load_recipe, recipe_from_dict

RECIPES = sorted(Path("configs/recipes").glob("*.yaml"))


def test_every_recipe_loads_and_validates():
    names = {p.stem for p in RECIPES}
    assert {"spamo", "llava_slt", "sl_llama", "lslm"} <= names
    assert {f"{n}_tiny" for n in ("spamo", "llava_slt", "sl_llama", "lslm")} <= names
    for path in RECIPES:
        recipe = load_recipe(path)
        assert recipe.follows, f"{path}: say which paper / release numbers it follows"
        assert (recipe.llm.tiny is not None) == path.stem.endswith("_tiny")


def test_spamo_recipe_numbers():
    r = load_recipe("configs/recipes/spamo.yaml")
    assert (r.optim.lr, r.optim.betas, r.optim.weight_decay, r.optim.warmup_ratio) == (6e-4, [0.9, 0.98], 0.01, 0.1)
    assert (r.data.batch_size, r.optim.grad_accum, r.optim.clip_grad, r.data.max_frames) == (8, 2, 1.0, 512)
    assert (r.llm.lora.r, r.llm.lora.alpha, r.llm.lora.dropout, r.llm.lora.target_modules) == (16, 32, 0.1, ["q", "v"])
    assert r.vt_align.enabled and r.vt_align.warmup_steps == 4000 and r.vt_align.weight == 1.0 and r.vt_align.pooling == "masked"
    assert r.eval.num_beams == 5 and r.eval.max_new_tokens == 64 and not r.eval.do_sample and r.eval.lowercase
    assert not r.llm.in_context.enabled
    assert load_recipe("configs/recipes/llava_slt.yaml").llm.lora.r == 8


def test_overrides_apply_and_are_typed():
    r = load_recipe("configs/recipes/spamo.yaml", ["optim.lr=1e-4", "vt_align.pooling=unmasked", "data.streams=[clip_s2, videomae]"])
    assert r.optim.lr == 1e-4 and r.vt_align.pooling == "unmasked"


@pytest.mark.parametrize("override, message", [
    ("optim.lr_max=1", "optim.lr_max: unknown key"),
    ("optimizer.lr=1", "optimizer: unknown key"),
    ("optim.lr=fast", "optim.lr: expected a number"),
    ("optim.lr=-1", "optim.lr: must be a finite number > 0"),
    ("vt_align.pooling=median", "vt_align.pooling"),
    ("eval.bleu_tokenize=words", "eval.bleu_tokenize"),
    ("llm.kind=decoder_only", "does not match"),
    ("llm.prompt=no sign here", "{sign}"),
    ("data.batch_size=2.5", "data.batch_size: expected an integer"),
    ("lr", "expected key=value"),
    # accepted before, then misused: every step checkpointed / evaluated, no eval sample, NaN training,
    # negative clip_grad read as "no clipping", AdamW's own error only after the model loaded
    ("checkpoint_every=-1", "checkpoint_every: must be a finite number >= 0"),
    ("eval.every=-1", "eval.every: must be a finite number >= 0"),
    ("eval.max_samples=-1", "eval.max_samples: must be a finite number >= 0"),
    ("optim.lr=.inf", "optim.lr: must be a finite number > 0"),
    ("optim.eps=-1", "optim.eps: must be a finite number > 0"),
    ("optim.weight_decay=-0.1", "optim.weight_decay: must be a finite number >= 0"),
    ("optim.clip_grad=-1", "optim.clip_grad: must be a finite number >= 0"),
    ("vt_align.weight=.nan", "vt_align"),
    ("adapter.stream_widths.clip_s2=0", "adapter.stream_widths.clip_s2: must be a finite number > 0"),
    ("adapter.standardize_samples=0", "adapter.standardize_samples: must be a finite number > 0"),
    # accepted before: NaN logits from the first VT-Align step on
    ("vt_align.init_logit_scale=.nan", "vt_align.init_logit_scale"),
    ("vt_align.init_logit_scale=1000", "vt_align.init_logit_scale"),
    # accepted before: one stream fed as both inputs, no BPE merges, logs silently every step, the run written into
    # the current folder, an overflow in seed_everything, a tokenizer that needs extra packages failing after training
    ("data.streams=[clip_s2, clip_s2]", "data.streams: a stream named twice"),
    ("log_every=-5", "log_every: must be a finite number > 0"),
    ("out_dir=", "out_dir: give the run's folder"),
    ("seed=99999999999999999999999", "seed: expected 0 <= seed < 2\*\*63"),
    ("eval.bleu_tokenize=ja-mecab", "eval.bleu_tokenize ja-mecab: .*(install|mecab)"),
    # a typo'd placeholder was trained into the prompt as written
    ("llm.prompt={sign} Translate into {lang}.", r"llm.prompt: unknown placeholder\(s\) {lang}; the prompt takes {sign} and {language}"),
])
def test_bad_settings_are_clear_errors(override, message):
    with pytest.raises(SignfeatError, match=message.replace("{", r"\{").replace("}", r"\}")):
        load_recipe("configs/recipes/spamo.yaml", [override])


def test_missing_recipe_file_is_an_error(tmp_path):
    with pytest.raises(SignfeatError, match="no such file"):
        load_recipe(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("data: {streams: [clip_s2]}\nadapter: {kind: sign_adapter}\n")
    with pytest.raises(SignfeatError, match="spatial, motion"):
        load_recipe(tmp_path / "bad.yaml")


def test_defaults_validate():
    assert recipe_from_dict({}).llm.name == "google/flan-t5-xl"


@pytest.mark.parametrize("override, message", [
    # each gave a traceback only after the model was built (ZeroDivisionError, a negative dimension, a size
    # mismatch inside attention, "Target modules not found")
    ("llm.tiny.hidden=0", "llm.tiny.hidden: must be a finite number > 0"),
    ("llm.tiny.ffn=-5", "llm.tiny.ffn: must be a finite number > 0"),
    ("llm.tiny.layers=0", "llm.tiny.layers: must be a finite number > 0"),
    ("llm.tiny.heads=3", "multiple of heads"),
    ("llm.tiny.kv_heads=3", "multiple of kv_heads"),
])
def test_bad_tiny_llm_settings_are_clear_errors(override, message):
    with pytest.raises(SignfeatError, match=message):
        load_recipe("configs/recipes/llava_slt_tiny.yaml", [override])


def test_a_bpe_vocabulary_must_have_a_size():
    with pytest.raises(SignfeatError, match="llm.bpe_vocab_size: must be a finite number > 0"):
        load_recipe("configs/recipes/spamo_tiny.yaml", ["llm.bpe_vocab_size=0"])


def test_split_names_are_read_as_the_manifests_name_them():
    recipe = load_recipe("configs/recipes/spamo_tiny.yaml", ["data.eval_split=validation", "data.train_split=Training"])
    assert (recipe.data.eval_split, recipe.data.train_split) == ("dev", "train")


def test_a_string_override_takes_its_text_as_given():
    """As YAML, a prompt starting with {sign} (SpaMo's) was a parse error, one with ": " too, and " #..." was cut
    off as a comment without a word (a data.shards path with a # in it pointed elsewhere)."""
    path = "configs/recipes/spamo_tiny.yaml"
    for prompt in ("{sign} Translate into {language}.", "user: {sign} Translate. assistant:", "Translate {sign} into {language} #2"):
        assert load_recipe(path, [f"llm.prompt={prompt}"]).llm.prompt == prompt
    assert load_recipe(path, ["data.shards=/data/run #3/features"]).data.shards == "/data/run #3/features"
    assert load_recipe(path, ['llm.prompt="{sign} quoted {language}"']).llm.prompt == "{sign} quoted {language}"
    assert load_recipe(path, ["optim.lr=1e-3"]).optim.lr == pytest.approx(1e-3)  # other settings still read as YAML
    assert load_recipe(path, ['llm.prompt="{sign}" means {language}']).llm.prompt == '"{sign}" means {language}'
    with pytest.raises(SignfeatError, match="data.streams=\\[clip_s2': value is not valid YAML"):
        load_recipe(path, ["data.streams=[clip_s2"])


def test_a_recipe_error_names_the_file(tmp_path):
    """`signfeat train --config extract.yaml` said only "extractors: unknown key": which file, of a base chain?"""
    extraction = tmp_path / "extract.yaml"
    extraction.write_text("extractors:\n  - {name: dinov2, tiny: true}\n")
    with pytest.raises(SignfeatError, match=f"^recipe {extraction}: extractors: unknown key"):
        load_recipe(extraction)
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {Path('configs/recipes/spamo.yaml').resolve()}\noptim: {{lr: -1}}\n")
    with pytest.raises(SignfeatError, match=f"^recipe {child}: optim.lr"):
        load_recipe(child)
