"""Training tiles in memory: model inputs, dihedral augmentation, conditions.

The example and demo sets are small (hundreds of 64 px tiles), so one split is loaded once, with its
distance maps, into compact arrays (uint8 images and classes, float16 distances). Batches are drawn by
index with a per-step generator, so a run is a function of (seed, step) and resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from histosmith.data.conditioning import ConditionSpec
from histosmith.data.rasters import distance_map
from histosmith.data.reader import Dataset
from histosmith.errors import HistoSmithError

MAX_IN_MEMORY_BYTES = 8 * 2**30


def dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 8 flips/rotations of (..., H, W) arrays (k in 0..7)."""
    if k >= 4:
        x = x[..., ::-1]
    return np.rot90(x, k % 4, axes=(-2, -1))


@dataclass
class TileStore:
    """One split of a dataset: images (N, H, W, 3) uint8, classes (N, H, W) uint8, distances float16."""

    images: np.ndarray
    classes: np.ndarray
    instances: np.ndarray
    distances: np.ndarray
    counts: np.ndarray  # (N, K)
    tissues: np.ndarray  # (N,)
    n_classes: int

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def load(cls, root: Path, split: str | None = "train", show_progress: bool = True) -> TileStore:
        """Load the tiles whose ``split`` column equals ``split`` (all tiles when None or no column)."""
        ds = Dataset.open(root)
        rows = ds.patch_info()
        has_split = any("split" in r for r in rows)
        wanted = np.array([split is None or not has_split or r.get("split") == split for r in rows])
        if not wanted.any():
            raise HistoSmithError(f"{root}: no tiles in split {split!r}")
        n, size = int(wanted.sum()), ds.meta.tile_size
        if n * size * size * 8 > MAX_IN_MEMORY_BYTES:
            raise HistoSmithError(f"{root}: {n} tiles of {size} px do not fit the in-memory training store")
        counts = ds.counts()
        if counts is None:
            raise HistoSmithError(f"{root}: counts.csv missing; re-prepare the dataset with hs-data prepare")
        tissues = ds.tissue_indices()
        if (tissues < 0).any() and ds.meta.tissue_names:
            raise HistoSmithError(f"{root}: patch_info.csv has tiles of unknown tissue")
        images, classes, instances, dists = [], [], [], []
        offset = 0
        bar = tqdm(total=len(rows), desc=f"load {split or 'all'} tiles", unit="tile", disable=not show_progress)
        for _, imgs, labels in ds.iter_shards():
            sel = wanted[offset : offset + len(imgs)]
            offset += len(imgs)
            for img, lab in zip(imgs[sel], labels[sel], strict=True):
                images.append(np.asarray(img))
                classes.append(np.asarray(lab[..., 1], dtype=np.uint8))
                instances.append(np.asarray(lab[..., 0], dtype=np.int32))
                dists.append(distance_map(np.asarray(lab[..., 0])).astype(np.float16))
            bar.update(len(imgs))
        bar.close()
        return cls(np.stack(images), np.stack(classes), np.stack(instances), np.stack(dists), counts[wanted],
                   np.maximum(tissues[wanted], 0), ds.meta.n_classes)

    def inputs(self, index: np.ndarray, flips: np.ndarray | None = None) -> torch.Tensor:
        """Model input (B, 3+1+K+1, H, W): RGB in [-1, 1], distance, one-hot classes; optional dihedral flips."""
        rgb = self.images[index].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0  # (B, 3, H, W)
        dist = self.distances[index][:, None].astype(np.float32)  # (B, 1, H, W)
        onehot = (self.classes[index][:, None] == np.arange(self.n_classes + 1)[None, :, None, None])
        x = np.concatenate([rgb, dist, onehot.astype(np.float32)], axis=1)
        if flips is not None:
            x = np.stack([dihedral(xi, int(k)) for xi, k in zip(x, flips, strict=True)])
        return torch.from_numpy(np.ascontiguousarray(x))


def split_input(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Model input -> (rgb (B,3,H,W), distance (B,1,H,W), class ids (B,H,W))."""
    return x[:, :3], x[:, 3:4], x[:, 4:].argmax(dim=1)


def condition_spec(root: Path) -> ConditionSpec:
    return ConditionSpec.from_meta(Dataset.open(root).meta)
