"""``hs-eval conic``: the CoNIC metrics between two dataset directories, streamed tile by tile."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from histosmith.data.codecs import read_counts_header
from histosmith.data.layout import COUNTS_FILE, META_FILE
from histosmith.data.reader import Dataset
from histosmith.errors import HistoSmithError
from histosmith.evaluation.conic import ConicAccumulator, ConicResult


def _class_names(root: Path) -> list[str] | None:
    """Class names from meta.json, else from the first counts.csv header; None when neither exists."""
    if (root / META_FILE).exists():
        return None  # Dataset.open reads meta.json
    for candidate in [root, *sorted(root.glob("shard-*"))]:
        if (candidate / COUNTS_FILE).exists():
            return read_counts_header(candidate / COUNTS_FILE)
    return None


def _open(root: Path, fallback: list[str] | None) -> Dataset:
    names = _class_names(root) if root.is_dir() else None
    if names is None and not (root / META_FILE).exists():
        if fallback is None:
            raise HistoSmithError(f"{root}: no meta.json and no counts.csv; class names unknown")
        names = fallback
    return Dataset.open(root, class_names=names)


def _labels(ds: Dataset) -> Iterator[np.ndarray]:
    for _, _, labels in ds.iter_shards():
        for lab in labels:
            yield np.asarray(lab)


def evaluate_conic_dirs(true_dir: Path, pred_dir: Path) -> ConicResult:
    """CoNIC metrics of ``pred_dir`` against ``true_dir``; counts from counts.csv when both have one."""
    truth = _open(true_dir, None)
    pred = _open(pred_dir, truth.meta.class_names)
    names = truth.meta.class_names
    if pred.meta.class_names != names:
        raise HistoSmithError(f"{pred_dir}: classes {pred.meta.class_names} differ from the truth's {names}")
    if len(truth) != len(pred):
        raise HistoSmithError(f"{pred_dir}: {len(pred)} tiles, the truth has {len(truth)}")
    if truth.shards[0].tile_shape != pred.shards[0].tile_shape:
        raise HistoSmithError(
            f"{pred_dir}: tiles of {pred.shards[0].tile_shape}, the truth has {truth.shards[0].tile_shape}"
        )
    acc = ConicAccumulator(names, truth.meta.count_margin)
    for t, p in zip(_labels(truth), _labels(pred), strict=True):
        acc.add(t, p)
    true_counts, pred_counts = truth.counts(), pred.counts()
    if true_counts is None or pred_counts is None:  # both measured the same way, by the accumulator
        true_counts = pred_counts = None
    try:
        return acc.result(true_counts, pred_counts)
    except ValueError as exc:
        raise HistoSmithError(str(exc)) from None
