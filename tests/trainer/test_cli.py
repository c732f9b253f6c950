"""The CLI end to end on tiny recipes, plus a couple of steps of every tiny recipe on synthetic shards."""

import json
import shutil

import pytest

from pipeline.cli import main
from tests.trainer.conftest import PER_FRAME

TINY_OVERRIDES = {
    "spamo_tiny": ["adapter.stream_widths={clip_s2: 16, videomae: 8}", "vt_align.warmup_steps=1"],
    "llava_slt_tiny": [f"adapter.stream_widths={{dinov2: {PER_FRAME}}}"],
    "sl_llama_tiny": [f"adapter.stream_widths={{dinov2: {PER_FRAME}}}"],
    "lslm_tiny": [],
}


@pytest.mark.parametrize("name", sorted(TINY_OVERRIDES))
def test_tiny_recipes_train_and_eval_through_the_cli(name, tiny_shards, tmp_path, capsys):
    out = tmp_path / name
    common = [f"data.shards={tiny_shards}", "data.batch_size=2", "eval.max_new_tokens=4", "progress=false", "device=cpu"]
    assert main(["train", "--config", f"configs/recipes/{name}.yaml", f"out_dir={out}", "optim.max_steps=3",
                 "eval.at_end=false", *common, *TINY_OVERRIDES[name]]) == 0
    assert "checkpoint" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(out), "--split", "test", "eval.max_new_tokens=4", "eval.num_beams=2"]) == 0
    printed = capsys.readouterr().out
    assert "BLEU-4" in printed and "ROUGE-L" in printed and "nrefs:1" in printed
    lines = (out / "checkpoints" / "step-000003" / "eval-test" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["reference"] == "hallo regen sonne morgen"


def test_bad_override_is_a_one_line_error(capsys):
    assert main(["train", "--config", "configs/recipes/spamo_tiny.yaml", "optim.nope=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "optim.nope: unknown key" in err


def test_missing_shards_is_a_one_line_error(tmp_path, capsys):
    assert main(["train", "--config", "configs/recipes/spamo_tiny.yaml", f"data.shards={tmp_path}", f"out_dir={tmp_path / 'o'}",
                 "progress=false"]) == 2
    assert "no shards for split 'train'" in capsys.readouterr().err
    # a list written as an override is one string: it was taken for a URL and failed with a garbled one
    assert main(["train", "--config", "configs/recipes/spamo_tiny.yaml", f'data.shards=["s3://b/x/train/a.tar?scheme=http"]',
                 f"out_dir={tmp_path / 'o'}", "progress=false"]) == 2
    assert "give one folder, output URL or brace pattern" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 1])
def test_recipe_stream_the_shards_lack_fails_before_the_model_is_built(tiny_shards, tmp_path, capsys, monkeypatch, workers):
    import tarfile

    import trainer.llm
    import trainer.loop
    from trainer.recipe import load_recipe

    shards = tmp_path / "dinov2_only"
    for split in ("train", "test"):
        (shards / split).mkdir(parents=True)
        with tarfile.open(tiny_shards / split / "syn-000000.tar") as src, tarfile.open(shards / split / "syn-000000.tar", "w") as dst:
            for m in src.getmembers():
                if m.name.endswith((".json", ".dinov2.npy")):
                    dst.addfile(m, src.extractfile(m))

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the shards were checked")

    monkeypatch.setattr(trainer.loop, "build_model", no_model)
    monkeypatch.setattr(trainer.llm, "build_model", no_model)  # what eval imports
    assert main(["train", "--config", "configs/recipes/spamo_tiny.yaml", f"data.shards={shards}", f"out_dir={tmp_path / 'o'}",
                 "progress=false", "device=cpu", f"data.num_workers={workers}", "adapter.standardize=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no stream clip_s2, videomae (they hold ['dinov2'])" in err
    # a checkpoint evaluated on these shards: the same line, before the model is rebuilt
    (tmp_path / "ck").mkdir()
    recipe = load_recipe("configs/recipes/spamo_tiny.yaml").to_dict()
    (tmp_path / "ck" / "state.json").write_text(json.dumps({"recipe": recipe}))
    assert main(["eval", "--checkpoint", str(tmp_path / "ck"), "--split", "test", f"data.shards={shards}"]) == 2
    assert "no stream clip_s2, videomae (they hold ['dinov2'])" in capsys.readouterr().err


def test_empty_or_missing_eval_split_fails_before_training(tiny_shards, tmp_path, capsys, monkeypatch):
    import tarfile

    import trainer.loop

    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards / "train", shards / "train")
    monkeypatch.setattr(trainer.loop, "build_model", lambda *a, **k: pytest.fail("the model was built before the splits were checked"))
    args = ["train", "--config", "configs/recipes/spamo_tiny.yaml", f"data.shards={shards}", f"out_dir={tmp_path / 'o'}",
            "progress=false", "device=cpu", "data.batch_size=2", "adapter.stream_widths={clip_s2: 16, videomae: 8}"]
    assert main(args) == 2  # no dev split at all: it was found missing only after training
    assert "no shards for split 'dev'" in capsys.readouterr().err
    (shards / "dev").mkdir()
    tarfile.open(shards / "dev" / "syn-000000.tar", "w").close()  # every dev clip failed extraction: an empty shard
    assert main(args) == 2  # was an IndexError inside sacrebleu after training
    assert "split 'dev': its 1 shard(s) under" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(_checkpoint_dir(tmp_path)), "--split", "dev", f"data.shards={shards}"]) == 2
    assert "hold no samples; nothing to evaluate" in capsys.readouterr().err


def _checkpoint_dir(tmp_path):
    from trainer.recipe import load_recipe

    (tmp_path / "ck").mkdir(exist_ok=True)
    (tmp_path / "ck" / "state.json").write_text(json.dumps({"recipe": load_recipe("configs/recipes/spamo_tiny.yaml").to_dict()}))
    return tmp_path / "ck"


def test_empty_train_split_fails_before_the_model_is_built(tiny_shards, tmp_path, capsys, monkeypatch):
    import tarfile

    import trainer.loop

    shards = tmp_path / "shards"
    (shards / "train").mkdir(parents=True)
    tarfile.open(shards / "train" / "syn-000000.tar", "w").close()  # every training clip failed extraction
    monkeypatch.setattr(trainer.loop, "build_model", lambda *a, **k: pytest.fail("the model was built before the split was checked"))
    # standardize: the statistics pass over zero samples was a KeyError traceback
    assert main(["train", "--config", "configs/recipes/spamo_tiny.yaml", f"data.shards={shards}", f"out_dir={tmp_path / 'o'}",
                 "progress=false", "device=cpu", "eval.at_end=false", "adapter.standardize=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "split 'train' under" in err and "hold no samples" in err


def test_overrides_may_follow_options(tiny_shards, tmp_path, capsys):
    # argparse took the positional overrides in one run: `eval k=v --out D k2=v2` was "unrecognized arguments"
    out = tmp_path / "run"
    assert main(["train", "--config", "configs/recipes/spamo_tiny.yaml", f"data.shards={tiny_shards}", "optim.max_steps=2",
                 *TINY_OVERRIDES["spamo_tiny"], "data.batch_size=2", "eval.at_end=false", "progress=false", f"out_dir={out}"]) == 0
    assert main(["eval", "--checkpoint", str(out), "eval.num_beams=1", "--out", str(tmp_path / "e"), "eval.max_samples=2",
                 "eval.max_new_tokens=4"]) == 0
    assert "(2 samples)" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(out), "--bogus", "x=1"]) == 2  # anything else unknown is still an error
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_eval_out_that_is_a_file_is_refused_before_the_model_loads(tiny_shards, tmp_path, capsys, monkeypatch):
    """The whole split was translated and scored, then mkdir raised FileExistsError and the scores were lost."""
    import trainer.llm

    monkeypatch.setattr(trainer.llm, "build_model", lambda *a, **k: pytest.fail("the model was built before --out was checked"))
    (tmp_path / "scores").write_text("x")
    for out in ("scores", "scores/sub"):  # below a file as well: NotADirectoryError after the whole split
        assert main(["eval", "--checkpoint", str(_checkpoint_dir(tmp_path)), "--split", "test", f"data.shards={tiny_shards}",
                     "--out", str(tmp_path / out)]) == 2
        assert f"{tmp_path / 'scores'} is a file; give a folder" in capsys.readouterr().err


def test_shards_that_are_not_there_are_named_as_such(tmp_path, capsys):
    """Every case said 'evaluate on a split the shards have (data.eval_split=test), or train without evaluating',
    also for a training split, a folder that does not exist, and data.shards given empty."""
    base = ["train", "--config", "configs/recipes/spamo_tiny.yaml", f"out_dir={tmp_path / 'o'}", "progress=false"]
    assert main(base + [f"data.shards={tmp_path / 'nope'}"]) == 2
    assert "data.shards " in (err := capsys.readouterr().err) and "no such folder" in err and "eval" not in err
    assert main(base + ["data.shards="]) == 2
    assert "data.shards is empty" in capsys.readouterr().err



# an atexit hook that leaves a mark when the interpreter's normal exit runs
EXIT_PROBE = "import atexit, os, pathlib, runpy, sys\natexit.register(lambda: pathlib.Path(os.environ['EXIT_MARKER']).write_text('ran'))\n"


@pytest.mark.parametrize("how", ["console script", "python -m trainer.cli"])
def test_train_and_eval_leave_without_the_native_teardown(how, tiny_shards, tmp_path):
    """pyarrow (apache/arrow#34314) aborted now and then in the interpreter's native teardown: a finished 2-rank
    train under torchrun exited 134. train and eval now leave through os._exit once their output is flushed: an
    atexit hook never runs, and what they print still arrives through a pipe."""
    import os
    import subprocess
    import sys

    marker = tmp_path / "teardown"
    # sys.argv is [-c, signfeat, COMMAND, ...]; trainer.cli's __main__ reads it as the console script's argv
    script = EXIT_PROBE + ("from pipeline.cli import entry; entry(sys.argv[2:])" if how == "console script"
                           else "sys.argv = sys.argv[1:]; runpy.run_module('trainer.cli', run_name='__main__')")
    env = {**os.environ, "EXIT_MARKER": str(marker)}
    out = tmp_path / "run"
    train = ["train", "--config", "configs/recipes/lslm_tiny.yaml", f"out_dir={out}", "optim.max_steps=2", "eval.at_end=false",
             f"data.shards={tiny_shards}", "data.batch_size=2", "progress=false", "device=cpu"]
    done = subprocess.run([sys.executable, "-c", script, "signfeat", *train], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trained lslm_tiny: 2 steps" in done.stdout and not marker.exists()
    assert (out / "checkpoints" / "latest.json").exists()
    bad = subprocess.run([sys.executable, "-c", script, "signfeat", "eval", "--checkpoint", str(tmp_path / "nowhere")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("signfeat: error:") and not marker.exists(), bad.stderr[-1000:]


def test_the_training_demo_finds_its_recipe_from_any_working_folder(tmp_path):
    """`python -m trainer.demo` read its default recipe relative to the working folder: from anywhere but the
    repository it said 'recipe configs/recipes/spamo_tiny.yaml: no such file' before looking at the shards."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "trainer.demo", "--shards", str(tmp_path / "nowhere")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and f"data.shards {tmp_path / 'nowhere'}: no such folder" in done.stderr, done.stderr[-1000:]


def test_a_run_trained_on_relative_shards_evaluates_from_another_folder(tiny_shards, tmp_path, monkeypatch, capsys):
    """data.shards was recorded as typed ('features'): `signfeat eval --checkpoint RUN` from another folder said
    'data.shards features: no such folder'. The run records it absolute."""
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[2] / "configs" / "recipes" / "lslm_tiny.yaml"
    monkeypatch.chdir(tiny_shards.parent)
    out = tmp_path / "run"
    assert main(["train", "--config", str(recipe),
                 f"out_dir={out}", "optim.max_steps=1", "eval.at_end=false", f"data.shards={tiny_shards.name}", "data.batch_size=2",
                 "progress=false", "device=cpu"]) == 0
    recorded = json.loads((out / "recipe.json").read_text())["data"]["shards"]
    assert recorded == str(tiny_shards)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--split", "test", "eval.max_new_tokens=2", "eval.num_beams=1"]) == 0
    assert "BLEU-4" in capsys.readouterr().out
    # --resume reads the recorded shards too: the recipe file's relative default was read from where the command ran
    capsys.readouterr()
    assert main(["train", "--config", str(recipe), f"out_dir={out}", "optim.max_steps=2", "eval.at_end=false", "data.batch_size=2",
                 "progress=false", "device=cpu", "--resume", str(out)]) == 0
    assert f"--resume: reading data.shards {tiny_shards}, as the checkpoint's run did" in capsys.readouterr().err
    assert json.loads((out / "recipe.json").read_text())["data"]["shards"] == str(tiny_shards)


def test_clips_that_failed_extraction_are_said_in_training_and_in_the_scores(tiny_shards, tmp_path, capsys):
    """A test clip the extraction could not use left the split without a word: "test (1 samples)" read as the
    whole test set. predictions.jsonl named samples by key only (made safe for tar names), not by the corpus id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.extract import FAILURE_SCHEMA

    shards = tmp_path / "out"
    for split in ("train", "test"):
        shutil.copytree(tiny_shards / split, shards / split)
    failed = [{"id": f"{split}-x", "key": f"{split}-x", "shard": f"{split}/syn-000000", "split": split, "stage": "decode",
               "error_class": kind, "message": "..."} for split, kind in [("train", "too_long"), ("test", "changed"), ("test", "changed")]]
    failed.append({**failed[1], "shard": "test/other-000000"})  # a shard the run does not read: not counted
    pq.write_table(pa.Table.from_pylist(failed, schema=FAILURE_SCHEMA), shards / "failures.parquet")
    out = tmp_path / "run"
    assert main(["train", "--config", "configs/recipes/lslm_tiny.yaml", f"out_dir={out}", "optim.max_steps=1", "eval.at_end=false",
                 f"data.shards={shards}", "data.batch_size=2", "progress=false", "device=cpu"]) == 0
    assert ("note: 1 clip(s) of split 'train' failed extraction (too_long: 1; the output's failures.parquet says why): "
            "training on the other 4") in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(out), "--split", "test", "eval.max_new_tokens=2", "eval.num_beams=1", "--out", str(tmp_path / "ev")]) == 0
    assert "note: eval test: 2 clip(s) of split 'test' failed extraction (changed: 2; " in capsys.readouterr().err
    scores = json.loads((tmp_path / "ev" / "scores.json").read_text())
    assert scores["failed_extraction"] == {"changed": 2} and scores["samples"] == 4
    written = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert [w["id"] for w in written] == [f"test-{i:05d}" for i in range(4)]
