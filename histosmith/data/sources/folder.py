"""A generic folder of labelled images, matched by file stem.

```
P/classes.txt               one class name per line; line i is class id i (ids start at 1)
P/images/<stem>.png|tif|jpg RGB image
P/instances/<stem>.png|tif|npy   instance map (0 background, any positive ids)
P/classes/<stem>.png|tif|npy     class map (0 background, 1..K)
P/tissues.csv               optional: stem,tissue
```
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from histosmith.data.sources.common import Source, Tile, Tiling, as_label_array, cut_tiles
from histosmith.errors import HistoSmithError, file_error

IMAGE_EXTS = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
MAP_EXTS = (".png", ".tif", ".tiff", ".npy")
DEFAULT_TISSUE = "tissue"


def _by_stem(directory: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    if not directory.is_dir():
        raise file_error(directory, "directory not found")
    out: dict[str, Path] = {}
    for p in sorted(directory.iterdir()):
        if p.suffix.lower() in exts:
            if p.stem in out:
                raise file_error(p, f"two files share the stem {p.stem!r}")
            out[p.stem] = p
    return out


def read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark is no data
    except UnicodeDecodeError:
        raise file_error(path, "not UTF-8 text") from None
    except OSError as exc:
        raise file_error(path, f"unreadable ({exc.strerror})") from None


def read_map(path: Path) -> np.ndarray:
    """Read an integer label map (png/tif 8 or 16 bit, or .npy)."""
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise file_error(path, f"corrupt or truncated .npy ({exc})") from None
    else:
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise file_error(path, "unreadable image")
    if arr.ndim == 3:
        if not (arr == arr[..., :1]).all():
            raise file_error(path, "label map has several differing channels")
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise file_error(path, f"expected a 2-D label map, got shape {arr.shape}")
    return as_label_array(arr, str(path))


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise file_error(path, "unreadable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def folder_source(path: Path, tiling: Tiling | None = None) -> Source:
    tiling = tiling or Tiling()
    names_file = path / "classes.txt"
    if not names_file.exists():
        raise file_error(names_file, "not found (one class name per line)")
    class_names = [line.strip() for line in read_utf8(names_file).splitlines() if line.strip()]
    if len(set(class_names)) != len(class_names):
        raise file_error(names_file, "repeated class names")
    if not class_names:
        raise file_error(names_file, "no class names")
    images = _by_stem(path / "images", IMAGE_EXTS)
    insts = _by_stem(path / "instances", MAP_EXTS)
    classes = _by_stem(path / "classes", MAP_EXTS)
    stems = set(images) | set(insts) | set(classes)
    unmatched = sorted(s for s in stems if not (s in images and s in insts and s in classes))
    if unmatched:
        raise HistoSmithError(
            f"{path}: unmatched files for stems {unmatched[:5]}{' ...' if len(unmatched) > 5 else ''} "
            "(each stem needs an image, an instance map and a class map)"
        )
    if not stems:
        raise file_error(path / "images", "no images")
    tissue_of = {s: DEFAULT_TISSUE for s in stems}
    tissue_file = path / "tissues.csv"
    if tissue_file.exists():
        for row in csv.reader(io.StringIO(read_utf8(tissue_file), newline="")):
            if len(row) >= 2 and row[0].strip() in tissue_of and row[1].strip():
                tissue_of[row[0].strip()] = row[1].strip()
    if tiling.tile_size is None:
        first = read_rgb(images[min(stems)])
        tiling = replace(tiling, tile_size=min(first.shape[:2]) // tiling.downscale)

    def tiles() -> Iterator[Tile]:
        for stem in sorted(stems):
            image = read_rgb(images[stem])
            labels = np.stack([read_map(insts[stem]), read_map(classes[stem])], axis=-1)
            if labels.shape[:2] != image.shape[:2]:
                raise file_error(insts[stem], f"size {labels.shape[:2]} does not match image {image.shape[:2]}")
            labels[labels[..., 0] == 0, 1] = 0
            yield from cut_tiles(image, labels, tiling, str(classes[stem]), {"tissue": tissue_of[stem]},
                                 len(class_names), stem)

    return Source(
        class_names=class_names,
        tissue_names=sorted(set(tissue_of.values())),
        tile_size=tiling.tile_size,
        tiles=tiles(),
        source=f"folder {path}",
    )
