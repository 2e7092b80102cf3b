"""``hs-eval vqvae``: how well the autoencoder reconstructs held-out tiles, labels included."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from histosmith.data.labels import nucleus_areas
from histosmith.evaluation.conic import ConicAccumulator
from histosmith.runtime.postprocess import MarkerDepth, PostprocessConfig, labels_from_maps
from histosmith.training.data import TileStore
from histosmith.training.vqvae import load_vqvae


@dataclass(frozen=True)
class VQReport:
    n_tiles: int
    psnr: float  # RGB, dB, on uint8 values
    miou: float  # class mask, mean over background + K classes
    class_iou: dict[str, float]
    pq: float  # binary PQ of instances re-derived from the reconstruction (CoNIC per-tile mean)
    mpq_plus: float
    distance_mae: float
    perplexity: float
    codes_used: int
    codebook_size: int
    # median area of the re-derived nuclei / of the true ones, per class: does the round trip keep sizes?
    median_area_ratio: dict[str, float | None]
    # the watershed's marker depth h swept on the reconstructed maps (what the runtime post-processes):
    # [{"h", "pq", "mpq_plus", "class_pq": {name: pq}}], and the value chosen by :func:`recommend_marker_depth`
    marker_depths: list[dict] = field(default_factory=list)
    recommended_marker_depth: float | None = None
    # per class, the smallest h whose PQ of that class is within the tolerance of its best
    # (:func:`recommend_class_marker_depths`); the ``--marker-depth`` text that applies them, and the
    # round trip's PQ / mPQ+ with it (``{"pq", "mpq_plus"}``)
    recommended_class_marker_depths: dict[str, float] = field(default_factory=dict)
    recommended_marker_depth_spec: str | None = None
    class_marker_depths_result: dict[str, float] = field(default_factory=dict)
    # true nuclei per class in the evaluated tiles: how much a class's PQ, and its recommendation, rests on
    class_nuclei: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def format_table(self) -> str:
        rows = [("tiles", f"{self.n_tiles}"), ("RGB PSNR", f"{self.psnr:.2f} dB"), ("class mIoU", f"{self.miou:.4f}"),
                ("instance PQ", f"{self.pq:.4f}"), ("instance mPQ+", f"{self.mpq_plus:.4f}"),
                ("distance MAE", f"{self.distance_mae:.4f}"),
                ("codebook perplexity", f"{self.perplexity:.1f} of {self.codebook_size}"),
                ("codes used", f"{self.codes_used} of {self.codebook_size}")]
        rows += [(f"IoU {k}", f"{v:.4f}") for k, v in self.class_iou.items()]
        rows += [(f"area ratio {k}", "n/a" if v is None else f"{v:.3f}") for k, v in self.median_area_ratio.items()]
        rows += [(f"marker depth {e['h']:g}", f"PQ {e['pq']:.4f}  mPQ+ {e['mpq_plus']:.4f}")
                 for e in self.marker_depths]
        if self.recommended_marker_depth is not None:
            rows.append(("recommended marker depth", f"{self.recommended_marker_depth:g}"))
        rows += [(f"  for {k} alone", f"{v:g}  ({self.class_nuclei.get(k, 0)} true nuclei)")
                 for k, v in self.recommended_class_marker_depths.items()]
        if self.recommended_marker_depth_spec is not None:
            r = self.class_marker_depths_result
            rows.append(("per-class marker depth", f"{self.recommended_marker_depth_spec}  (PQ {r['pq']:.4f}  "
                                                   f"mPQ+ {r['mpq_plus']:.4f})"))
        return "\n".join(f"{k:<26}{v}" for k, v in rows)


MARKER_DEPTHS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
MARKER_TOLERANCE = 0.005  # PQ and mPQ+ within this of their best count as equally good


def recommend_marker_depth(rows: list[dict[str, float]], tolerance: float = MARKER_TOLERANCE) -> float:
    """The smallest marker depth whose round-trip PQ and mPQ+ are both within ``tolerance`` of their best.

    Among values that re-derive the real tiles' instances equally well, the smallest splits touching nuclei
    most: on generated maps the dominant instance error is two nuclei merged into one
    (benchmarks/postprocess_h.py), so ties go to the value that splits.
    """
    if not rows:
        raise ValueError("no marker depths were evaluated")
    best_pq, best_mpq = max(r["pq"] for r in rows), max(r["mpq_plus"] for r in rows)
    good = [r["h"] for r in rows if r["pq"] >= best_pq - tolerance and r["mpq_plus"] >= best_mpq - tolerance]
    return min(good) if good else max(rows, key=lambda r: r["pq"])["h"]


def recommend_class_marker_depths(rows: list[dict], tolerance: float = MARKER_TOLERANCE) -> dict[str, float]:
    """Per class, the smallest marker depth whose PQ of that class is within ``tolerance`` of its best.

    The same rule as :func:`recommend_marker_depth`, class by class: a class whose touching nuclei the decoder
    separates by clear valleys can be split harder without the irregular nuclei of another class fragmenting.
    A class absent from the round trip (PQ ``nan`` everywhere) is left out.
    """
    if not rows:
        raise ValueError("no marker depths were evaluated")
    out = {}
    for name in rows[0]["class_pq"]:
        scored = [(r["h"], r["class_pq"][name]) for r in rows if np.isfinite(r["class_pq"][name])]
        if scored:
            best = max(q for _, q in scored)
            out[name] = min(h for h, q in scored if q >= best - tolerance)
    return out


@torch.no_grad()
def evaluate_vqvae(checkpoint: Path, data: Path, split: str | None = "val", batch_size: int = 32,
                   post: PostprocessConfig = PostprocessConfig(),
                   marker_depths: tuple[float, ...] = MARKER_DEPTHS) -> VQReport:
    """Reconstruct ``split``'s tiles; ``post`` re-derives the instances the report's PQ and areas use, and every
    value of ``marker_depths`` is tried on the same reconstructed maps (the recommended ``--marker-depth``)."""
    model, ckpt = load_vqvae(checkpoint)
    names = ["background", *ckpt["dataset"]["class_names"]]
    from histosmith.training.common import check_dataset_matches
    from histosmith.training.trainer import dataset_summary

    summary = dataset_summary(data)
    check_dataset_matches(ckpt["dataset"], summary["class_names"], summary["tissue_names"], summary["tile_size"],
                          str(data))
    store = TileStore.load(data, split, show_progress=False)
    k1 = len(names)
    class_names = names[1:]
    inter, union = np.zeros(k1), np.zeros(k1)
    sq_err, n_px, dist_err = 0.0, 0, 0.0
    code_hist = np.zeros(model.cfg.codebook_size)
    acc = ConicAccumulator(names[1:])
    sweep = {h: ConicAccumulator(names[1:]) for h in marker_depths}
    areas: dict[str, list[np.ndarray]] = {"true": [], "rederived": []}
    area_classes: dict[str, list[np.ndarray]] = {"true": [], "rederived": []}
    for index, out, codes in _reconstructions(model, store, batch_size):
        code_hist += np.bincount(codes.ravel().numpy(), minlength=len(code_hist))
        rgb = np.clip(np.round((out.image.numpy().transpose(0, 2, 3, 1) + 1) * 127.5), 0, 255)
        sq_err += float(((rgb - store.images[index].astype(np.float64)) ** 2).sum())
        n_px += rgb.size
        dist = out.distance[:, 0].numpy()
        dist_err += float(np.abs(dist - store.distances[index].astype(np.float32)).sum())
        pred_cls = out.logits.argmax(1).numpy()
        true_cls = store.classes[index]
        for c in range(k1):
            p, t = pred_cls == c, true_cls == c
            inter[c] += (p & t).sum()
            union[c] += (p | t).sum()
        for i, tile in enumerate(index):
            truth = np.stack([store.instances[tile], true_cls[i]], axis=-1).astype(np.int32)
            rederived = labels_from_maps(dist[i], pred_cls[i], k1 - 1, post)
            acc.add(truth, rederived)
            for h, acc_h in sweep.items():
                acc_h.add(truth, rederived if h == post.h else
                          labels_from_maps(dist[i], pred_cls[i], k1 - 1, replace(post, h=h)))
            for key, lab in (("true", truth), ("rederived", rederived)):
                a, c = nucleus_areas(lab, k1 - 1)
                areas[key].append(a)
                area_classes[key].append(c)
    mse = sq_err / max(n_px, 1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    result = acc.result()
    p = code_hist / max(code_hist.sum(), 1)
    depths = []
    for h, acc_h in sweep.items():
        swept = acc_h.result()
        depths.append({"h": h, "pq": swept.pq, "mpq_plus": swept.mpq_plus,
                       "class_pq": {n: v["pq"] for n, v in swept.per_class.items()}})
    overall = recommend_marker_depth(depths) if depths else None
    per_class = recommend_class_marker_depths(depths) if depths else {}
    spec, spec_result = None, {}
    if per_class:
        marker = MarkerDepth(overall, tuple((n, h) for n, h in per_class.items() if h != overall))
        spec = str(marker)
        if marker.per_class:  # a second pass over the tiles, only for a setting the sweep did not try
            spec_result = _round_trip(model, store, batch_size, marker.config(class_names, post.min_area),
                                      class_names)
        else:
            spec_result = next({"pq": r["pq"], "mpq_plus": r["mpq_plus"]} for r in depths if r["h"] == overall)
    return VQReport(
        n_tiles=len(store),
        psnr=float(10 * np.log10(255.0**2 / mse)) if mse > 0 else float("inf"),
        miou=float(np.nanmean(iou)),
        class_iou={n: float(v) for n, v in zip(names, iou, strict=True)},
        pq=result.pq,
        mpq_plus=result.mpq_plus,
        distance_mae=dist_err / max(n_px / 3, 1),
        perplexity=float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum())),
        codes_used=int((code_hist > 0).sum()),
        codebook_size=model.cfg.codebook_size,
        median_area_ratio=_median_area_ratio(names[1:], areas, area_classes),
        marker_depths=depths,
        recommended_marker_depth=overall,
        recommended_class_marker_depths=per_class,
        class_nuclei=_class_nuclei(class_names, area_classes["true"]),
        recommended_marker_depth_spec=spec,
        class_marker_depths_result=spec_result,
    )


def _reconstructions(model, store: TileStore, batch_size: int):
    """(tile indices, decoder output, codes) per batch of ``store``."""
    for start in range(0, len(store), batch_size):
        index = np.arange(start, min(start + batch_size, len(store)))
        out, codes, _ = model(store.inputs(index))
        yield index, out, codes


def _round_trip(model, store: TileStore, batch_size: int, post: PostprocessConfig,
                class_names: list[str]) -> dict[str, float]:
    """PQ and mPQ+ of the instances ``post`` re-derives from the reconstructed maps."""
    acc = ConicAccumulator(class_names)
    for index, out, _ in _reconstructions(model, store, batch_size):
        dist, pred_cls = out.distance[:, 0].numpy(), out.logits.argmax(1).numpy()
        for i, tile in enumerate(index):
            truth = np.stack([store.instances[tile], store.classes[tile]], axis=-1).astype(np.int32)
            acc.add(truth, labels_from_maps(dist[i], pred_cls[i], len(class_names), post))
    result = acc.result()
    return {"pq": result.pq, "mpq_plus": result.mpq_plus}


def _class_nuclei(names: list[str], classes: list[np.ndarray]) -> dict[str, int]:
    counts = np.bincount(np.concatenate(classes or [np.zeros(0, np.int64)]), minlength=len(names) + 1)
    return {name: int(counts[k]) for k, name in enumerate(names, start=1)}


def _median_area_ratio(names: list[str], areas: dict[str, list[np.ndarray]],
                       classes: dict[str, list[np.ndarray]]) -> dict[str, float | None]:
    a = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in areas.items()}
    c = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in classes.items()}
    out: dict[str, float | None] = {}
    for k, name in enumerate(names, start=1):
        true, rederived = a["true"][c["true"] == k], a["rederived"][c["rederived"] == k]
        out[name] = float(np.median(rederived) / np.median(true)) if len(true) and len(rederived) else None
    return out
