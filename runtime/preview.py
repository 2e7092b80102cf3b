"""Contact sheets: generated tiles with nucleus outlines coloured by class, beside the class mask."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from histosmith.data.atomic import write_bytes_atomic

# Class colours (RGB), background first; chosen to stand out on H&E.
PALETTE = np.array([
    (0, 0, 0), (255, 60, 60), (60, 220, 60), (60, 140, 255), (255, 200, 0), (255, 0, 255), (0, 230, 230),
    (255, 130, 0), (160, 90, 255), (150, 255, 150), (255, 170, 200),
], dtype=np.uint8)


def class_colours(n_classes: int) -> np.ndarray:
    reps = -(-(n_classes + 1) // len(PALETTE))
    return np.tile(PALETTE, (reps, 1))[: n_classes + 1]


def outline_overlay(image: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """RGB tile with each nucleus's one-pixel outline drawn in its class colour."""
    inst, cls = labels[..., 0], labels[..., 1]
    edge = np.zeros(inst.shape, dtype=bool)
    edge[:-1] |= inst[:-1] != inst[1:]
    edge[1:] |= inst[:-1] != inst[1:]
    edge[:, :-1] |= inst[:, :-1] != inst[:, 1:]
    edge[:, 1:] |= inst[:, :-1] != inst[:, 1:]
    edge &= inst > 0
    out = image.copy()
    out[edge] = class_colours(n_classes)[cls[edge]]
    return out


def contact_sheet(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], n_classes: int,
                  class_names: Sequence[str], columns: int = 8, scale: int = 2,
                  captions: Sequence[str] | None = None) -> np.ndarray:
    """A grid of [overlay | class mask] pairs, upscaled ``scale`` times; returns RGB uint8."""
    colours = class_colours(n_classes)
    cells = []
    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        pair = np.concatenate([outline_overlay(img, lab, n_classes), colours[lab[..., 1]]], axis=1)
        pair = cv2.resize(pair, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        pair = cv2.copyMakeBorder(pair, 2, 14 if captions else 2, 2, 2, cv2.BORDER_CONSTANT, value=(255, 255, 255))
        if captions:
            cv2.putText(pair, captions[i][:40], (3, pair.shape[0] - 3), cv2.FONT_HERSHEY_PLAIN, 0.7, (0, 0, 0), 1)
        cells.append(pair)
    if not cells:
        return np.full((20, 200, 3), 255, np.uint8)
    blank = np.full_like(cells[0], 255)
    rows = []
    for r in range(0, len(cells), columns):
        row = cells[r : r + columns]
        row += [blank] * (columns - len(row)) if len(cells) > columns else []
        rows.append(np.concatenate(row, axis=1))
    sheet = np.concatenate(rows, axis=0)
    legend = np.full((18, sheet.shape[1], 3), 255, np.uint8)
    x = 4
    for c, name in enumerate(class_names, start=1):
        cv2.rectangle(legend, (x, 4), (x + 10, 14), tuple(int(v) for v in colours[c]), -1)
        cv2.putText(legend, name, (x + 14, 14), cv2.FONT_HERSHEY_PLAIN, 0.9, (0, 0, 0), 1)
        x += 20 + 9 * len(name)
    return np.concatenate([legend, sheet], axis=0)


def save_png(path: Path, rgb: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    write_bytes_atomic(path, lambda f: f.write(data.tobytes()))
