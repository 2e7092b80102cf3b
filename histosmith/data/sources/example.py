"""The embedded example: two real H&E tiles shipped in the ``histolytics`` wheel (BSD-3-Clause).

``histolytics==0.3.0`` on PyPI carries, as package data, two 1500x1500 crops of high-grade serous
ovarian carcinoma with segmented nuclei: a tumour nest (instance + type rasters) and a stroma tile
(nuclei as GeoParquet polygons with a ``class_name``). We download the wheel without dependencies,
read the files straight out of the zip (the package itself is never imported: it pulls GPU-only
dependencies), rasterise the polygons and tile both images. The nuclei are model predictions
published with the package, not expert annotation.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import shapely

from histosmith.data.atomic import sha256_file
from histosmith.data.sources.common import Source, Tile, Tiling, cut_tiles
from histosmith.errors import HistoSmithError

WHEEL = "histolytics-0.3.0-py3-none-any.whl"
WHEEL_SHA256 = "de2ad5cf6a24f95637b19030c202c4969dc966e851f510418746a5b86b653137"
CLASS_NAMES = ["neoplastic", "inflammatory", "connective"]
TISSUE_NAMES = ["tumour_nest", "stroma"]
# The nest's type raster codes 1 connective, 2 inflammatory, 3 neoplastic (checked against the
# polygons' class_name); map them onto CLASS_NAMES order.
NEST_TYPE_TO_CLASS = np.array([0, 3, 2, 1], dtype=np.int32)
DATA = "histolytics/data/"
LICENCE = "BSD-3-Clause (histolytics 0.3.0, Copyright (c) 2024-2025, HautaniemiLab)"
# Held out of every training (generator and downstream segmenter): the bottom VAL_ROWS rows of whole tiles of
# each crop, a contiguous band (66 tiles), so held-out tiles share no pixels with training at any stride.
VAL_ROWS = 3


def cache_dir() -> Path:
    """``$HISTOSMITH_CACHE`` or ``~/.cache/histosmith``."""
    return Path(os.environ.get("HISTOSMITH_CACHE") or Path.home() / ".cache" / "histosmith")


def fetch_wheel(cache: Path | None = None) -> Path:
    """Return the cached wheel, downloading it with pip (no dependencies) the first time."""
    cache = cache or cache_dir()
    wheel = cache / WHEEL
    if not wheel.exists():
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HistoSmithError(f"{cache}: cannot create the download cache ({exc.strerror})") from None
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--dest", str(cache), "histolytics==0.3.0"]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not wheel.exists():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise HistoSmithError(f"downloading {WHEEL} from PyPI failed: {last}")
    if sha256_file(wheel) != WHEEL_SHA256:
        raise HistoSmithError(f"{wheel}: checksum mismatch (corrupt download?); delete it and retry")
    return wheel


def _read(zf: zipfile.ZipFile, name: str, wheel: Path) -> bytes:
    try:
        return zf.read(DATA + name)
    except KeyError:
        raise HistoSmithError(f"{wheel}: {DATA + name} missing from the wheel") from None


def _decode_rgb(data: bytes, what: str) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise HistoSmithError(f"{what}: unreadable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def rasterise_polygons(wkb: list[bytes], classes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Polygons (WKB) with class ids -> (H, W, 2) instance + class raster; later polygons win overlaps."""
    labels = np.zeros((*shape, 2), dtype=np.int32)
    inst = np.zeros(shape, dtype=np.int32)
    for i, geom in enumerate(shapely.from_wkb(wkb)):
        if geom is None or geom.is_empty:
            continue
        for poly in getattr(geom, "geoms", [geom]):
            # Vertices trace pixel corners; shift by half a pixel to pixel centres, 4 bits of sub-pixel.
            pts = np.round((np.asarray(poly.exterior.coords)[:, :2] - 0.5) * 16).astype(np.int32)
            cv2.fillPoly(inst, [pts], i + 1, cv2.LINE_8, 4)
    labels[..., 0] = inst
    ids = np.concatenate([[0], classes.astype(np.int32)])
    labels[..., 1] = ids[inst]
    return labels


def load_example_images(wheel: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(tissue name, RGB image, (H, W, 2) labels) for the two tiles, at full resolution."""
    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        raise HistoSmithError(f"{wheel}: not a readable wheel ({exc})") from None
    with zf:
        nest = _decode_rgb(_read(zf, "hgsc_nest.jpg", wheel), "hgsc_nest.jpg")
        inst = np.load(io.BytesIO(_read(zf, "hgsc_nest_inst_mask.npz", wheel)))["nuc_raster"]
        types = np.load(io.BytesIO(_read(zf, "hgsc_nest_type_mask.npz", wheel)))["nuc_raster"]
        nest_labels = np.stack([inst, NEST_TYPE_TO_CLASS[types]], axis=-1).astype(np.int32)
        nest_labels[nest_labels[..., 0] == 0] = 0

        stroma = _decode_rgb(_read(zf, "hgsc_stromal_he.jpg", wheel), "hgsc_stromal_he.jpg")
        table = pq.read_table(io.BytesIO(_read(zf, "hgsc_stromal_cells.parquet", wheel)))
    names = table.column("class_name").to_pylist()
    unknown = sorted(set(names) - set(CLASS_NAMES))
    if unknown:
        raise HistoSmithError(f"{wheel}: unexpected nucleus classes {unknown}")
    classes = np.array([CLASS_NAMES.index(n) + 1 for n in names])
    wkb = table.column("geometry").to_pylist()
    stroma_labels = rasterise_polygons(wkb, classes, stroma.shape[:2])
    return [("tumour_nest", nest, nest_labels), ("stroma", stroma, stroma_labels)]


def held_out_from(height: int, size: int) -> int:
    """First row (output pixels) of the held-out band: the last ``VAL_ROWS`` rows of the ``size`` grid."""
    return (height // size - VAL_ROWS) * size


def example_source(tiling: Tiling | None = None, cache: Path | None = None) -> Source:
    """The example set: default 64 px tiles after a 2x downscale. The held-out band of each image (its last
    ``VAL_ROWS`` rows of whole, non-overlapping tiles: 66 ``val`` tiles in all) is fixed in pixels, so it is
    the same at every ``--stride``; ``train`` tiles are cut every ``stride`` px from the region above it and
    never reach into it (a smaller stride: more, overlapping training windows; no shared pixels with val)."""
    tiling = tiling or Tiling(tile_size=64, downscale=2)
    images = load_example_images(fetch_wheel(cache))
    size = tiling.output_size(1500)
    grid = Tiling(tiling.tile_size, None, tiling.downscale)

    def tiles() -> Iterator[Tile]:
        for tissue, image, labels in images:
            info = {"tissue": tissue}
            band = held_out_from(image.shape[0] // tiling.downscale, size)
            for tile in cut_tiles(image, labels, tiling, f"hgsc_{tissue}", info, len(CLASS_NAMES)):
                if tile.info["y"] + size <= band:
                    tile.info["split"] = "train"
                    yield tile
            for tile in cut_tiles(image, labels, grid, f"hgsc_{tissue}", info, len(CLASS_NAMES)):
                if tile.info["y"] >= band:
                    tile.info["split"] = "val"
                    yield tile

    return Source(
        class_names=list(CLASS_NAMES),
        tissue_names=list(TISSUE_NAMES),
        tile_size=tiling.output_size(1500),
        tiles=tiles(),
        source="histolytics 0.3.0 example data: two 1500x1500 H&E crops of high-grade serous ovarian carcinoma "
        "(hgsc_nest: instance + type rasters; hgsc_stromal_he: nucleus polygons)",
        licence=LICENCE,
        notes="Nucleus labels are model predictions shipped with histolytics, not expert annotation. "
        f"Downscaled {tiling.downscale}x.",
    )
