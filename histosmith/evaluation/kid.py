"""Kernel inception-style distance (KID) on the downstream segmenter's features (``hs-eval realism --segmenter``).

KID (Bińkowski et al. 2018, "Demystifying MMD GANs") is the squared maximum mean discrepancy between two
feature sets under the cubic polynomial kernel ``k(x, y) = (x·y / d + 1)^3`` (d: feature dimension), with
the unbiased estimator

    MMD²_u = 1/(m(m-1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n-1)) Σ_{i≠j} k(y_i, y_j) - 2/(mn) Σ_{i,j} k(x_i, y_j),

which is 0 in expectation for two samples of one distribution (so it can come out slightly negative).
Pretrained ImageNet networks are not reachable here, so the features are the project's own: the
global-average-pooled bottleneck of an ``hs-train seg`` segmenter's encoder (256 numbers per tile for the
``small`` config). As in the paper, the estimate is averaged over random subsets: ``n_subsets`` (100)
draws of ``s = min(100, n_real // 2, n_generated)`` tiles from each set, without replacement, with a fixed
seed; the report gives their mean ± sd. The *floor* is the same estimate between two disjoint subsets of s
real tiles (two random halves of the real set when it has at most 200 tiles), drawn afresh each time: the
value two samples of real data reach, against which the generated tiles' number reads (:func:`kid_with_floor`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histosmith.data.atomic import sha256_file
from histosmith.data.reader import Dataset
from histosmith.errors import HistoSmithError

log = logging.getLogger(__name__)
SUBSET_SIZE = 100
N_SUBSETS = 100


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(m, d) and (n, d) features -> (m, n) ``(x·y / d + 1)^3``."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD² estimate of the module doc (needs at least 2 rows in each set)."""
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"the unbiased MMD² needs at least 2 samples per set, got {m} and {n}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


@dataclass(frozen=True)
class KidEstimate:
    mean: float
    sd: float
    subset_size: int
    n_subsets: int

    def format(self) -> str:
        return f"{self.mean:.4g} ± {self.sd:.2g}"


def kid_with_floor(real: np.ndarray, generated: np.ndarray, seed: int = 0, subset_size: int = SUBSET_SIZE,
                   n_subsets: int = N_SUBSETS) -> tuple[KidEstimate, KidEstimate]:
    """KID of real vs generated features and its floor, over ``n_subsets`` random draws (module doc).

    Each draw takes two disjoint subsets A, B of ``s = min(subset_size, len(real) // 2, len(generated))``
    real rows (a random split of the real set into halves when it has at most 2 * subset_size rows) and a
    subset G of s generated rows; it adds MMD²_u(A, G) to the estimate and MMD²_u(A, B) to the floor, so both
    numbers have the same subset size (the estimator's spread depends on it) and the sd shows the spread
    over draws.
    """
    size = min(subset_size, len(real) // 2, len(generated))
    if size < 2:
        raise HistoSmithError(f"the kernel distance needs at least 4 real and 2 generated tiles, got {len(real)} "
                              f"and {len(generated)}")
    rng = np.random.default_rng([seed, 5381])
    estimate, floor = [], []
    for _ in range(n_subsets):
        order = rng.permutation(len(real))
        a, b = real[order[:size]], real[order[size : 2 * size]]
        g = generated[rng.choice(len(generated), size, replace=False)]
        estimate.append(mmd2_unbiased(a, g))
        floor.append(mmd2_unbiased(a, b))
    return (KidEstimate(float(np.mean(estimate)), float(np.std(estimate)), size, n_subsets),
            KidEstimate(float(np.mean(floor)), float(np.std(floor)), size, n_subsets))


@dataclass
class FeatureModel:
    """A loaded segmenter and where it came from."""

    model: Any  # histosmith.segmentation.model.Segmenter (torch, imported on use)
    run: Path
    sha256: str


def load_feature_model(run: Path, datasets: list[Dataset]) -> FeatureModel:
    """The segmenter of ``run``; refuses one trained for other classes or another tile size than ``datasets``."""
    from histosmith.segmentation.train import check_segmenter_fits, load_segmenter
    from histosmith.training.checkpoint import resolve

    model, ckpt = load_segmenter(run)
    for ds in datasets:
        check_segmenter_fits(ckpt["dataset"], ds.meta.class_names, ds.meta.tile_size, str(ds.root))
    return FeatureModel(model, run, sha256_file(resolve(run)))


def segmenter_kid(features: FeatureModel, real: Dataset, generated: Dataset, real_index: np.ndarray,
                  generated_index: np.ndarray) -> dict[str, Any]:
    """The KID block of ``realism.json``: segmenter features of the chosen tiles, real vs generated, and the
    real-halves floor."""
    from histosmith.segmentation.predict import pooled_features

    if len(real_index) < 4 or len(generated_index) < 2:  # before any feature is computed
        raise HistoSmithError(f"--segmenter: the kernel distance needs at least 4 real and 2 generated tiles, "
                              f"got {len(real_index)} and {len(generated_index)}")
    real_features = pooled_features(features.model, tiles_at(real, real_index))
    generated_features = pooled_features(features.model, tiles_at(generated, generated_index))
    estimate, floor = kid_with_floor(real_features, generated_features)
    log.info("KID on segmenter features: %s (real halves %s)", estimate.format(), floor.format())
    return {"segmenter": str(features.run), "segmenter_sha256": features.sha256,
            "features": f"global-average-pooled encoder bottleneck ({real_features.shape[1]} per tile)",
            "kernel": "(x.y/d + 1)^3", "n_tiles": {"real": len(real_features), "generated": len(generated_features)},
            "generated": _entry(estimate), "real_halves": _entry(floor)}


def _entry(e: KidEstimate) -> dict[str, float | int]:
    return {"mean": e.mean, "sd": e.sd, "subset_size": e.subset_size, "n_subsets": e.n_subsets}


def format_kid(block: dict[str, Any]) -> str:
    """One line: the generated tiles' KID and the real-halves floor, mean ± sd."""
    g, r = block["generated"], block["real_halves"]
    return (f"KID on segmenter features: generated vs real {g['mean']:.4g} ± {g['sd']:.2g}; "
            f"two halves of the real tiles {r['mean']:.4g} ± {r['sd']:.2g} (floor)")


def tiles_at(dataset: Dataset, index: np.ndarray) -> np.ndarray:
    """uint8 (len(index), H, W, 3) images of the tiles ``index`` (sorted dataset positions)."""
    wanted, out, start = set(np.asarray(index).tolist()), [], 0
    for _, images, _ in dataset.iter_shards(check_classes=False):
        out.extend(np.asarray(images[i - start]) for i in range(start, start + len(images)) if i in wanted)
        start += len(images)
    return np.stack(out)
