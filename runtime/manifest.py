"""``manifest.json``: everything the runtime needs beside the graph files, and the checks it makes.

Written by ``hs-export``; read by ``hs-generate`` before any work: format version, models' configs, the
noise schedule, class and tissue names, count scales and training range, graph I/O specs, the files of
each precision variant with their SHA-256, and the versions that exported them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histosmith.data.atomic import read_json_object, sha256_file
from histosmith.data.conditioning import ConditionSpec
from histosmith.errors import HistoSmithError, file_error
from histosmith.runtime.info import GeneratorInfo
from histosmith.runtime.schedule import ScheduleConfig
from histosmith.runtime.specs import DECODER, UNET, GraphSpec

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".plan": "tensorrt", ".engine": "tensorrt"}


@dataclass(frozen=True)
class Variant:
    """One runnable pair of graph files."""

    precision: str  # fp32 | fp16 | int8
    format: str  # onnx | torchscript | tensorrt
    unet: str  # file names, relative to the export directory
    decoder: str
    step: str = ""  # the fused U-Net + DDIM step graph (GPU backends), when exported
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. TensorRT build facts


@dataclass
class Manifest:
    format_version: int
    condition: dict[str, Any]
    schedule: dict[str, Any]
    latent_shape: list[int]
    tile_size: int
    latent_scale: float
    models: dict[str, Any]
    graphs: dict[str, Any]
    batch: dict[str, Any]  # {"dynamic": bool, "min": int, "max": int}
    variants: list[dict[str, Any]]
    files: dict[str, str]  # file name -> sha256
    versions: dict[str, str]
    source: dict[str, Any]
    training_conditions: dict[str, list]
    count_margin: int = 0
    verification: dict[str, Any] = field(default_factory=dict)
    cache_key: str = ""
    provenance: list[dict[str, Any]] = field(default_factory=list)  # the generator's training records

    # ------------------------------------------------------------------ views

    @property
    def spec(self) -> ConditionSpec:
        return ConditionSpec.from_json(self.condition)

    def graph(self, name: str) -> GraphSpec:
        return GraphSpec.from_json(self.graphs[name])

    def info(self) -> GeneratorInfo:
        k = len(self.condition["class_names"])
        counts = np.asarray(self.training_conditions["counts"], dtype=np.int64).reshape(-1, k)
        return GeneratorInfo(
            spec=self.spec,
            schedule=ScheduleConfig(**self.schedule),
            latent_shape=tuple(self.latent_shape),
            tile_size=int(self.tile_size),
            training_counts=counts,
            training_tissues=np.asarray(self.training_conditions["tissues"], dtype=np.int64),
            count_margin=self.count_margin,
            source=f"HistoSmith export of {self.source.get('checkpoint', '?')} (step {self.source.get('step', '?')})",
            provenance=tuple(self.provenance),
        )

    def variant_list(self) -> list[Variant]:
        return [Variant(**v) for v in self.variants]

    def variant_for(self, engine: Path) -> Variant:
        """The variant whose U-Net file is ``engine`` (matched by file name)."""
        for v in self.variant_list():
            if v.unet == engine.name:
                return v
        known = ", ".join(v.unet for v in self.variant_list())
        raise file_error(engine, f"not listed in {MANIFEST_FILE} (this export has: {known})")

    def batch_range(self) -> tuple[int, int]:
        return int(self.batch["min"]), int(self.batch["max"])

    # ------------------------------------------------------------------ persistence and checks

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, directory: Path) -> None:
        from histosmith.data.atomic import write_json_atomic

        write_json_atomic(directory / MANIFEST_FILE, self.to_json())

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_FILE
        data = read_json_object(path, "not found; the engine must sit in an hs-export directory")
        if "format_version" not in data:
            raise file_error(path, "not a HistoSmith export manifest")
        if data["format_version"] != MANIFEST_VERSION:
            raise file_error(path, f"manifest format {data['format_version']}; this runtime reads {MANIFEST_VERSION}")
        try:
            manifest = cls(**data)
            for name in (UNET, DECODER):
                manifest.graph(name)
            manifest.spec  # noqa: B018 - validates the condition block
        except (TypeError, KeyError, HistoSmithError) as exc:
            raise file_error(path, f"malformed manifest ({exc})") from None
        return manifest

    def verify_file(self, directory: Path, name: str) -> Path:
        """Check that ``name`` exists and matches the SHA-256 recorded at export."""
        path = directory / name
        if not path.exists():
            raise file_error(path, "missing (listed in the manifest)")
        expected = self.files.get(name)
        if expected is None:
            raise file_error(path, f"not listed in {MANIFEST_FILE}; it belongs to another export")
        if sha256_file(path) != expected:
            raise file_error(path, f"SHA-256 differs from {MANIFEST_FILE}: the file was modified or comes "
                                   "from another export")
        return path
