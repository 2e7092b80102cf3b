"""``hs-data merge``: several datasets with the same classes and tissues (e.g. the outputs of generation
runs on different machines) streamed into one, re-sharded; the new directory appears complete or not at all."""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from histosmith.data.atomic import atomic_directory
from histosmith.data.format import Dataset, DatasetMeta, DatasetWriter
from histosmith.errors import file_error

log = logging.getLogger(__name__)


def merge_datasets(sources: list[Path], out: Path, shard_size: int | None = None,
                   show_progress: bool = True) -> DatasetMeta:
    """Concatenate ``sources`` (tile order kept, source after source) into the new dataset ``out``."""
    datasets = [Dataset.open(s) for s in sources]  # every source is checked before anything is written
    first = datasets[0].meta
    for ds in datasets[1:]:
        m = ds.meta
        for what in ("class_names", "tissue_names", "tile_size", "count_margin"):
            if getattr(m, what) != getattr(first, what):
                raise file_error(ds.root, f"{what} {getattr(m, what)} differ from {getattr(first, what)} of "
                                          f"{datasets[0].root}; only datasets of one generator merge")
    meta = DatasetMeta(class_names=list(first.class_names), tissue_names=list(first.tissue_names),
                       tile_size=first.tile_size, count_margin=first.count_margin,
                       microns_per_pixel=first.microns_per_pixel, source=first.source, licence=first.licence,
                       notes=f"merged from {', '.join(str(s) for s in sources)}",
                       extra={"merged_from": [str(s) for s in sources]})
    with atomic_directory(out) as tmp, tqdm(total=sum(len(ds) for ds in datasets), desc="merge", unit="tile",
                                            disable=not show_progress) as bar:
        writer = DatasetWriter(tmp, meta, shard_size)
        for ds in datasets:
            for shard, images, labels in ds.iter_shards():
                for image, label, row in zip(images, labels, shard.patch_info(), strict=True):
                    writer.add(image, label, row)
                bar.update(len(images))
        final = writer.close()
    log.info("merged %d datasets into %s (%d tiles)", len(sources), out, final.n_tiles)
    return final
