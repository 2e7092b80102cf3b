"""``--qc-segmenter RUN --qc-min-pq P``: keep a generated pair only when the downstream segmenter agrees.

The segmenter of an ``hs-train seg`` run is applied to each generated image; its instances are compared
with the generated instance label by the binary (class-agnostic) PQ of the CoNIC code
(:func:`histosmith.segmentation.evaluate.score_labels`, the ``hs-eval conic`` accumulator). A tile with no
nucleus in either map scores 1 (they agree; the CoNIC convention would give 0), and a perfect match of n
nuclei scores ``(n / (n + 1e-6))**2``, a hair below 1, so ``P = 1`` keeps only empty-and-empty tiles.

Cost: the segmenter runs once per attempt per tile, *without* its 8-fold test-time augmentation (an
eighth of ``hs-eval seg``'s cost; TTA smooths the maps but the check compares instances, not scores), and
one tile at a time, so a tile's score never depends on which tiles share its batch (batch independence and
byte-identical ``--resume`` of :mod:`histosmith.runtime.qc`).

What happens to a tile that fails every attempt is decided in :mod:`histosmith.runtime.qc`: it is left out
of the dataset and its patch_info row goes to the shard's ``rejected.csv``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histosmith.data.atomic import sha256_file
from histosmith.errors import HistoSmithError
from histosmith.segmentation.evaluate import score_labels
from histosmith.segmentation.model import Segmenter
from histosmith.segmentation.predict import predict_labels
from histosmith.segmentation.train import check_segmenter_fits, load_segmenter
from histosmith.training.checkpoint import resolve

log = logging.getLogger(__name__)


def tile_pq(class_names: list[str], labels: list[np.ndarray], predicted: list[np.ndarray]) -> np.ndarray:
    """(N,) binary PQ of each predicted vs given (H, W, 2) label tile; 1 where neither has a nucleus."""
    pq = score_labels(class_names, labels, predicted).pq.astype(float)
    empty = np.array([not np.asarray(a)[..., 0].any() and not b[..., 0].any()
                      for a, b in zip(labels, predicted, strict=True)])
    return np.where(empty, 1.0, pq)


@dataclass
class SegmenterCheck:
    """A :class:`histosmith.runtime.qc.PairCheck`: per-tile PQ of the segmenter's instances vs the label."""

    model: Segmenter
    class_names: list[str]
    tile_size: int
    run: Path
    sha256: str
    min_score: float

    def scores(self, images: list[np.ndarray], labels: list[np.ndarray]) -> np.ndarray:
        predicted = predict_labels(self.model, np.stack(images), batch_size=1, tta=False)  # one tile at a time
        return tile_pq(self.class_names, labels, predicted)

    def record(self) -> dict[str, Any]:
        return {"qc_segmenter": str(self.run), "qc_segmenter_sha256": self.sha256, "qc_min_pq": self.min_score}

    def require_fit(self, class_names: list[str], tile_size: int) -> None:
        """Refuse a generator whose classes or tile size differ from the segmenter's."""
        check_segmenter_fits({"class_names": self.class_names, "tile_size": self.tile_size}, class_names,
                             tile_size, f"the generator (for --qc-segmenter {self.run})")


def open_segmenter_check(run: Path, min_pq: float) -> SegmenterCheck:
    """Load the segmenter of ``run`` (a run directory or its checkpoint file) for the pair check."""
    if not (np.isfinite(min_pq) and 0.0 <= min_pq <= 1.0):
        raise HistoSmithError(f"--qc-min-pq {min_pq}: must be a PQ in 0..1")
    model, ckpt = load_segmenter(run)  # one error line for a missing, corrupt or foreign checkpoint
    dataset = ckpt["dataset"]
    log.debug("pair check: segmenter %s, keep tiles with PQ >= %g", run, min_pq)
    return SegmenterCheck(model, list(dataset["class_names"]), int(dataset["tile_size"]), run,
                          sha256_file(resolve(run)), float(min_pq))
