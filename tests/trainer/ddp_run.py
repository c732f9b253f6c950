"""Run under torchrun by test_loop.py's DDP test: ``signfeat train`` exactly as the CLI runs it
(``pipeline.cli.main`` -> ``trainer.cli`` -> ``trainer.loop.train``), with per-rank records for the test.

    torchrun --nproc_per_node 2 -m tests.trainer.ddp_run RECORDS_DIR [--own-group] train --config ... [KEY=VALUE ...]

Without ``--own-group`` the trainer makes the process group (as under ``signfeat train``) and must destroy it;
with it, this script makes the group before training, the trainer must leave it alone, and the VT-Align check
runs in it after training. Each rank writes to RECORDS_DIR:
  ``rank{R}.json``         the keys of every micro-batch it trained on (with its data position), the exit code,
                           and whether a process group was left after training
  ``rank{R}.safetensors``  its trainable weights after the last step (rank 0's checkpoint holds only rank 0's)
  ``vt{R}.safetensors``    (``--own-group``) VT-Align over this rank's share of a fixed global batch, across the
                           ranks: the loss and the gradients of its inputs and of the logit scale
Nothing is patched but two wrappers that watch: the batches the loop draws and the model train() returns.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import torch

# the fixed global batch of the VT-Align check (the test rebuilds it with the same function)
VT_PER_RANK, VT_FRAMES, VT_TOKENS, VT_WIDTH = 3, 5, 4, 6


def vt_global_batch(world_size: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    n = VT_PER_RANK * world_size
    lengths = torch.randint(1, VT_FRAMES + 1, (n,), generator=g)
    tokens = torch.randint(1, VT_TOKENS + 1, (n,), generator=g)
    return {
        "visual": torch.randn(n, VT_FRAMES, VT_WIDTH, generator=g),
        "visual_mask": torch.arange(VT_FRAMES)[None] < lengths[:, None],
        "text": torch.randn(n, VT_TOKENS, VT_WIDTH, generator=g),
        "text_mask": torch.arange(VT_TOKENS)[None] < tokens[:, None],
        "logit_scale": torch.tensor(math.log(1 / 0.07)),
    }


def main() -> int:
    from safetensors.torch import save_file

    import trainer.loop as loop
    from pipeline.cli import main as cli
    from trainer.llm import trainable_state

    import torch.distributed as dist

    records = Path(sys.argv[1])
    own_group = sys.argv[2] == "--own-group"
    rank = int(os.environ["RANK"])
    if own_group:
        dist.init_process_group("gloo")
    seen: list[dict] = []

    draw = loop.train_batches

    def watched_batches(recipe, tokenizer, dist, start):
        for position, batch in draw(recipe, tokenizer, dist, start):
            seen.append({"epoch": position.epoch, "batch": position.batch, "keys": list(batch.keys)})
            yield position, batch

    run = loop.train

    def watched_train(recipe, **kwargs):
        summary = run(recipe, **kwargs)
        save_file(trainable_state(summary["model"]), str(records / f"rank{rank}.safetensors"))
        return summary

    loop.train_batches, loop.train = watched_batches, watched_train
    code = cli(sys.argv[3:] if own_group else sys.argv[2:])
    record = {"exit": code, "batches": seen, "group_after_train": dist.is_initialized()}
    (records / f"rank{rank}.json").write_text(json.dumps(record), encoding="utf-8")
    if own_group:
        if code == 0:
            vt_align_check(records, rank)
        # as the trainer ends: a barrier, so that no gloo worker thread still holds the all-gather's tensors (it
        # aborted a rank now and then when it dropped them during the interpreter's exit), then the group destroyed
        dist.barrier()
        dist.destroy_process_group()
    return code


def vt_align_check(records: Path, rank: int) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    from trainer.vt_align import vt_align_loss

    world = dist.get_world_size()
    full = vt_global_batch(world)
    mine = slice(rank * VT_PER_RANK, (rank + 1) * VT_PER_RANK)
    visual = full["visual"][mine].clone().requires_grad_(True)
    text = full["text"][mine].clone().requires_grad_(True)
    scale = full["logit_scale"].clone().requires_grad_(True)
    loss = vt_align_loss(visual, full["visual_mask"][mine], text, full["text_mask"][mine], scale)
    loss.backward()
    save_file({"loss": loss.detach().reshape(1), "visual_grad": visual.grad, "text_grad": text.grad,
               "scale_grad": scale.grad.reshape(1)}, str(records / f"vt{rank}.safetensors"))


if __name__ == "__main__":
    code = main()
    # Everything is written and the group destroyed. A rank still aborted now and then in the interpreter's exit
    # ("terminate called without an active exception" from a native thread, no Python frame left; about 1 run in
    # 25, with or without the destroy): exiting without the interpreter's teardown keeps that PyTorch teardown
    # abort from failing a test whose results are all in. `signfeat train` itself still exits normally.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
