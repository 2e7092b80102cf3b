"""``hs-eval seg``: predict the tiles of a split with a trained segmenter and score them with the CoNIC metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histosmith.data.format import Dataset
from histosmith.errors import HistoSmithError
from histosmith.evaluation.conic import ConicAccumulator, TileScores
from histosmith.segmentation.model import Segmenter
from histosmith.segmentation.predict import predict_labels
from histosmith.segmentation.train import check_segmenter_fits, load_segmenter


def score_labels(class_names: list[str], truth: list[np.ndarray] | np.ndarray, pred: list[np.ndarray]) -> TileScores:
    """Per-tile CoNIC terms of predicted vs true (H, W, 2) label tiles (the ``hs-eval conic`` code)."""
    acc = ConicAccumulator(class_names)
    for t, p in zip(truth, pred, strict=True):
        acc.add(np.asarray(t), p)
    return acc.scores()


def load_split(data: Path, split: str | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 images (N, H, W, 3), labels (N, H, W, 2) and tile names of one split (all tiles when None)."""
    images, labels, names = [], [], []
    for i, row, img, lab in Dataset.open(data).tiles(split):
        images.append(np.asarray(img))
        labels.append(np.asarray(lab))
        names.append(str(row.get("patch_info", i)))
    if not images:
        raise HistoSmithError(f"{data}: no tiles in split {split!r}")
    return np.stack(images), np.stack(labels), names


def evaluate_model(model: Segmenter, class_names: list[str], images: np.ndarray, labels: np.ndarray) -> TileScores:
    return score_labels(class_names, labels, predict_labels(model, images))


def evaluate_segmenter(checkpoint: Path, data: Path, split: str | None = "val") -> TileScores:
    """CoNIC terms of a trained segmenter on ``split`` of ``data`` (classes and tile size must match)."""
    model, ckpt = load_segmenter(checkpoint)
    meta = Dataset.open(data).meta
    check_segmenter_fits(ckpt["dataset"], meta.class_names, meta.tile_size, str(data))
    images, labels, _ = load_split(data, split)
    return evaluate_model(model, meta.class_names, images, labels)
