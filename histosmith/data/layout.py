"""Names and sizes of the on-disk dataset layout (see :mod:`histosmith.data.format`)."""

from __future__ import annotations

FORMAT_VERSION = 1
META_FILE = "meta.json"
IMAGES_FILE = "images.npy"
LABELS_FILE = "labels.npy"
COUNTS_FILE = "counts.csv"
PATCH_INFO_FILE = "patch_info.csv"
REJECTED_FILE = "rejected.csv"  # patch_info rows of tile slots a filter left out of the shard (generation QC)
SHARD_PREFIX = "shard-"
SHARD_BYTES = 128 * 2**20  # target shard size; a shard is the unit held in memory


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}{index:05d}"


def default_shard_size(tile_size: int) -> int:
    """Tiles per shard so that one shard holds about ``SHARD_BYTES`` of images and labels."""
    tile_bytes = tile_size * tile_size * (3 + 2 * 4)
    return max(1, SHARD_BYTES // tile_bytes)
