"""``hs-eval vqvae``: how well the autoencoder reconstructs held-out tiles, labels included."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from histosmith.data.labels import nucleus_areas
from histosmith.evaluation.conic import ConicAccumulator
from histosmith.runtime.postprocess import PostprocessConfig, labels_from_maps
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
        return "\n".join(f"{k:<26}{v}" for k, v in rows)


@torch.no_grad()
def evaluate_vqvae(checkpoint: Path, data: Path, split: str | None = "val", batch_size: int = 32,
                   post: PostprocessConfig = PostprocessConfig()) -> VQReport:
    model, ckpt = load_vqvae(checkpoint)
    names = ["background", *ckpt["dataset"]["class_names"]]
    from histosmith.training.common import check_dataset_matches
    from histosmith.training.trainer import dataset_summary

    summary = dataset_summary(data)
    check_dataset_matches(ckpt["dataset"], summary["class_names"], summary["tissue_names"], summary["tile_size"],
                          str(data))
    store = TileStore.load(data, split, show_progress=False)
    k1 = len(names)
    inter, union = np.zeros(k1), np.zeros(k1)
    sq_err, n_px, dist_err = 0.0, 0, 0.0
    code_hist = np.zeros(model.cfg.codebook_size)
    acc = ConicAccumulator(names[1:])
    areas: dict[str, list[np.ndarray]] = {"true": [], "rederived": []}
    area_classes: dict[str, list[np.ndarray]] = {"true": [], "rederived": []}
    for start in range(0, len(store), batch_size):
        index = np.arange(start, min(start + batch_size, len(store)))
        x = store.inputs(index)
        out, codes, _ = model(x)
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
            for key, lab in (("true", truth), ("rederived", rederived)):
                a, c = nucleus_areas(lab, k1 - 1)
                areas[key].append(a)
                area_classes[key].append(c)
    mse = sq_err / max(n_px, 1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    result = acc.result()
    p = code_hist / max(code_hist.sum(), 1)
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
    )


def _median_area_ratio(names: list[str], areas: dict[str, list[np.ndarray]],
                       classes: dict[str, list[np.ndarray]]) -> dict[str, float | None]:
    a = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in areas.items()}
    c = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in classes.items()}
    out: dict[str, float | None] = {}
    for k, name in enumerate(names, start=1):
        true, rederived = a["true"][c["true"] == k], a["rederived"][c["rederived"] == k]
        out[name] = float(np.median(rederived) / np.median(true)) if len(true) and len(rederived) else None
    return out
