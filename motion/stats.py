"""Corpus normalisation statistics of the 623-d stream, the HumanML3D way, streamed over shards.

HumanML3D (``cal_mean_variance`` of its training code) concatenates all clips' features, skipping clips with
NaN, takes the mean and the (population) std over all frames, then replaces each block's std by that block's
mean std, so a block's dimensions are scaled together: ``[0]`` rotation velocity, ``[1:3]`` linear velocity,
``[3]`` root height, ric, rot6d, local velocity, foot contacts. Here the per-clip moments are merged with
Chan's parallel update (float64), so the corpus never needs to fit in memory and the result equals the
concatenated computation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from motion.humanml3d import FEATURE_WIDTH, LAYOUT
from pipeline.errors import SignfeatError


@dataclass
class RunningMoments:
    """Count, mean and sum of squared deviations over rows, merged clip by clip (Chan et al.)."""

    width: int
    count: int = 0
    mean: np.ndarray = field(default=None)  # type: ignore[assignment]
    m2: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.mean = np.zeros(self.width)
        self.m2 = np.zeros(self.width)

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float64)
        n = len(rows)
        if n == 0:
            return
        batch_mean = rows.mean(0)
        batch_m2 = ((rows - batch_mean) ** 2).sum(0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta * delta * (self.count * n / total)
        self.count = total

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.count, 1))


def block_averaged_std(std: np.ndarray) -> np.ndarray:
    """Each LAYOUT block's std replaced by its mean (HumanML3D)."""
    out = std.copy()
    for block in LAYOUT.values():
        out[block] = std[block].mean()
    return out


def find_shards(paths: list[str | Path]) -> list[Path]:
    """Shard files: the given .tar files, and every .tar under the given folders (sorted)."""
    shards: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            shards += sorted(p.rglob("*.tar"))
        elif p.is_file():
            shards.append(p)
        else:
            raise SignfeatError(f"no such shard or folder: {p}")
    if not shards:
        raise SignfeatError(f"no .tar shards found in {', '.join(map(str, paths))}")
    # OUT and OUT/train given together named every train shard twice: each counts once (first mention kept)
    return list({p.resolve(): p for p in shards}.values())


def _samples_of(shard: Path):
    """A shard's samples; a file that is not a tar (a features .npy, a parameters .npz) is one line, not a traceback."""
    import tarfile

    from shards.reader import read_samples

    try:
        yield from read_samples(shard)
    except tarfile.TarError as exc:
        raise SignfeatError(f"{shard}: not a shard tar ({exc}); give the shards (.tar) or the folder `signfeat extract --out` wrote") from None


def motion_stats(paths: list[str | Path], stream: str = "smplx623") -> dict:
    """Mean and std over all frames of ``stream`` in the shards (clips with NaN skipped, as HumanML3D does)."""
    moments = RunningMoments(FEATURE_WIDTH)
    clips = skipped_nan = missing = 0
    shards = find_shards(paths)
    for shard in shards:
        for sample in _samples_of(shard):
            features = sample.get(stream)
            if features is None:
                missing += 1
                continue
            if features.ndim != 2 or features.shape[1] != FEATURE_WIDTH:
                raise SignfeatError(f"{shard}: sample {sample['key']} has {stream} of shape {features.shape}, expected [T, {FEATURE_WIDTH}]")
            if not np.isfinite(features).all():  # HumanML3D skips NaN clips; an inf would make 153 std dimensions non-finite
                skipped_nan += 1
                continue
            moments.add(features)
            clips += 1
    if moments.count == 0:
        raise SignfeatError(f"no {stream} frames in {len(shards)} shards ({missing} samples without the stream, {skipped_nan} with NaN)")
    return {"mean": moments.mean.astype(np.float32), "std": block_averaged_std(moments.std).astype(np.float32),
            "raw_std": moments.std.astype(np.float32), "clips": clips, "frames": moments.count, "skipped_nan": skipped_nan,
            "samples_without_stream": missing, "shards": len(shards)}


def write_motion_stats(stats: dict, out_dir: str | Path) -> Path:
    """mean.npy, std.npy (float32 [623], allow_pickle=False) and stats.json (counts) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "mean.npy", stats["mean"], allow_pickle=False)
    np.save(out / "std.npy", stats["std"], allow_pickle=False)
    summary = {k: v for k, v in stats.items() if not isinstance(v, np.ndarray)}
    summary["blocks"] = {name: [s.start, s.stop] for name, s in LAYOUT.items()}
    (out / "stats.json").write_text(json.dumps(summary, indent=1))
    return out
