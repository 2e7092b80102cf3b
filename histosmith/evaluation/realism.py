"""``hs-eval realism``: do generated nuclei look like real ones? Per-class morphology and per-tile counts.

Per nucleus (class by majority vote of its pixels, as everywhere): area (px), eccentricity and solidity of
its mask, and mean hematoxylin optical density of its pixels (colour deconvolution with scikit-image's
H&E-DAB stain matrix, ``rgb2hed``). Per tile: nuclei per class with the dataset's one count definition.
Real and generated distributions are compared with the 1-D Wasserstein distance; the report also gives
median area ratio (generated / real) and the share of generated nuclei larger than the real 99th percentile
area of their class, the median area ratio per tissue (a size miss is often one tissue's), and per class the
share of nuclei that touch another nucleus (a generator that draws nuclei in clumps, or a watershed that leaves
them merged, moves it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import wasserstein_distance
from skimage.color import rgb2hed
from skimage.measure import regionprops

from histosmith.data.info import tile_counts
from histosmith.data.labels import instance_classes, touching_instances
from histosmith.data.reader import Dataset
from histosmith.errors import HistoSmithError
from histosmith.evaluation.kid import format_kid

log = logging.getLogger(__name__)
FEATURES = ("area", "eccentricity", "solidity", "hematoxylin_od")


@dataclass
class NucleusTable:
    """Per-nucleus features (one list per feature) with each nucleus's class index (1..K), tile tissue and
    whether it touches another nucleus."""

    classes: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=lambda: {f: [] for f in FEATURES})
    tissues: list[str] = field(default_factory=list)
    touching: list[bool] = field(default_factory=list)

    def _keep(self, cls: int, tissue: str | None) -> np.ndarray:
        keep = np.asarray(self.classes) == cls
        if tissue is not None:
            keep &= np.asarray(self.tissues) == tissue
        return keep

    def of(self, cls: int, feature: str, tissue: str | None = None) -> np.ndarray:
        return np.asarray(self.values[feature], float)[self._keep(cls, tissue)]

    def share_touching(self, cls: int) -> float | None:
        """Share of the class's nuclei that touch another nucleus; None when the class has none."""
        touching = np.asarray(self.touching, bool)[self._keep(cls, None)]
        return float(touching.mean()) if len(touching) else None


def nucleus_features(image: np.ndarray, labels: np.ndarray, n_classes: int, table: NucleusTable,
                     tissue: str = "") -> None:
    """Append the features of every nucleus of one tile ((H, W, 3) uint8, (H, W, 2) labels) to ``table``."""
    inst = np.asarray(labels[..., 0])
    if not inst.any():
        return
    classes = instance_classes(inst, np.asarray(labels[..., 1]), n_classes)
    touching = touching_instances(inst)
    hematoxylin = rgb2hed(np.asarray(image))[..., 0]  # optical density of the hematoxylin stain
    for region in regionprops(inst, intensity_image=hematoxylin):
        cls = int(classes[region.label])
        if cls == 0:
            continue
        table.classes.append(cls)
        table.tissues.append(tissue)
        table.touching.append(bool(touching[region.label]))
        table.values["area"].append(float(region.area))
        table.values["eccentricity"].append(float(region.eccentricity))
        table.values["solidity"].append(float(region.solidity))
        table.values["hematoxylin_od"].append(float(region.intensity_mean))


def spread(n: int, max_tiles: int) -> np.ndarray:
    """Indices of at most ``max_tiles`` of ``n`` tiles, evenly spaced over the whole dataset (datasets are
    written tissue by tissue: the first tiles alone would all be one tissue)."""
    return np.unique(np.linspace(0, n - 1, min(n, max_tiles)).round().astype(np.int64)) if n else np.zeros(0, int)


def collect(dataset: Dataset, max_tiles: int) -> tuple[NucleusTable, np.ndarray]:
    """Features of the nuclei of ``max_tiles`` tiles spread over the dataset and their per-tile counts (N, K)."""
    table = NucleusTable()
    chosen = spread(len(dataset), max_tiles)
    keep = set(chosen.tolist())
    tissues = [row.get("tissue", "") for row in dataset.patch_info()]
    if len(tissues) != len(dataset):  # no per-tile tissue recorded
        tissues = [""] * len(dataset)
    index = 0
    for _, images, labels in dataset.iter_shards():
        for b in range(len(images)):
            if index in keep:
                nucleus_features(images[b], labels[b], dataset.meta.n_classes, table, tissues[index])
            index += 1
    return table, tile_counts(dataset)[chosen]


def _stats(values: np.ndarray) -> dict[str, float | int | None]:
    if len(values) == 0:
        return {"n": 0, "median": None, "p99": None}
    return {"n": len(values), "median": float(np.median(values)), "p99": float(np.percentile(values, 99))}


@dataclass(frozen=True)
class Samples:
    """What the report was computed from (for the histograms)."""

    real_nuclei: NucleusTable
    generated_nuclei: NucleusTable
    real_counts: np.ndarray
    generated_counts: np.ndarray


def compare(real: Dataset, generated: Dataset, max_tiles: int = 500) -> tuple[dict[str, Any], Samples]:
    """The realism report (see the module doc) as a JSON-ready dict, and the samples behind it."""
    names = list(real.meta.class_names)
    if list(generated.meta.class_names) != names:
        raise HistoSmithError(f"{generated.root}: classes {generated.meta.class_names} differ from the real "
                              f"data's {names}")
    real_nuclei, real_counts = collect(real, max_tiles)
    gen_nuclei, gen_counts = collect(generated, max_tiles)
    classes = []
    for c, name in enumerate(names):
        entry: dict[str, Any] = {"class": name, "features": {}}
        for feat in FEATURES:
            r, g = real_nuclei.of(c + 1, feat), gen_nuclei.of(c + 1, feat)
            entry["features"][feat] = {
                "real": _stats(r), "generated": _stats(g),
                "wasserstein": float(wasserstein_distance(r, g)) if len(r) and len(g) else None}
        r_area, g_area = real_nuclei.of(c + 1, "area"), gen_nuclei.of(c + 1, "area")
        if len(r_area) and len(g_area):
            entry["median_area_ratio"] = float(np.median(g_area) / np.median(r_area))
            entry["share_above_real_p99_area"] = float((g_area > np.percentile(r_area, 99)).mean())
        else:
            entry["median_area_ratio"] = entry["share_above_real_p99_area"] = None
        entry["share_touching"] = {"real": real_nuclei.share_touching(c + 1),
                                   "generated": gen_nuclei.share_touching(c + 1)}
        entry["counts_per_tile"] = {
            "real_mean": float(real_counts[:, c].mean()) if len(real_counts) else None,
            "generated_mean": float(gen_counts[:, c].mean()) if len(gen_counts) else None,
            "wasserstein": float(wasserstein_distance(real_counts[:, c], gen_counts[:, c]))
            if len(real_counts) and len(gen_counts) else None}
        classes.append(entry)
    report = {"class_names": names, "real": str(real.root), "generated": str(generated.root),
              "n_tiles": {"real": len(real_counts), "generated": len(gen_counts)},
              "n_nuclei": {"real": len(real_nuclei.classes), "generated": len(gen_nuclei.classes)},
              "classes": classes, "area_by_tissue": area_by_tissue(names, real_nuclei, gen_nuclei)}
    return report, Samples(real_nuclei, gen_nuclei, real_counts, gen_counts)


def area_by_tissue(names: list[str], real: NucleusTable, generated: NucleusTable) -> list[dict[str, Any]]:
    """Median nucleus area per (tissue, class), real and generated, for the tissues both sets name."""
    rows = []
    for tissue in sorted(set(real.tissues) & set(generated.tissues) - {""}):
        for c, name in enumerate(names):
            r, g = real.of(c + 1, "area", tissue), generated.of(c + 1, "area", tissue)
            rows.append({"tissue": tissue, "class": name, "real": _stats(r), "generated": _stats(g),
                         "median_area_ratio": float(np.median(g) / np.median(r)) if len(r) and len(g) else None})
    return rows


def _num(v: float | None, fmt: str = ".2f") -> str:
    return "n/a" if v is None else format(v, fmt)


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{'class':<14}{'feature':<16}{'real med':>10}{'gen med':>10}{'W1':>10}"]
    for e in report["classes"]:
        for feat, f in e["features"].items():
            lines.append(f"{e['class']:<14}{feat:<16}{_num(f['real']['median']):>10}"
                         f"{_num(f['generated']['median']):>10}{_num(f['wasserstein'], '.3f'):>10}")
        cp = e["counts_per_tile"]
        lines.append(f"{e['class']:<14}{'count/tile':<16}{_num(cp['real_mean']):>10}{_num(cp['generated_mean']):>10}"
                     f"{_num(cp['wasserstein'], '.3f'):>10}")
        lines.append(f"{e['class']:<14}median area gen/real {_num(e['median_area_ratio'])}, "
                     f"generated above real p99 area {_num(e['share_above_real_p99_area'], '.1%')}")
        t = e["share_touching"]
        lines.append(f"{e['class']:<14}touching another nucleus: real {_num(t['real'], '.1%')}, "
                     f"generated {_num(t['generated'], '.1%')}")
    for row in report.get("area_by_tissue", []):
        lines.append(f"{row['class']:<14}in {row['tissue']}: median area {_num(row['real']['median'], '.1f')} real "
                     f"(n {row['real']['n']}), {_num(row['generated']['median'], '.1f')} generated "
                     f"(n {row['generated']['n']}), gen/real {_num(row['median_area_ratio'])}")
    if "kid" in report:
        lines.append(format_kid(report["kid"]))
    return "\n".join(lines)


def plot_histograms(report: dict[str, Any], samples: Samples, path: Path) -> None:
    """Rows: classes; columns: the four features and nuclei per tile; real and generated overlaid."""
    from histosmith.data.plots import plt, save_figure

    real_nuclei, gen_nuclei = samples.real_nuclei, samples.generated_nuclei
    real_counts, gen_counts = samples.real_counts, samples.generated_counts
    names = report["class_names"]
    cols = [*FEATURES, "nuclei per tile"]
    fig, axes = plt.subplots(len(names), len(cols), figsize=(2.8 * len(cols), 2.3 * len(names)), squeeze=False)
    for c, name in enumerate(names):
        for j, col in enumerate(cols):
            ax = axes[c, j]
            if j < len(FEATURES):
                r, g = real_nuclei.of(c + 1, col), gen_nuclei.of(c + 1, col)
            else:
                r, g = real_counts[:, c].astype(float), gen_counts[:, c].astype(float)
            both = np.concatenate([r, g])
            if len(both):
                bins = np.histogram_bin_edges(both, bins=20)
                for values, colour, label in ((r, "#7b4f9d", "real"), (g, "#d95f02", "generated")):
                    if len(values):
                        ax.hist(values, bins=bins, density=True, alpha=0.5, color=colour, label=label)
            ax.set_title(f"{name}: {col}", fontsize=8)
            ax.tick_params(labelsize=7)
            if c == 0 and j == 0:
                ax.legend(fontsize=7)
    if "kid" in report:
        fig.suptitle(format_kid(report["kid"]), fontsize=9)
    save_figure(fig, path)
