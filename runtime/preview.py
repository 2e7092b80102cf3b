"""Contact sheets: generated tiles with nucleus outlines coloured by class, beside the class mask (numpy, and
Pillow for the text and the PNG file)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

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
        pair = pair.repeat(scale, axis=0).repeat(scale, axis=1)
        pair = np.pad(pair, ((2, 14 if captions else 2), (2, 2), (0, 0)), constant_values=255)
        if captions:
            pair = _write(pair, (3, pair.shape[0] - 12), captions[i][:40])
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
    legend = Image.new("RGB", (sheet.shape[1], 18), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    x = 4
    for c, name in enumerate(class_names, start=1):
        draw.rectangle((x, 4, x + 10, 14), fill=tuple(int(v) for v in colours[c]))
        draw.text((x + 14, 3), name, fill=(0, 0, 0))
        x += 20 + int(draw.textlength(name))
    return np.concatenate([np.asarray(legend), sheet], axis=0)


def _write(rgb: np.ndarray, xy: tuple[int, int], text: str) -> np.ndarray:
    """``rgb`` with ``text`` drawn in black at ``xy`` (Pillow's built-in font)."""
    canvas = Image.fromarray(rgb)
    ImageDraw.Draw(canvas).text(xy, text, fill=(0, 0, 0))
    return np.asarray(canvas)


def save_png(path: Path, rgb: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buffer, format="PNG")
    write_bytes_atomic(path, lambda f: f.write(buffer.getvalue()))
