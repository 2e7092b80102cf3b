"""Segmenter outputs -> CoNIC labels, through the generator's post-processing (``runtime/postprocess.py``).

Test-time augmentation: the three maps are averaged over the 8 flips/rotations of each tile (mapped
back), the usual cheap gain for dense prediction on tissue, which has no preferred orientation.
"""

from __future__ import annotations

import numpy as np
import torch

from histosmith.runtime.postprocess import PostprocessConfig, labels_from_maps
from histosmith.segmentation.model import Segmenter
from histosmith.training.data import dihedral


def undo_dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """Inverse of ``dihedral(x, k)`` on (..., H, W) arrays."""
    x = np.rot90(x, -(k % 4), axes=(-2, -1))
    return x[..., ::-1] if k >= 4 else x


def class_map(foreground_logit: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """(1, H, W) foreground logit and (K+1, H, W) class scores -> class ids (H, W): 0 outside the foreground,
    else the most likely nucleus class (background excluded)."""
    return np.where(foreground_logit[0] > 0, logits[1:].argmax(axis=0) + 1, 0)


def model_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) RGB -> the segmenter's input, float (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.asarray(images).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)


@torch.no_grad()
def pooled_features(model: Segmenter, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB -> (N, C) float64 global-average-pooled bottleneck features (eval mode)."""
    model.eval()
    parts = [model.pooled_features(model_input(images[s : s + batch_size])).double().numpy()
             for s in range(0, len(images), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.cfg.base_channels * model.cfg.channel_mult[-1]))


@torch.no_grad()
def predict_maps(model: Segmenter, rgb: torch.Tensor, tta: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB (B, 3, H, W) in [-1, 1] -> foreground logits (B, 1, H, W), distance (B, 1, H, W), class
    probabilities (B, K+1, H, W); averaged over the 8 dihedral transforms when ``tta``."""
    transforms = range(8) if tta else range(1)
    sums = None
    for k in transforms:
        x = torch.from_numpy(np.ascontiguousarray(dihedral(rgb.numpy(), k)))
        out = model(x)
        maps = [undo_dihedral(t.float().numpy(), k) for t in (out.foreground, out.distance, out.logits.softmax(1))]
        sums = maps if sums is None else [s + m for s, m in zip(sums, maps, strict=True)]
    fg, dist, probs = (s / len(transforms) for s in sums)
    return fg, dist, probs


def predict_labels(model: Segmenter, images: np.ndarray, batch_size: int = 32, tta: bool = True,
                   post: PostprocessConfig = PostprocessConfig()) -> list[np.ndarray]:
    """uint8 (N, H, W, 3) RGB -> one int32 (H, W, 2) instance + class label tile per image."""
    model.eval()
    n_classes = model.cfg.n_classes
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        chunk = np.asarray(images[start : start + batch_size])
        fg, dist, probs = predict_maps(model, model_input(chunk), tta)
        for b in range(len(chunk)):
            out.append(labels_from_maps(dist[b, 0], class_map(fg[b], probs[b]), n_classes, post))
    return out
