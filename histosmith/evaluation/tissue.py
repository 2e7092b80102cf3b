"""A small tissue classifier trained on real tiles: the yardstick of *tissue collapse* in ``hs-eval control``.

A generator that ignores its tissue condition paints every tile in the look of one tissue. To measure it, a
three-layer CNN learns the tissue label from the real dataset's ``train`` tiles; its own accuracy on the
real ``val`` tiles says how far its verdict on generated tiles can be trusted (a dataset without ``val``
tiles is refused: an unchecked classifier would measure nothing).

Training is seeded and deterministic for a given thread count: batches are drawn with tissues balanced
(each tissue equally likely, then a tile of it) and a random one of the 8 flips/rotations per tile, since
tissue does not depend on orientation. The input is average-pooled by 2 first (tissue is a coarse
property), so ``TissueRecipe()`` trains in seconds on one CPU core at 64 px. The trained weights are cached
under a key made of the training and validation tiles' content, their labels and the recipe, so a rerun
on the same data loads them instead of training again.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from tqdm import tqdm

from histosmith.data.atomic import write_bytes_atomic
from histosmith.data.reader import Dataset
from histosmith.errors import HistoSmithError
from histosmith.training.data import TileStore, dihedral

log = logging.getLogger(__name__)
MATCHED_K = 8  # real tiles per request in the count-matched reference
RECIPE_VERSION = 1  # bump when the network or the training loop changes: old caches are then ignored


@dataclass(frozen=True)
class TissueRecipe:
    """How the classifier is trained (part of the cache key)."""

    steps: int = 600
    batch: int = 32
    lr: float = 2e-3
    width: int = 16
    seed: int = 0


class TissueNet(nn.Module):
    """RGB tile (B, 3, H, W) in [-1, 1] -> tissue logits (B, T); any tile size (global average pooling)."""

    def __init__(self, n_tissues: int, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, w, H/4, W/4) after the input pool
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 2w, H/8, W/8)
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(2 * w, n_tissues)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(F.avg_pool2d(x, 2))
        return self.head(h.mean(dim=(2, 3)))  # (B, T)


def to_input(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1]."""
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
    return torch.from_numpy(x / 127.5 - 1.0)


def check_dataset(data: Path, class_names: list[str], tissue_names: list[str], tile_size: int) -> None:
    """Refuse a dataset the classifier cannot speak for: other classes, tissues or tile size, or no ``val`` tiles."""
    meta = Dataset.open(data).meta
    for what, theirs, ours in (("class names", list(meta.class_names), list(class_names)),
                               ("tissue names", list(meta.tissue_names), list(tissue_names)),
                               ("tile size", meta.tile_size, tile_size)):
        if theirs != ours:
            raise HistoSmithError(f"--data {data}: {what} {theirs} differ from the generator's {ours}")
    splits = [r.get("split") for r in Dataset.open(data).patch_info()]
    if "train" not in splits:
        raise HistoSmithError(f"--data {data}: no 'train' tiles to train the tissue classifier on")
    if "val" not in splits:
        raise HistoSmithError(f"--data {data}: no 'val' tiles, so the tissue classifier's own accuracy cannot be "
                              "checked on held-out real tiles")


def cache_key(train: TileStore, val: TileStore, tissue_names: list[str], recipe: TissueRecipe) -> str:
    """SHA-256 over the tiles and tissue labels of both splits, the tissue names, the recipe and its version."""
    h = hashlib.sha256(repr((RECIPE_VERSION, asdict(recipe), list(tissue_names), torch.__version__)).encode())
    for store in (train, val):
        h.update(repr(store.images.shape).encode())
        h.update(np.ascontiguousarray(store.images).tobytes())
        h.update(np.ascontiguousarray(store.tissues, dtype=np.int64).tobytes())
    return h.hexdigest()


def train_classifier(images: np.ndarray, tissues: np.ndarray, n_tissues: int, recipe: TissueRecipe,
                     show_progress: bool = False) -> TissueNet:
    """Train :class:`TissueNet` on (N, H, W, 3) uint8 tiles and their (N,) tissue indices."""
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    net = TissueNet(n_tissues, recipe.width)
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    per_tissue = np.bincount(tissues, minlength=n_tissues)
    p = 1.0 / per_tissue[tissues]  # every present tissue equally likely per draw
    p /= p.sum()
    net.train()
    for _ in tqdm(range(recipe.steps), desc="tissue classifier", unit="step", disable=not show_progress):
        index = rng.choice(len(images), recipe.batch, p=p)
        flips = rng.integers(0, 8, recipe.batch)
        batch = np.stack([dihedral(images[i].transpose(2, 0, 1), int(k)).transpose(1, 2, 0)
                          for i, k in zip(index, flips, strict=True)])
        loss = F.cross_entropy(net(to_input(batch)), torch.from_numpy(tissues[index].astype(np.int64)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    return net


@torch.no_grad()
def predict(net: TissueNet, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N,) predicted tissue index."""
    out = [net(to_input(images[i:i + batch])).argmax(1).numpy() for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def accuracy(true: np.ndarray, pred: np.ndarray, tissue_names: list[str]) -> dict[str, Any]:
    """Overall and per-tissue accuracy (None for a tissue without tiles) and the confusion counts
    (rows: true or requested tissue, columns: predicted)."""
    t = len(tissue_names)
    confusion = np.zeros((t, t), dtype=np.int64)
    np.add.at(confusion, (true, pred), 1)
    per = {name: (float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None)
           for i, name in enumerate(tissue_names)}
    return {"n": len(true), "accuracy": float(np.mean(true == pred)) if len(true) else None,
            "per_tissue": per, "n_per_tissue": dict(zip(tissue_names, confusion.sum(1).tolist(), strict=True)),
            "confusion": confusion.tolist()}


def count_matched_accuracy(real_counts: np.ndarray, real_tissues: np.ndarray, real_correct: np.ndarray,
                           counts: np.ndarray, tissues: np.ndarray, k: int = MATCHED_K) -> np.ndarray:
    """Per requested (counts (N, K), tissue (N,)): the classifier's accuracy on the ``k`` real tiles of that tissue
    whose nucleus counts are nearest to the request (L1 over classes; ties broken by tile order); NaN for a
    tissue without real tiles.

    The reference a generated tile's verdict must be read against: a request that real tiles of its tissue
    rarely hold (a stroma tile full of neoplastic nuclei, say) can fool the classifier on real tiles too."""
    out = np.full(len(counts), np.nan)
    for i, (want, t) in enumerate(zip(np.asarray(counts), np.asarray(tissues), strict=True)):
        pool = np.flatnonzero(real_tissues == t)
        if not len(pool):
            continue
        dist = np.abs(real_counts[pool] - want).sum(axis=1)
        nearest = pool[np.lexsort((pool, dist))[:k]]
        out[i] = float(np.mean(real_correct[nearest]))
    return out


def matched_summary(expected: np.ndarray, tissues: np.ndarray, tissue_names: list[str]) -> dict[str, Any]:
    """Mean count-matched real accuracy overall and per requested tissue (None where no tile asks for it or no
    real tile has its tissue)."""

    def mean(values: np.ndarray) -> float | None:
        known = values[~np.isnan(values)]
        return float(known.mean()) if len(known) else None

    return {"accuracy": mean(expected),
            "per_tissue": {name: mean(expected[tissues == t]) for t, name in enumerate(tissue_names)}}


@dataclass
class TissueClassifier:
    net: TissueNet
    recipe: TissueRecipe
    key: str  # the cache key (content of the real tiles + recipe)
    val: dict[str, Any]  # accuracy on the real val tiles
    train_accuracy: float
    cached: bool  # loaded from the cache rather than trained now


def load_or_train(data: Path, tissue_names: list[str], cache_dir: Path, recipe: TissueRecipe = TissueRecipe(),
                  show_progress: bool = False) -> TissueClassifier:
    """The classifier of ``data`` (train split), from ``cache_dir`` when the same tiles trained it before."""
    train = TileStore.load(data, "train", show_progress=show_progress)
    val = TileStore.load(data, "val", show_progress=show_progress)
    key = cache_key(train, val, tissue_names, recipe)
    path = cache_dir / f"tissue-{key[:16]}.pt"
    net = TissueNet(len(tissue_names), recipe.width)
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            net.load_state_dict(saved["state_dict"])
            net.eval()
            log.info("tissue classifier: cached %s", path)
            return TissueClassifier(net, recipe, key, saved["val"], float(saved["train_accuracy"]), cached=True)
    net = train_classifier(train.images, train.tissues, len(tissue_names), recipe, show_progress)
    result = TissueClassifier(net, recipe, key, accuracy(val.tissues, predict(net, val.images), tissue_names),
                              float(np.mean(predict(net, train.images) == train.tissues)), cached=False)
    payload = {"key": key, "recipe": asdict(recipe), "tissue_names": list(tissue_names),
               "state_dict": net.state_dict(), "val": result.val, "train_accuracy": result.train_accuracy}
    write_bytes_atomic(path, lambda f: torch.save(payload, f))
    log.info("tissue classifier: val accuracy %.3f on %d real tiles; cached as %s", result.val["accuracy"],
             result.val["n"], path)
    return result
