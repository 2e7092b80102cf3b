"""The on-disk dataset: the CoNIC layout in shards, plus ``meta.json`` (docs/formats.md).

```
DIR/meta.json
DIR/shard-00000/images.npy      uint8 (n, H, W, 3) RGB
DIR/shard-00000/labels.npy      int32 (n, H, W, 2): instance ids, class ids
DIR/shard-00000/counts.csv      one column per class name, one row per tile
DIR/shard-00000/patch_info.csv  `patch_info` (tile name), `tissue`, then source-specific columns
```

Every shard is itself a CoNIC directory, so other tools read it as is. A plain CoNIC directory (the four
files at the top level, no shards) is read as a single shard. Shards are written atomically and hold a
fixed number of tiles, so a writer can resume after the last complete shard.

The code lives in one module per concept: :mod:`~histosmith.data.layout` (file names, shard sizes),
:mod:`~histosmith.data.meta` (``meta.json``), :mod:`~histosmith.data.codecs` (reading ``.npy`` and CSV),
:mod:`~histosmith.data.reader` (:class:`Dataset`) and :mod:`~histosmith.data.writer` (:class:`DatasetWriter`).
This module gathers their public classes and functions (file names: :mod:`~histosmith.data.layout`).
"""

from __future__ import annotations

from histosmith.data.codecs import npy_header, read_counts_csv, read_counts_header
from histosmith.data.layout import default_shard_size
from histosmith.data.meta import DatasetMeta
from histosmith.data.reader import Dataset, Shard
from histosmith.data.writer import DatasetWriter, count_statistics, write_shard

__all__ = [
    "Dataset", "DatasetMeta", "DatasetWriter", "Shard", "count_statistics", "default_shard_size", "npy_header",
    "read_counts_csv", "read_counts_header", "write_shard",
]
