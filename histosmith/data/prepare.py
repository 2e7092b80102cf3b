"""``hs-data prepare``: any source -> a HistoSmith dataset directory, written atomically."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from histosmith.data.atomic import atomic_directory
from histosmith.data.meta import DatasetMeta
from histosmith.data.sources.common import Source, Tiling
from histosmith.data.writer import DatasetWriter
from histosmith.errors import HistoSmithError

log = logging.getLogger(__name__)

SOURCES = ("conic", "pannuke", "folder", "example", "synthetic")


def open_source(
    kind: str,
    path: Path | None,
    tile_size: int | None = None,
    stride: int | None = None,
    downscale: int | None = None,
    n_tiles: int = 256,
    seed: int = 0,
) -> Source:
    """Create the lazy :class:`Source` for ``kind``; validates headers before any tile is read.

    ``None`` options take the source's defaults: its own tile size and no downscale, except for
    ``example`` (64 px tiles after a 2x downscale) and ``synthetic`` (64 px tiles).
    """
    tiling = Tiling(tile_size, stride, downscale or 1)
    if kind in ("conic", "pannuke", "folder"):
        if path is None:
            raise HistoSmithError(f"--path is required for --source {kind}")
        if not path.exists():
            raise HistoSmithError(f"{path}: not found")
    if kind == "conic":
        from histosmith.data.sources.conic import conic_source

        return conic_source(path, tiling)
    if kind == "pannuke":
        from histosmith.data.sources.pannuke import pannuke_source

        return pannuke_source(path, tiling)
    if kind == "folder":
        from histosmith.data.sources.folder import folder_source

        return folder_source(path, tiling)
    if kind == "example":
        from histosmith.data.sources.example import example_source

        return example_source(Tiling(tile_size or 64, stride, downscale or 2), cache=path)
    if kind == "synthetic":
        from histosmith.data.sources.synthetic import synthetic_source

        return synthetic_source(n_tiles, tile_size or 64, seed)
    raise HistoSmithError(f"unknown source {kind!r}; choose from {SOURCES}")


def write_source(
    source: Source,
    out: Path,
    shard_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> DatasetMeta:
    """Stream a source into ``out`` (which must not exist); nothing is left behind on failure."""
    meta = DatasetMeta(
        class_names=source.class_names,
        tissue_names=source.tissue_names,
        tile_size=source.tile_size,
        count_margin=source.count_margin,
        microns_per_pixel=source.microns_per_pixel,
        source=source.source,
        licence=source.licence,
        notes=source.notes,
    )
    with atomic_directory(out) as tmp:
        writer = DatasetWriter(tmp, meta, shard_size)
        n_tiles = 0
        for tile in source.tiles:
            if tile.image.shape[:2] != (source.tile_size, source.tile_size):
                raise HistoSmithError(
                    f"{tile.info.get('patch_info', '?')}: tile of {tile.image.shape[:2]} px, expected "
                    f"{source.tile_size} px"
                )
            if tile.info.get("tissue") not in source.tissue_names:
                raise HistoSmithError(f"{tile.info.get('patch_info', '?')}: unknown tissue {tile.info.get('tissue')}")
            writer.add(tile.image, tile.labels, tile.info)
            n_tiles += 1
            if progress:
                progress(1)
        if n_tiles == 0:
            raise HistoSmithError("the source produced no tiles")
        meta = writer.close()
    return meta


def prepare(
    kind: str,
    path: Path | None,
    out: Path,
    tile_size: int | None = None,
    stride: int | None = None,
    downscale: int | None = None,
    n_tiles: int = 256,
    seed: int = 0,
    shard_size: int | None = None,
    show_progress: bool = True,
) -> DatasetMeta:
    """Prepare a dataset from any source; returns its metadata."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HistoSmithError(f"{out}: already exists and is not empty")
    if out.exists():
        out.rmdir()
    source = open_source(kind, path, tile_size, stride, downscale, n_tiles, seed)
    with tqdm(total=source.n_tiles_hint, unit="tile", desc=f"prepare {kind}", disable=not show_progress) as bar:
        return write_source(source, out, shard_size, bar.update)
