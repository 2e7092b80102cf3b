"""``hs-data info``: what a dataset holds, as a table and a bar chart."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histosmith.data.labels import count_nuclei, nucleus_areas
from histosmith.data.reader import Dataset


@dataclass(frozen=True)
class DatasetSummary:
    class_names: list[str]
    tissue_names: list[str]
    n_tiles: int
    tile_size: int
    class_counts: np.ndarray  # (K,) nuclei per class over the whole set
    area_median: np.ndarray  # (K,) median nucleus area (pixels) per class; nan for a class without nuclei
    area_p99: np.ndarray  # (K,) its 99th percentile: a natural limit for --marker-depth CLASS>PX and --qc-max-area
    tissue_tiles: dict[str, int]
    split_tiles: dict[str, int]
    source: str
    licence: str

    @property
    def class_shares(self) -> np.ndarray:
        total = self.class_counts.sum()
        return self.class_counts / total if total else np.zeros_like(self.class_counts, dtype=float)

    @property
    def imbalance_ratio(self) -> float:
        """Most common over rarest class (inf when a class never occurs)."""
        if self.class_counts.size == 0:
            return float("nan")
        smallest = self.class_counts.min()
        return float(self.class_counts.max() / smallest) if smallest else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {"n_tiles": self.n_tiles, "tile_size": self.tile_size, "source": self.source, "licence": self.licence,
                "class_counts": {n: int(c) for n, c in zip(self.class_names, self.class_counts, strict=True)},
                "class_shares": {n: round(float(s), 4) for n, s in zip(self.class_names, self.class_shares,
                                                                       strict=True)},
                "imbalance_ratio": self.imbalance_ratio,
                "area_median": _by_class(self.class_names, self.area_median),
                "area_p99": _by_class(self.class_names, self.area_p99),
                "tissue_tiles": dict(self.tissue_tiles),
                "split_tiles": dict(self.split_tiles)}

    def format_table(self) -> str:
        lines = [
            f"tiles: {self.n_tiles} of {self.tile_size}x{self.tile_size} px; "
            f"{len(self.class_names)} classes, {len(self.tissue_names)} tissues",
            f"source: {self.source}" if self.source else "",
            f"licence: {self.licence}" if self.licence else "",
            "",
            f"{'class':<16}{'nuclei':>10}{'share':>9}{'per tile':>10}{'area px: median':>17}{'p99':>7}",
        ]
        for name, n, share, median, p99 in zip(self.class_names, self.class_counts, self.class_shares,
                                               self.area_median, self.area_p99, strict=True):
            lines.append(f"{name:<16}{int(n):>10}{share:>9.1%}{n / max(self.n_tiles, 1):>10.2f}{median:>17.0f}"
                         f"{p99:>7.0f}")
        lines.append(f"{'total':<16}{int(self.class_counts.sum()):>10}")
        lines.append(f"imbalance ratio (most / least common class): {self.imbalance_ratio:.1f}")
        lines += ["", f"{'tissue':<16}{'tiles':>10}"]
        lines += [f"{name:<16}{n:>10}" for name, n in self.tissue_tiles.items()]
        if self.split_tiles:
            lines.append("splits: " + ", ".join(f"{k} {v}" for k, v in sorted(self.split_tiles.items())))
        return "\n".join(line for line in lines if line is not None)


def _by_class(names: list[str], values: np.ndarray) -> dict[str, float | None]:
    return {n: float(v) if np.isfinite(v) else None for n, v in zip(names, values, strict=True)}


def tile_counts(dataset: Dataset) -> np.ndarray:
    """(N, K) nuclei per tile and class: counts.csv, or measured from the labels where a shard lacks it."""
    meta = dataset.meta
    counts = dataset.counts()
    if counts is None:
        counts = np.stack(
            [count_nuclei(np.asarray(lab), meta.n_classes, meta.count_margin)
             for _, _, labels in dataset.iter_shards() for lab in labels]
        )
    return counts


def class_areas(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(K,) median and 99th-percentile nucleus area (pixels) per class over every tile; nan for an absent class."""
    k = dataset.meta.n_classes
    measured = [nucleus_areas(np.asarray(lab), k) for _, _, labels in dataset.iter_shards() for lab in labels]
    area = np.concatenate([a for a, _ in measured] or [np.zeros(0, np.int64)])
    cls = np.concatenate([c for _, c in measured] or [np.zeros(0, np.int64)])
    stats = np.full((k, 2), np.nan)
    for c in range(k):
        if (cls == c + 1).any():
            stats[c] = np.percentile(area[cls == c + 1], (50, 99))
    return stats[:, 0], stats[:, 1]


def summarise(dataset: Dataset) -> DatasetSummary:
    """Count nuclei per class (from counts.csv, or measured from labels), their areas, and tiles per tissue."""
    meta = dataset.meta
    counts = tile_counts(dataset)
    area_median, area_p99 = class_areas(dataset)
    rows = dataset.patch_info()
    tissues = [r.get("tissue", "") for r in rows]
    names = meta.tissue_names or sorted(set(tissues))
    splits: dict[str, int] = {}
    for r in rows:
        if r.get("split"):
            splits[r["split"]] = splits.get(r["split"], 0) + 1
    return DatasetSummary(
        class_names=list(meta.class_names),
        tissue_names=list(names),
        n_tiles=len(dataset),
        tile_size=meta.tile_size,
        class_counts=counts.sum(axis=0),
        area_median=area_median,
        area_p99=area_p99,
        tissue_tiles={n: tissues.count(n) for n in names},
        split_tiles=splits,
        source=meta.source,
        licence=meta.licence,
    )


def plot_summary(summary: DatasetSummary, path: Path) -> None:
    """Bar charts of nuclei per class and tiles per tissue, written atomically as PNG."""
    import matplotlib.pyplot as plt

    from histosmith.data.plots import save_figure

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    bars = ax1.bar(summary.class_names, summary.class_counts, color="#7b4f9d")
    for bar, share in zip(bars, summary.class_shares, strict=True):
        ax1.annotate(f"{share:.1%}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                     ha="center", va="bottom", fontsize=8)
    ax1.set_ylabel("nuclei")
    ax1.set_title(f"nuclei per class (imbalance {summary.imbalance_ratio:.1f}x)")
    ax1.tick_params(axis="x", rotation=30)
    ax2.bar(list(summary.tissue_tiles), list(summary.tissue_tiles.values()), color="#d98cb3")
    ax2.set_ylabel("tiles")
    ax2.set_title("tiles per tissue")
    ax2.tick_params(axis="x", rotation=30)
    save_figure(fig, path)
