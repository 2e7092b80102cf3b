"""``meta.json``: everything about a dataset that is not per tile, with its type checks."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from histosmith.data.atomic import read_json_object
from histosmith.data.layout import FORMAT_VERSION, META_FILE
from histosmith.errors import file_error


@dataclass
class DatasetMeta:
    """Everything about a dataset that is not per tile (stored as ``meta.json``)."""

    class_names: list[str]
    tissue_names: list[str]
    tile_size: int
    count_margin: int = 0  # 0: whole tile; 16: the CoNIC central-224 rule
    microns_per_pixel: float | None = None
    count_scale: list[float] = field(default_factory=list)  # per class, e.g. the 99th percentile
    count_max: list[int] = field(default_factory=list)  # per class, the largest count seen (training range)
    source: str = ""
    licence: str = ""
    notes: str = ""
    n_tiles: int = 0
    shard_size: int = 0
    tissue_tiles: dict[str, int] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: str | Path = META_FILE) -> DatasetMeta:
        known = {f.name for f in fields(cls)}
        missing = [k for k in ("class_names", "tissue_names", "tile_size") if k not in data]
        if missing:
            raise file_error(path, f"missing keys {missing}")
        version = data.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or isinstance(version, bool):
            raise file_error(path, f"format_version: expected a whole number, got {version!r}")
        if version > FORMAT_VERSION:
            raise file_error(path, f"format version {version} is newer than this HistoSmith")
        meta = cls(**{k: v for k, v in data.items() if k in known})
        problem = meta.problem()
        if problem:
            raise file_error(path, problem)
        return meta

    def problem(self) -> str | None:
        """What is wrong with the field types and values (a hand-edited meta.json), else None."""

        def names(value: Any) -> bool:
            return isinstance(value, list) and all(isinstance(v, str) and v for v in value)

        def whole(value: Any, low: int = 0) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= low

        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        if not names(self.class_names) or not self.class_names:
            return "class_names: expected a list of names"
        if len(set(self.class_names)) != len(self.class_names):
            return "class_names: repeated names"
        if not names(self.tissue_names):
            return "tissue_names: expected a list of names"
        for key in ("tile_size", "count_margin", "n_tiles", "shard_size"):
            if not whole(getattr(self, key)):
                return f"{key}: expected a whole number >= 0, got {getattr(self, key)!r}"
        if self.microns_per_pixel is not None and not (number(self.microns_per_pixel) and self.microns_per_pixel > 0):
            return f"microns_per_pixel: expected a positive number, got {self.microns_per_pixel!r}"
        k = len(self.class_names)
        if self.count_scale and not (isinstance(self.count_scale, list) and len(self.count_scale) == k
                                     and all(number(v) and v > 0 for v in self.count_scale)):
            return f"count_scale: expected {k} positive numbers, got {self.count_scale!r}"
        if self.count_max and not (isinstance(self.count_max, list) and len(self.count_max) == k
                                   and all(whole(v) for v in self.count_max)):
            return f"count_max: expected {k} whole numbers, got {self.count_max!r}"
        if not isinstance(self.tissue_tiles, dict) or not isinstance(self.extra, dict):
            return "tissue_tiles and extra: expected objects"
        for key in ("source", "licence", "notes"):
            if not isinstance(getattr(self, key), str):
                return f"{key}: expected text"
        return None

    @classmethod
    def load(cls, path: str | Path) -> DatasetMeta:
        return cls.from_json(read_json_object(path), path)
