"""Training throughput: reading from shards vs the same model fed from batches already in memory.

    python bench/train.py                                   # spamo_tiny on synthetic shards, CPU
    python bench/train.py --shards demo_out/features        # on the demo shards
    python bench/train.py --recipe configs/recipes/spamo.yaml --device cuda --tiny-llm 0 --synthetic-widths 0
        # GPU: the spamo recipe at real sizes (Flan-T5-XL needs its weights; random-weight adapter)

Both runs do the same optimizer steps (forward, backward, clip, AdamW) on the same model; the only
difference is where batches come from. Printed: samples/s of each and the ratio; the data loading cost is
1 - shards/memory (target <= 10%).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

# the repository first, and not this folder: bench/pipeline.py, extractors.py and motion.py would shadow the packages of
# those names, also in Ray's workers (Ray gives them the script's folder when the driver's sys.path holds it)
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from trainer.loop import DataPosition, Dist, autocast, build_optimizer, seed_everything, train_batches  # noqa: E402
from trainer.llm import build_model  # noqa: E402
from trainer.recipe import load_recipe  # noqa: E402


def synthetic_shards(root: Path, samples: int, widths: dict[str, int], frames: int) -> str:
    """Shards in the extraction layout with random features of the recipe's streams (``frames`` per clip)."""
    import numpy as np
    import webdataset as wds

    from shards.sample import encode_sample

    rng = np.random.default_rng(0)
    words = ["hallo", "regen", "sonne", "morgen", "heute", "kalt", "warm", "wind"]
    folder = root / "train"
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(0, samples, 64):
        with wds.TarWriter(str(folder / f"bench-{shard // 64:06d}.tar"), encoder=False) as sink:
            for i in range(shard, min(samples, shard + 64)):
                n = int(rng.integers(frames // 2, frames + 1))
                streams = {name: rng.normal(size=(n if name != "videomae" else max(1, n // 8 - 1), w)).astype(
                    np.float32 if name == "smplx623" else np.float16) for name, w in widths.items()}
                text = " ".join(rng.choice(words, size=int(rng.integers(3, 8))))
                sink.write({"__key__": f"b{i:06d}", **encode_sample(f"b{i:06d}", {"id": i, "text": text, "split": "train"}, streams)})
    return str(root)


def timed_steps(model, optimizer, batches, steps: int, device, warmup: int = 3) -> float:
    """Samples/s over ``steps`` optimizer steps (after ``warmup`` untimed ones); batches from an iterator."""
    count, started = 0, None
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started, count = time.perf_counter(), 0
        batch = next(batches).to(device)
        with autocast(device):
            loss = model(batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        count += len(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default=str(Path(__file__).resolve().parents[1] / "configs/recipes/spamo_tiny.yaml"))
    p.add_argument("--shards", help="extraction output to read (default: synthetic shards in a temp folder)")
    p.add_argument("--samples", type=int, default=512, help="synthetic shards: number of samples")
    p.add_argument("--frames", type=int, default=120, help="synthetic shards: max frames per clip (PHOENIX ~116)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (2-core CPU: 0 is fastest; GPU machine: 4+)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args(argv)

    tmp = tempfile.TemporaryDirectory()
    overrides = [f"device={args.device}", f"data.num_workers={args.workers}", f"data.batch_size={args.batch_size}",
                 "vt_align.warmup_steps=0", "progress=false", *args.overrides]
    recipe = load_recipe(args.recipe, overrides)
    shards = args.shards or synthetic_shards(Path(tmp.name), args.samples,
                                             {s: recipe.stream_width(s) for s in recipe.data.streams}, args.frames)
    recipe = load_recipe(args.recipe, [*overrides, f"data.shards={shards}"])
    device = torch.device(args.device)
    seed_everything(0)
    model = build_model(recipe, device).train()
    optimizer, _ = build_optimizer(model, recipe)

    from_shards = (b for _, b in train_batches(recipe, model.tokenizer, Dist(), DataPosition()))
    in_memory = [batch for _, (_, batch) in zip(range(8), train_batches(recipe, model.tokenizer, Dist(), DataPosition()))]

    def cycle():
        while True:
            yield from in_memory

    timed_steps(model, optimizer, cycle(), 2, device)  # warm everything up once
    memory1 = timed_steps(model, optimizer, cycle(), args.steps, device)
    shards_rate = timed_steps(model, optimizer, from_shards, args.steps, device)
    memory2 = timed_steps(model, optimizer, cycle(), args.steps, device)  # again: load drift on a shared machine
    memory = (memory1 + memory2) / 2
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"recipe {recipe.name} on {device} ({torch.get_num_threads()} threads), batch {recipe.data.batch_size}, "
          f"{args.workers} loader workers, {trainable:,} trainable parameters, {args.steps} steps each")
    print(f"from shards:  {shards_rate:8.1f} samples/s")
    print(f"from memory:  {memory:8.1f} samples/s  (mean of a run before and after)")
    print(f"ratio shards/memory: {shards_rate / memory:.3f}  -> data loading costs {100 * (1 - shards_rate / memory):.1f}% "
          f"(target <= 10%)")
    # the two memory runs bracket the shard run: when they disagree by more than the cost measured, or the shard
    # arm beat memory, the machine's load changed under the run and the ratio is noise
    if shards_rate > memory or abs(memory1 - memory2) / memory > max(0.05, 1 - shards_rate / memory):
        print("WARNING: the memory arm's two runs disagree (or the shard arm beat it): the machine was busy; rerun", file=sys.stderr)
    if device.type == "cuda":
        print(f"step time: {1000 * recipe.data.batch_size / shards_rate:.1f} ms/step (bf16 autocast), "
              f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
