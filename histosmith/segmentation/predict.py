"""Segmenter outputs -> CoNIC labels, through the generator's post-processing (``runtime/postprocess.py``)."""

from __future__ import annotations

import numpy as np
import torch

from histosmith.runtime.postprocess import PostprocessConfig, labels_from_maps
from histosmith.segmentation.model import Segmenter


def class_map(foreground_logit: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """(1, H, W) foreground logit and (K+1, H, W) class logits -> class ids (H, W): 0 outside the foreground,
    else the most likely nucleus class (background excluded)."""
    return np.where(foreground_logit[0] > 0, logits[1:].argmax(axis=0) + 1, 0)


@torch.no_grad()
def predict_labels(model: Segmenter, images: np.ndarray, batch_size: int = 32,
                   post: PostprocessConfig = PostprocessConfig()) -> list[np.ndarray]:
    """uint8 (N, H, W, 3) RGB -> one int32 (H, W, 2) instance + class label tile per image."""
    model.eval()
    n_classes = model.cfg.n_classes
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        chunk = np.asarray(images[start : start + batch_size])
        x = torch.from_numpy(chunk.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)  # (B, 3, H, W)
        pred = model(x)
        fg, dist, logits = pred.foreground.numpy(), pred.distance.numpy(), pred.logits.numpy()
        for b in range(len(chunk)):
            out.append(labels_from_maps(dist[b, 0], class_map(fg[b], logits[b]), n_classes, post))
    return out
