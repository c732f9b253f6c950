"""The training loop, top to bottom. One script for one process or many (``torchrun --nproc_per_node N``).

    recipe -> seeds -> model (frozen LLM + LoRA + adapter) -> AdamW + warm-up/cosine -> resume?
      -> for each optimizer step: its own seed (seed_step) -> grad_accum micro-batches (VT-Align only during its warm-up, then
         CE + lambda * VT-Align) -> clip -> step -> log (JSON lines) -> checkpoint / eval now and then

Checkpoints (``OUT/checkpoints/step-000100/``) hold no pickle and no base weights:
``trainable.safetensors`` (adapter incl. BatchNorm statistics, LoRA, logit scale), ``optimizer.safetensors``
(AdamW moments and step counts), ``tokenizer.json`` (only for ``llm.tokenizer: bpe``, trained on
the run's training texts) and ``state.json`` (step, data position, scheduler, optimizer
hyperparameters, the recipe, a checksum of the frozen base). Resuming restores all of it and replays the data
stream to the saved position; every step seeds its random draws from (seed, rank, step), so a resumed run, on
one process or many, continues exactly as if never stopped.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import random
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from pipeline.errors import SignfeatError
from shards import location
from trainer.data import (Batch, Collate, ShardStream, batches, batches_per_epoch, check_target_tokens, check_visual_input, extraction_failures,
                          list_shards, read_split_texts, require_streams, shard_counts)
from trainer.llm import TOKENIZER_FILE, InContextExamples, SignTranslator, base_checksum, build_model, load_trainable_state, trainable_state
from trainer.recipe import Recipe

# ------------------------------------------------------------------------------------------------ setup


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # setup_distributed made the process group: train() destroys it when it is done

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Dist:
    """torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; without them this is a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    import torch.distributed as dist_

    owns_group = not dist_.is_initialized()  # a caller's own group is left to the caller
    if owns_group:
        dist_.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist_.get_rank(), dist_.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns_group)


def pick_device(recipe: Recipe) -> torch.device:
    if recipe.device == "cpu" or (recipe.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SignfeatError("device: cuda requested but no CUDA device is visible")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device):
    """bf16 autocast on GPU (SpaMo's release trains in bf16); plain fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_lambda(warmup_steps: int, total_steps: int, min_ratio: float = 0.0):
    """Linear warm-up from 0 to the peak over ``warmup_steps``, then cosine to ``min_ratio`` x peak at
    ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(model: SignTranslator, recipe: Recipe):
    params = [p for p in model.parameters() if p.requires_grad]
    o = recipe.optim
    # SpaMo's release: AdamW(all trainable parameters, lr, eps=1e-8), weight decay on every one of them
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    warmup = int(o.warmup_ratio * o.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, o.max_steps, o.min_lr_ratio))
    return optimizer, scheduler


# ------------------------------------------------------------------------------------------------ data


@dataclass
class DataPosition:
    epoch: int = 0
    batch: int = 0  # micro-batches of this epoch already consumed


def train_shards(recipe: Recipe, dist: Dist) -> tuple[list[str], list[int], dict[str, dict]]:
    """The training split's shards, sample counts and what made their features (``require_streams``), checked:
    the recipe's streams are there, of one extraction, and they make at least one whole batch per rank."""
    d = recipe.data
    urls = list_shards(d.shards, d.train_split)
    counts = shard_counts(urls)  # first: a tar the extraction did not commit is named as such, not for lacking streams
    features = require_streams(urls, d.streams, recipe.stream_widths())
    if not sum(counts):  # every training clip failed extraction: its shards are empty
        raise SignfeatError(f"data: the {len(urls)} shard(s) of split {d.train_split!r} under {d.shards} hold no samples")
    if batches_per_epoch(counts, dist.world_size, d.batch_size) == 0:
        raise SignfeatError(f"data: {sum(counts)} training samples make no whole batch of {d.batch_size} per rank "
                            f"({dist.world_size} ranks); lower data.batch_size")
    return urls, counts, features


def train_batches(recipe: Recipe, tokenizer, dist: Dist, start: DataPosition) -> Iterator[tuple[DataPosition, Batch]]:
    """Micro-batches forever, epoch after epoch; each comes with the position *after* it."""
    d = recipe.data
    urls, counts, _ = train_shards(recipe, dist)
    collate = Collate(tokenizer, d.streams, d.max_target_tokens, d.lowercase_targets, require_text=True)
    epoch, skip = start.epoch, start.batch
    while True:
        stream = ShardStream(urls, counts, d.streams, train=True, batch_size=d.batch_size, rank=dist.rank,
                             world_size=dist.world_size, epoch=epoch, seed=recipe.seed, shard_shuffle=d.shard_shuffle,
                             shuffle_buffer=d.shuffle_buffer, crop_streams=d.crop_streams, max_frames=d.max_frames,
                             max_len=d.max_len, zero_visual=d.zero_visual, widths=recipe.stream_widths())
        for index, batch in enumerate(batches(stream, collate, d.num_workers, drop_last=True)):
            if index < skip:  # resume: replay the epoch's order up to the saved position
                continue
            yield DataPosition(epoch, index + 1), batch
        epoch, skip = epoch + 1, 0


def stream_statistics(recipe: Recipe) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-dimension mean and std of each stream over the training split's first samples (in order)."""
    d = recipe.data
    urls = list_shards(d.shards, d.train_split)
    sums: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    count = {name: 0 for name in d.streams}
    for seen, sample in enumerate(ShardStream(urls, shard_counts(urls), d.streams, train=False, batch_size=1, widths=recipe.stream_widths())):
        if seen >= recipe.adapter.standardize_samples:
            break
        for name in d.streams:
            x = sample[name].astype(np.float64)
            sums[name] = sums.get(name, 0.0) + x.sum(0)
            squares[name] = squares.get(name, 0.0) + (x * x).sum(0)
            count[name] += len(x)
    out = {}
    for name in d.streams:
        if not (np.isfinite(sums[name]).all() and np.isfinite(squares[name]).all()):
            # one NaN / inf feature would make every standardised input, and so every loss, NaN
            raise SignfeatError(f"data: stream {name} of split {d.train_split!r} under {d.shards} holds non-finite values "
                                f"(run `signfeat verify` on the shards)")
        mean = sums[name] / max(1, count[name])
        std = np.sqrt(np.maximum(squares[name] / max(1, count[name]) - mean * mean, 0.0))
        out[name] = (torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32))
    return out


def in_context_examples(recipe: Recipe) -> InContextExamples | None:
    ic = recipe.llm.in_context
    if not ic.enabled:
        return None
    metas = read_split_texts(list_shards(recipe.data.shards, recipe.data.train_split))
    return InContextExamples(metas, ic.num, ic.source_field)


# ------------------------------------------------------------------------------------------------ checkpoints


def data_order(recipe: Recipe, world_size: int, urls: list[str], counts: list[int]) -> dict[str, Any]:
    """What the order of a rank's micro-batches in an epoch depends on. A resume replays the epoch's order up
    to the saved batch index, which means other samples once one of these changed. The training shards count
    by their tar names and sample counts in order (``shard_list``), not by where they lie: the same output
    copied from an object store to a local disk, or its URL spelt with a trailing slash, is the same order
    (checkpoints before it recorded data.shards as written, ``shards``: not compared)."""
    d = recipe.data
    listed = json.dumps([[location.name(u), int(c)] for u, c in zip(urls, counts)])
    return {"ranks": world_size, "num_workers": d.num_workers, "batch_size": d.batch_size, "shuffle_buffer": d.shuffle_buffer,
            "shard_shuffle": d.shard_shuffle, "seed": recipe.seed, "train_split": d.train_split,
            "shard_list": f"{len(urls)} shards, {sum(counts)} samples, {hashlib.sha256(listed.encode()).hexdigest()[:12]}"}


def save_checkpoint(path: Path, model: SignTranslator, optimizer, scheduler, step: int, position: DataPosition,
                    recipe: Recipe, order: dict[str, Any], features: dict | None = None) -> Path:
    """``order``: ``data_order`` of the run; ``features``: what made the training shards' features
    (``require_streams``): eval refuses others."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    opt = optimizer.state_dict()
    tensors = {f"state.{i}.{name}": value.detach().contiguous() for i, s in opt["state"].items() for name, value in s.items()}
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    state = {
        "step": step, "data_position": {"epoch": position.epoch, "batch": position.batch}, "data_order": order,
        "scheduler": scheduler.state_dict(), "param_groups": opt["param_groups"],
        "base_checksum": base_checksum(model), "recipe": recipe.to_dict(),
        "stream_features": features or {},
    }
    (tmp / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
    if recipe.llm.tokenizer == "bpe":  # trained on this run's training texts: eval and resume must not retrain it
        model.tokenizer.backend_tokenizer.save(str(tmp / TOKENIZER_FILE))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)  # a checkpoint folder exists only when complete
    point_latest(path, step)
    return path


def point_latest(checkpoint: Path, step: int) -> None:
    """Name ``checkpoint`` in its folder's latest.json: what ``--resume RUN`` and ``eval --checkpoint RUN`` take."""
    (checkpoint.parent / "latest.json").write_text(json.dumps({"checkpoint": checkpoint.name, "step": step}), encoding="utf-8")


def checkpoint_file(path: Path, name: str):
    """A checkpoint's JSON or safetensors file; one damaged or gone (disk trouble, a hand edit: saves are atomic)
    is one line naming it and the checkpoint before it, not a traceback."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if name.endswith(".json"):
            return json.loads((path / name).read_text(encoding="utf-8"))
        return load_file(str(path / name))
    except (OSError, ValueError, SafetensorError) as exc:
        earlier = [p for p in _step_folders(path.parent) if p.name < path.name]
        instead = f"; the one before it is {earlier[-1]}" if earlier else ""
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[0]
        raise SignfeatError(f"checkpoint {path}: {name} is damaged or missing ({type(exc).__name__}: {why}){instead}") from None


def load_checkpoint(path: Path, model: SignTranslator, optimizer=None, scheduler=None) -> dict:
    state = checkpoint_file(path, "state.json")
    if state["base_checksum"] != base_checksum(model):
        raise SignfeatError(f"checkpoint {path}: the base LLM differs from the one it was trained on (checksum)")
    device = model.logit_scale.device
    load_trainable_state(model, {k: v.to(device) for k, v in checkpoint_file(path, "trainable.safetensors").items()})
    if optimizer is not None:
        tensors = checkpoint_file(path, "optimizer.safetensors")
        opt_state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("state."):
                _, index, name = key.split(".", 2)
                opt_state.setdefault(int(index), {})[name] = value
        as_built = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]  # from the recipe
        optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
        scheduler.load_state_dict(state["scheduler"])
        # the recipe's hyperparameters and schedule at the saved step, not the saved ones: a run resumed with a
        # longer optim.max_steps took its first step at the old schedule's last lr (0 at its end), and a changed
        # optim.lr or weight_decay was printed as a change but not used (unchanged, this sets what was saved)
        for group, built in zip(optimizer.param_groups, as_built):
            group.update(built)
        scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    return state


def _step_folders(folder: Path) -> list[Path]:
    """The complete checkpoints (a state.json) in a checkpoints folder, oldest first."""
    found = [p for p in folder.glob("step-*") if p.name[5:].isdecimal() and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run / checkpoints folder (its latest checkpoint; when the one latest.json names
    was deleted, the newest one still there, said on stderr)."""
    path = Path(path)
    for folder in (path, path / "checkpoints"):
        if (folder / "state.json").is_file():
            return folder
        if (folder / "latest.json").is_file():
            try:
                latest = folder / str(json.loads((folder / "latest.json").read_text(encoding="utf-8"))["checkpoint"])
            except (ValueError, KeyError, TypeError):
                latest = None
            if latest is not None and (latest / "state.json").is_file():
                return latest
            older = _step_folders(folder)
            if not older:
                raise SignfeatError(f"checkpoint {path}: {folder / 'latest.json'} names {latest or 'nothing readable'}, which is gone, "
                                    f"and {folder} holds no other checkpoint")
            print(f"checkpoint {latest or folder / 'latest.json'} is gone or unreadable; using {older[-1]}, the newest one there", file=sys.stderr)
            return older[-1]
    if (path / "recipe.json").is_file() or (path / "log.jsonl").is_file():  # a run's out_dir that saved nothing
        raise SignfeatError(f"checkpoint {path}: this run saved no checkpoint (checkpoint_every: 0, or stopped before its first); "
                            "train it again without --resume (--overwrite replaces its log)")
    raise SignfeatError(f"checkpoint {path}: no state.json or checkpoints/latest.json there")


class RunLock:
    """One training run writes an out_dir at a time: an exclusive lock on ``OUT/.train.lock``, held by rank 0 for the
    run and released by the kernel when the process ends, kill -9 included. Two runs at once (a resume started
    while the run still trained) both exited 0, with a torn log.jsonl and the same checkpoints written twice.
    A POSIX record lock (``lockf``), not ``flock``: forked processes (DataLoader workers) do not inherit it, where a
    flock held through their copy of the descriptor outlived a rank killed with -9 for seconds and refused its resume."""

    NAME = ".train.lock"

    def __init__(self) -> None:
        self.file = None

    def acquire(self, out_dir: Path) -> None:
        """Take the lock of an existing out_dir (nothing when already held, or out_dir is not made yet)."""
        import fcntl

        if self.file is not None or not out_dir.is_dir():
            return
        try:
            file = open(out_dir / self.NAME, "a+", encoding="utf-8")
        except OSError as exc:  # a folder of that name, no write permission
            raise SignfeatError(f"out_dir {out_dir}: cannot open its run lock {self.NAME} ({exc.strerror})") from None
        try:
            fcntl.lockf(file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the whole file, wherever "a+" left the position
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            file.seek(0)
            holder = file.read().strip() or "a process"
            file.close()
            raise SignfeatError(f"out_dir {out_dir} is in use by another training run ({holder}): wait for it to end, "
                                "or give another out_dir") from None
        file.truncate(0)
        file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        file.flush()
        self.file = file

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing the file drops the lock
            self.file = None


def file_in_the_way(folder: Path) -> Path | None:
    """The file that ``folder`` is, or lies below (its first existing ancestor), if one is: mkdir would fail there."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    return existing if existing is not None and not existing.is_dir() else None


def check_out_dir(out_dir: Path) -> None:
    """out_dir, or the first of its parents that exists, must be a folder (a file there was a traceback)."""
    if (blocker := file_in_the_way(out_dir)) is not None:
        raise SignfeatError(f"out_dir {out_dir}: {blocker} is a file, not a folder")


def use_recorded_shards(recipe: Recipe, resume: str | Path) -> None:
    """``--resume`` reads the shards the checkpoint's run read (recorded absolute), not the recipe file's data.shards:
    a relative default (demo_out/features) was read from wherever the command ran, another extraction's shards
    if one lay there. ``data.shards=...`` on the command line still names others (the caller skips this then)."""
    try:
        recorded = (checkpoint_file(resolve_checkpoint(resume), "state.json").get("recipe") or {}).get("data", {}).get("shards")
    except SignfeatError:
        return  # train() says what is wrong with the checkpoint
    if isinstance(recorded, str) and recorded.strip() and recorded != recipe.data.shards:
        print(f"--resume: reading data.shards {recorded}, as the checkpoint's run did (the recipe says {recipe.data.shards}; "
              "give data.shards=... to read others)", file=sys.stderr)
        recipe.data.shards = recorded


def refuse_another_run(out_dir: Path, resume_from: Path | None, overwrite: bool) -> None:
    """A new run (or one resumed from elsewhere) into an out_dir holding another run's checkpoints would mix the
    two: its log appended, same-numbered checkpoints replaced, latest.json pointing at the newcomer's. Refused,
    as extract refuses, unless ``overwrite`` (the old checkpoints, evaluations and log are then deleted)."""
    held = _step_folders(out_dir / "checkpoints")
    if not held or overwrite:
        return
    if resume_from is not None and resume_from.resolve().parent == (out_dir / "checkpoints").resolve():
        return  # going on with this run
    raise SignfeatError(f"out_dir {out_dir} holds another run (checkpoints up to {held[-1].name}); to go on with it: --resume {out_dir}; "
                        f"to start again there: --overwrite (deletes its checkpoints, evaluations and log); or give another out_dir")


def recipe_changes(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every setting that differs between a checkpoint's recipe and the current one
    (where the run writes and whether it shows a progress bar do not count)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        if name in ("out_dir", "progress"):
            continue
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out += recipe_changes(old, new, f"{name}.")
        elif old != new:
            out.append(f"{name}: {old!r} -> {new!r}")
    return out


# Recipe keys under adapter. / llm. (and data.streams) build the model whose trainable weights a checkpoint
# holds; these few do not change what those weights mean: the base model's location (its weights are checked by
# checksum), the compute dtype, LoRA dropout (a training setting) and the prompt's wording.
_SAME_MODEL = ("llm.name", "llm.revision", "llm.dtype", "llm.lora.dropout", "llm.language", "llm.language_by_dataset",
               "llm.prompt", "llm.in_context")


def model_changes(changes: list[str]) -> list[str]:
    """The ``recipe_changes`` that would build another model than a checkpoint's (other shapes, another LoRA
    scaling, another tokenizer): refused at resume and eval, where they were size-mismatch tracebacks or,
    worse, silently different scores."""
    def key(change: str) -> str:
        return change.split(":", 1)[0]

    return [c for c in changes if (key(c).startswith(("adapter.", "llm.")) or key(c) == "data.streams")
            and not any(key(c) == k or key(c).startswith(k + ".") for k in _SAME_MODEL)]


def refuse_model_changes(path: Path, changes: list[str]) -> None:
    refused = model_changes(changes)
    if refused:
        raise SignfeatError(f"checkpoint {path}: {'; '.join(refused)} would build another model than the one trained "
                            "(its adapter / LoRA / tokenizer); drop the override, or train a new run")


def seed_step(seed: int, rank: int, step: int, rng: random.Random) -> None:
    """Seed the random draws of one optimizer step (dropout masks, in-context examples) from (seed, rank, step)
    alone: a resumed run, on any number of ranks, draws what the uninterrupted run drew at each step. Restoring
    saved generator states instead gave every rank rank 0's after a DDP resume."""
    step_seed = int.from_bytes(hashlib.blake2b(f"{seed}|{rank}|{step}".encode(), digest_size=8).digest(), "little")
    torch.manual_seed(step_seed)  # the CPU and every CUDA device
    rng.seed(step_seed)


# ------------------------------------------------------------------------------------------------ the loop


def keep_log_up_to(path: Path, step: int) -> None:
    """Drop the rows of ``path`` (a run's log.jsonl) past ``step``: a resume from an earlier checkpoint would
    otherwise log a second row for each step it trains again."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row_step = json.loads(line).get("step")
        except (ValueError, AttributeError):  # a line cut short by a kill: not a row
            continue
        if not isinstance(row_step, int) or row_step <= step:
            kept.append(line)
    path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


class JsonLog:
    def __init__(self, path: Path | None, append: bool):
        self.file = path.open("a" if append else "w", encoding="utf-8") if path is not None else None

    def write(self, record: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()


def train(recipe: Recipe, *, resume: str | Path | None = None, stop_after_steps: int | None = None, overwrite: bool = False) -> dict:
    """Train as the recipe says. ``resume``: a checkpoint (or run folder) to continue from.
    ``stop_after_steps``: stop (with a checkpoint) after this many optimizer steps of this call, as a job
    killed and resumed would. ``overwrite``: start afresh in an out_dir that holds another run (deleting it).
    Returns a summary (final step, last losses, checkpoint path, eval scores)."""
    lock = RunLock()
    try:
        return _train(recipe, lock, resume=resume, stop_after_steps=stop_after_steps, overwrite=overwrite)
    finally:
        lock.release()


def _train(recipe: Recipe, lock: RunLock, *, resume: str | Path | None, stop_after_steps: int | None, overwrite: bool) -> dict:
    device = pick_device(recipe)
    dist = setup_distributed(device)
    seed_everything(recipe.seed)
    out_dir = Path(recipe.out_dir)
    check_out_dir(out_dir)
    if dist.main:
        lock.acquire(out_dir)  # before anything reads the run there: another process may be writing it
    resume_from = resolve_checkpoint(resume) if resume is not None else None
    refuse_another_run(out_dir, resume_from, overwrite)
    # going on with this out_dir's own run (its log continues); anything else starts the out_dir afresh
    own_run = resume_from is not None and resume_from.resolve().parent == (out_dir / "checkpoints").resolve()
    if own_run and overwrite:
        raise SignfeatError(f"--resume {resume} goes on with the run in out_dir {out_dir}, and --overwrite would delete it: give one of them")
    if resume_from is not None and not own_run and dist.main:  # a run started from another's checkpoint: say where it goes
        hint = f"; to go on in its own run folder, give out_dir={resume_from.parent.parent}" if resume_from.parent.name == "checkpoints" else ""
        print(f"resuming {resume_from} into out_dir {out_dir} (the recipe's) as a run of its own: its checkpoints and log go there{hint}",
              file=sys.stderr)

    # the shards checked before the LLM loads: a missing stream, or an eval split that is missing or empty,
    # would otherwise fail after the model is built, or after the whole training run
    train_urls, train_counts, features = train_shards(recipe, dist)  # also before stream_statistics, which cannot take zero samples
    order = data_order(recipe, dist.world_size, train_urls, train_counts)
    check_visual_input(recipe, train_urls, recipe.data.train_split)
    failed = extraction_failures(train_urls, recipe.data.train_split)
    if failed and dist.main:
        print(f"note: {sum(failed.values())} clip(s) of split {recipe.data.train_split!r} failed extraction "
              f"({', '.join(f'{k}: {v}' for k, v in sorted(failed.items()))}; the output's failures.parquet says why): "
              f"training on the other {sum(train_counts)}", file=sys.stderr)
    if recipe.eval.at_end or recipe.eval.every:
        from trainer.evaluate import eval_shards, refuse_other_features

        try:
            eval_urls, _, eval_features = eval_shards(recipe, recipe.data.eval_split)
            refuse_other_features(features, eval_features, f"the training split {recipe.data.train_split!r}", recipe.data.eval_split)
        except SignfeatError as exc:
            raise SignfeatError(f"{exc}; a run evaluates data.eval_split={recipe.data.eval_split} "
                                f"{'at its end' if recipe.eval.at_end else f'every {recipe.eval.every} steps'}: name a split the shards "
                                "have, or train without evaluating (eval.at_end=false eval.every=0)") from None
        check_visual_input(recipe, eval_urls, recipe.data.eval_split)  # its own advice: the split is there
    if resume_from is not None:  # what the checkpoint cannot continue, refused before the model loads
        saved = checkpoint_file(resume_from, "state.json")
        changed = recipe_changes(saved["recipe"], recipe.to_dict())
        refuse_model_changes(resume_from, changed)
        from trainer.evaluate import refuse_other_features

        refuse_other_features(saved.get("stream_features") or {}, features, f"checkpoint {resume_from}", recipe.data.train_split)
        if saved["step"] > recipe.optim.max_steps:
            raise SignfeatError(f"checkpoint {resume_from} is at step {saved['step']}, past optim.max_steps {recipe.optim.max_steps}: "
                                "resuming it trains nothing (give a larger optim.max_steps, or evaluate it with `signfeat eval`)")
    model = build_model(recipe, device, tokenizer_dir=resume_from)
    texts = [m.get("text") or "" for m in read_split_texts(train_urls, limit=2000)]
    check_target_tokens(model.tokenizer, [t.lower() for t in texts] if recipe.data.lowercase_targets else texts,
                        recipe.data.train_split, recipe.llm.tokenizer or recipe.llm.name)
    if recipe.adapter.standardize and resume is None:
        model.adapter.set_statistics(stream_statistics(recipe))
    optimizer, scheduler = build_optimizer(model, recipe)
    rng = random.Random(recipe.seed)  # in-context example draws, seeded at every step (seed_step)
    step, position = 0, DataPosition()
    if resume is not None:
        state = load_checkpoint(resume_from, model, optimizer, scheduler)
        if changed and dist.main:  # allowed (a longer run, another eval setting), but never silently
            print(f"resuming {resume_from} with a changed recipe: {'; '.join(changed)}", file=sys.stderr)
        step, position = state["step"], DataPosition(**state["data_position"])
        if dist.main and step == recipe.optim.max_steps:
            print(f"checkpoint {resume_from} is at optim.max_steps {step}: nothing to train (raise optim.max_steps to go on)", file=sys.stderr)
        later = [f.name for f in _step_folders(out_dir / "checkpoints") if int(f.name[5:]) > step] if own_run else []
        if dist.main and later:
            print(f"resuming step {step} of this run: its later checkpoints ({', '.join(later)}) belong to the continuation this "
                  f"resume replaces, each as training reaches its step; log.jsonl keeps its rows up to step {step}", file=sys.stderr)
        saved_order = state.get("data_order")
        if position.batch and saved_order is None and dist.main:  # state.json of an older signfeat
            print(f"resuming mid-epoch {position.epoch} from a checkpoint that records no data order (an older signfeat): "
                  f"if data.batch_size, shards, seed or the number of processes changed, some samples of epoch {position.epoch} "
                  "are trained twice and others skipped", file=sys.stderr)
        changed_order = [k for k, v in order.items() if saved_order is not None and k in saved_order and saved_order[k] != v]
        if position.batch and changed_order:
            # replaying epoch E's new order up to the saved index would train some samples twice and skip others
            changes = ", ".join(f"{k} {saved_order[k]!r} -> {order[k]!r}" for k in changed_order)
            if dist.main:
                print(f"resuming mid-epoch {position.epoch} with another data order ({changes}): the rest of epoch {position.epoch} "
                      f"is skipped, so that no sample is trained twice in it; training goes on with epoch {position.epoch + 1}", file=sys.stderr)
            position = DataPosition(position.epoch + 1, 0)

    ddp = model
    if dist.world_size > 1:
        # find_unused_parameters: during the VT-Align warm-up the LoRA weights get no gradient
        ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    examples = in_context_examples(recipe)
    stream = train_batches(recipe, model.tokenizer, dist, position)
    if dist.main:  # written only now: with --overwrite, a mistake the checks above find must not have cost the old run
        if overwrite and not own_run:
            for old in (out_dir / "checkpoints", out_dir / "eval"):
                shutil.rmtree(old, ignore_errors=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire(out_dir)  # a new out_dir: made just now (by this run, or by one that started meanwhile)
        (out_dir / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=1), encoding="utf-8")
        for unfinished in (out_dir / "checkpoints").glob("step-*.tmp"):  # a save killed mid-way: never a checkpoint
            shutil.rmtree(unfinished, ignore_errors=True)
    # going on with this run from a checkpoint: what follows it is the continuation this resume replaces
    replaces_continuation = own_run and step < recipe.optim.max_steps
    if dist.main and replaces_continuation:
        keep_log_up_to(out_dir / "log.jsonl", step)  # one log row per step, and a kill before the next save resumes
        point_latest(resume_from, step)              # from here, not from the replaced continuation's last checkpoint
    log = JsonLog(out_dir / "log.jsonl" if dist.main else None, append=own_run)  # a new run, a new log
    if replaces_continuation:
        log.write({"step": step, "resumed_from": str(resume_from)})
    trained_from = step
    o, vt = recipe.optim, recipe.vt_align
    last_step = o.max_steps if stop_after_steps is None else min(o.max_steps, step + stop_after_steps)
    progress = _progress(recipe, dist, step, o.max_steps)
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.train()
    summary: dict = {"losses": []}
    newest_checkpoint = (step, resume_from) if resume_from is not None else None  # (step, folder) to go on from
    while step < last_step:
        warming_up = vt.enabled and step < vt.warmup_steps  # VT-Align only; the LLM is not run
        started, samples, totals = time.perf_counter(), 0, {}
        seed_step(recipe.seed, dist.rank, step, rng)
        at_step_start = _Resumable.of(model, position)
        for micro in range(o.grad_accum):
            try:
                position, batch = next(stream)
            except SignfeatError as exc:  # a shard gone, damaged or unreachable mid-run: keep what was trained
                if dist.main and step and (newest_checkpoint is None or newest_checkpoint[0] != step):
                    at_step_start.restore(model)  # a step's first micro-batches moved BatchNorm's statistics
                    newest_checkpoint = (step, save_checkpoint(out_dir / "checkpoints" / f"step-{step:06d}", model, optimizer,
                                                               scheduler, step, at_step_start.position, recipe, order, features))
                if newest_checkpoint is None:
                    raise SignfeatError(f"{exc}. Training stopped before its first step: once the data is readable, "
                                        "run the same command again") from None
                raise SignfeatError(f"{exc}. Training stopped; checkpoint {newest_checkpoint[1]} holds step {newest_checkpoint[0]}: "
                                    "once the data is readable, go on with the same recipe and --resume on it") from None
            batch = batch.to(device)
            extras = [examples.draw(t, rng) for t in batch.texts] if examples is not None else None
            sync = contextlib.nullcontext() if (micro == o.grad_accum - 1 or ddp is model) else ddp.no_sync()
            with sync:
                with autocast(device):
                    losses = ddp(batch, extras, run_llm=not warming_up)
                (losses["loss"] / o.grad_accum).backward()
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + float(value.detach()) / o.grad_accum
            samples += len(batch)
        grad_norm = nn.utils.clip_grad_norm_(trainable, o.clip_grad) if o.clip_grad > 0 else None
        # Stop before a non-finite update reaches the weights: every later step and checkpoint would be NaN.
        # The gradient norm is the same on every rank (after DDP's all-reduce), so all ranks stop together.
        if not math.isfinite(totals["loss"]) or (grad_norm is not None and not math.isfinite(float(grad_norm))):
            raise SignfeatError(f"step {step + 1}: the loss is {totals['loss']} and the gradient norm {None if grad_norm is None else float(grad_norm)}; "
                                f"stopped before the update ({f'last checkpoint: {newest_checkpoint[1]}, step {newest_checkpoint[0]}' if newest_checkpoint else 'no checkpoint saved'}). "
                                f"Lower optim.lr, or check the features (`signfeat verify`)")
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        seconds = time.perf_counter() - started
        summary["losses"].append(totals["loss"])
        record = {"step": step, "phase": "vt_align_warmup" if warming_up else "train", **totals, "lr": lr,
                  "grad_norm": None if grad_norm is None else float(grad_norm),
                  "samples_per_s": samples * dist.world_size / seconds, "epoch": position.epoch}
        if dist.main and (step % recipe.log_every == 0 or step == last_step):
            log.write(record)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{totals['loss']:.3f}", lr=f"{lr:.2e}")
        if dist.main and recipe.checkpoint_every and step % recipe.checkpoint_every == 0:
            newest_checkpoint = (step, save_checkpoint(out_dir / "checkpoints" / f"step-{step:06d}", model, optimizer, scheduler,
                                                       step, position, recipe, order, features))
        if dist.main and recipe.eval.every and step % recipe.eval.every == 0 and step < o.max_steps:
            # sampling during eval (eval.do_sample) draws from torch's RNG: forked, so the eval leaves it as it found it
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                log.write({"step": step, "eval": _evaluate(model, recipe, out_dir / "eval" / f"step-{step:06d}")})
            model.train()
    if progress is not None:
        progress.close()
    summary.update(step=step, data_position=position.__dict__)
    if dist.main:
        if newest_checkpoint is not None and newest_checkpoint[0] == step:  # saved at this step (checkpoint_every), or resumed
            summary["checkpoint"] = str(newest_checkpoint[1])              # with nothing to train: not rewritten (eval-* inside kept)
        else:
            summary["checkpoint"] = str(save_checkpoint(out_dir / "checkpoints" / f"step-{step:06d}", model, optimizer,
                                                        scheduler, step, position, recipe, order, features))
        scores = out_dir / "eval" / f"step-{step:06d}" / "scores.json"
        if step == o.max_steps and recipe.eval.at_end and (step > trained_from or not scores.is_file()):
            summary["eval"] = _evaluate(model, recipe, scores.parent)
            log.write({"step": step, "eval": summary["eval"]})
    if dist.world_size > 1:
        torch.distributed.barrier()
        del ddp  # its reducer holds the process group
        if dist.owns_group:
            # destroyed while the interpreter lives, after a barrier (no tensor of ours in flight), as PyTorch asks
            # (pytorch#190489, #179291: gloo threads dropping tensors during the interpreter's exit abort the rank).
            # A rare abort at exit after a finished run remained ("terminate called without an active exception"
            # from a native thread): `signfeat train` now leaves through os._exit (pipeline/cli.py, entry)
            torch.distributed.destroy_process_group()
    summary["model"] = model
    return summary


@dataclass
class _Resumable:
    """What a checkpoint holds besides the weights and optimizer, as it was when a step began: a step that
    cannot finish is saved as the step before it, which a resume then takes again (its random draws are the
    step's own: seed_step)."""

    position: DataPosition
    adapter_buffers: dict[str, torch.Tensor]  # BatchNorm statistics: a forward pass in train mode updates them

    @classmethod
    def of(cls, model: SignTranslator, position: DataPosition) -> "_Resumable":
        return cls(position, {name: b.detach().clone() for name, b in model.adapter.named_buffers()})

    def restore(self, model: SignTranslator) -> None:
        with torch.no_grad():
            for name, b in model.adapter.named_buffers():
                b.copy_(self.adapter_buffers[name])


def _evaluate(model: SignTranslator, recipe: Recipe, out: Path) -> dict:
    from trainer.evaluate import evaluate_model

    return evaluate_model(model, recipe, recipe.data.eval_split, out)["scores"]


def _progress(recipe: Recipe, dist: Dist, start: int, total: int):
    if not (recipe.progress and dist.main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=recipe.name, unit="step", dynamic_ncols=True)
