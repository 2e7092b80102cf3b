"""``manifest.json``: everything the runtime needs beside the graph files, parsed once into frozen types.

Written by ``hs-export``; read by ``hs-generate`` before any work: format version, the models' configs,
the noise schedule, class and tissue names, count scales and training range, graph I/O specs, the files
of each precision variant with their SHA-256, and the versions that exported them.

Integrity (what :func:`Manifest.load` and :meth:`Manifest.verify_file` check, and what they do not):

* every file name is a plain name inside the export directory — absolute paths, ``..`` and names that
  resolve (through links) outside the directory are refused before anything is opened;
* ``body_sha256`` is the SHA-256 of the canonical JSON of every other field, written by the exporter:
  an edited manifest (class names, latent shape, scales, file hashes) is refused, so one cannot relabel
  tiles or swap graphs by editing it. It is a checksum, not a signature: someone who recomputes the
  digest after editing defeats it;
* the semantic fields that shape the graphs (latent shape, condition width, class count, tile size) are
  checked against the graph I/O specs here, and the specs against the graph files when they are loaded;
* each graph file must match the SHA-256 recorded for it (a modified or foreign graph is refused).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any, Literal, get_args

import numpy as np

from histosmith.data.atomic import json_safe, read_json_object, sha256_file, write_json_atomic
from histosmith.data.conditioning import ConditionSpec
from histosmith.errors import HistoSmithError, file_error
from histosmith.runtime.info import GeneratorInfo
from histosmith.runtime.schedule import BetaSchedule, Prediction, SamplingDefaults, ScheduleConfig
from histosmith.runtime.specs import DECODER, STEP, UNET, GraphSpec

MANIFEST_FILE = "manifest.json"
# What ONNX Runtime's quantiser writes beside a graph it reads; an interrupted older hs-calibrate left them in
# exports. Never part of an export: hs-calibrate and hs-export remove them.
ORT_DEBRIS = "*-inferred.onnx"
MANIFEST_VERSION = 3
# 2: before the multistep solvers (a DDIM-only fused step graph, no sampling defaults); still read.
READABLE_VERSIONS = (2, 3)

Precision = Literal["fp32", "fp16", "bf16", "int8"]
GraphFormat = Literal["onnx", "torch", "tensorrt"]  # torch: torch.export programs (.pt2)
PRECISIONS: tuple[str, ...] = get_args(Precision)
GRAPH_FORMATS: tuple[str, ...] = get_args(GraphFormat)
FORMATS: dict[str, GraphFormat] = {".onnx": "onnx", ".pt2": "torch", ".plan": "tensorrt", ".engine": "tensorrt"}


class ManifestError(HistoSmithError):
    """A malformed field; :meth:`Manifest.load` prefixes the file name."""


def _require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(data, Mapping) or key not in data:
        raise ManifestError(f"{where}: missing {key!r}")
    value = data[key]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ManifestError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def _int(data: Mapping[str, Any], key: str, where: str, low: int = 0) -> int:
    value = _require(data, key, int, where)
    if value < low:
        raise ManifestError(f"{where}.{key}: {value} is below {low}")
    return value


def _choice(data: Mapping[str, Any], key: str, options: tuple[str, ...], where: str) -> Any:
    value = _require(data, key, str, where)
    if value not in options:
        raise ManifestError(f"{where}.{key}: {value!r} is not one of {list(options)}")
    return value


def check_file_name(name: str) -> str:
    """A file name the manifest may list: relative, no ``..``, no drive or backslash tricks."""
    path = PurePosixPath(name)
    if not name or "\\" in name or path.is_absolute() or ".." in path.parts or ":" in name or "\0" in name:
        raise ManifestError(f"file name {name!r} is not a plain name inside the export directory")
    return name


# ---------------------------------------------------------------------------------------------- parts


@dataclass(frozen=True)
class BatchRange:
    """Batch sizes the graphs accept: any in ``min..max`` when dynamic, exactly ``max`` otherwise."""

    dynamic: bool
    min: int
    max: int

    @property
    def bounds(self) -> tuple[int, int]:
        return self.min, self.max

    @classmethod
    def from_json(cls, data: Any) -> BatchRange:
        low, high = _int(data, "min", "batch", 1), _int(data, "max", "batch", 1)
        if low > high:
            raise ManifestError(f"batch: min {low} > max {high}")
        return cls(bool(_require(data, "dynamic", bool, "batch")), low, high)


@dataclass(frozen=True)
class TensorRTBuild:
    """What a TensorRT engine was built for (compared with this machine before deserialising)."""

    gpu: str
    compute_capability: str
    tensorrt: str
    buckets: tuple[int, ...]

    @classmethod
    def from_json(cls, data: Any, where: str) -> TensorRTBuild:
        buckets = _require(data, "buckets", list, where)
        if not buckets or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in buckets):
            raise ManifestError(f"{where}.buckets: expected positive whole numbers, got {buckets}")
        return cls(str(_require(data, "gpu", str, where)), str(_require(data, "compute_capability", str, where)),
                   str(_require(data, "tensorrt", str, where)), tuple(buckets))

    def facts(self) -> dict[str, Any]:
        return {"gpu": self.gpu, "compute_capability": self.compute_capability, "tensorrt": self.tensorrt,
                "buckets": list(self.buckets)}


@dataclass(frozen=True)
class Variant:
    """One runnable set of graph files of one precision and format.

    ``entry`` is the file users name with ``--engine``. ``guided_unet`` maps (latent, timestep, condition,
    guidance) to the guided noise prediction (ONNX Runtime and torch programs run it step by step);
    ``fused_step`` is that U-Net fused with the DDIM update (TensorRT runs it; its entry is this file).
    """

    precision: Precision
    format: GraphFormat
    entry: str
    decoder: str
    guided_unet: str = ""
    fused_step: str = ""
    tensorrt: TensorRTBuild | None = None
    calibration: Mapping[str, Any] | None = None  # int8: hs-calibrate's record (method, gate, float list, ...)

    @property
    def file_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for n in (self.entry, self.guided_unet, self.fused_step, self.decoder) if n))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"precision": self.precision, "format": self.format, "entry": self.entry,
                               "decoder": self.decoder, "guided_unet": self.guided_unet,
                               "fused_step": self.fused_step}
        if self.tensorrt is not None:
            out["tensorrt"] = self.tensorrt.facts()
        if self.calibration is not None:
            out["calibration"] = dict(self.calibration)
        return out

    @classmethod
    def from_json(cls, data: Any, where: str) -> Variant:
        fmt = _choice(data, "format", GRAPH_FORMATS, where)
        names = {k: check_file_name(_require(data, k, str, where)) for k in ("entry", "decoder")}
        for k in ("guided_unet", "fused_step"):
            value = data.get(k, "") if isinstance(data, Mapping) else ""
            if not isinstance(value, str):
                raise ManifestError(f"{where}.{k}: expected a file name")
            names[k] = check_file_name(value) if value else ""
        if names["entry"] not in (names["guided_unet"], names["fused_step"]):
            raise ManifestError(f"{where}: entry {names['entry']!r} is neither its guided U-Net nor its fused step")
        build = TensorRTBuild.from_json(data["tensorrt"], f"{where}.tensorrt") if fmt == "tensorrt" else None
        calibration = data.get("calibration")
        if calibration is not None and not isinstance(calibration, Mapping):
            raise ManifestError(f"{where}.calibration: expected an object")
        return cls(_choice(data, "precision", PRECISIONS, where), fmt, tensorrt=build, calibration=calibration,
                   **names)


@dataclass(frozen=True)
class ExportSource:
    checkpoint: str
    step: int
    sha256: str


@dataclass(frozen=True, eq=False)
class TrainingConditions:
    """The training set's per-tile (counts, tissue) — what ``--from-dataset`` and ``--balance`` draw from."""

    counts: np.ndarray  # (N, K) int64
    tissues: np.ndarray  # (N,) int64

    @classmethod
    def from_json(cls, data: Any, n_classes: int, n_tissues: int) -> TrainingConditions:
        try:
            counts = np.asarray(_require(data, "counts", list, "training_conditions"), dtype=np.int64)
            tissues = np.asarray(_require(data, "tissues", list, "training_conditions"), dtype=np.int64)
        except (ValueError, TypeError, OverflowError) as exc:
            raise ManifestError(f"training_conditions: not whole numbers ({exc})") from None
        counts = counts.reshape(-1, n_classes) if counts.size else np.zeros((0, n_classes), np.int64)
        if len(counts) != len(tissues) or (counts < 0).any() or ((tissues < 0) | (tissues >= n_tissues)).any():
            raise ManifestError("training_conditions: counts and tissues do not fit the condition spec")
        counts.flags.writeable = tissues.flags.writeable = False
        return cls(counts, tissues)


# ---------------------------------------------------------------------------------------------- manifest


@dataclass(frozen=True, eq=False)
class Manifest:
    """A parsed, checked ``manifest.json``. Graph roles: ``unet`` (guided U-Net), ``step`` (U-Net fused with
    the DDIM update), ``decoder`` (latent -> image, distance, class probabilities)."""

    condition: ConditionSpec
    schedule: ScheduleConfig
    latent_shape: tuple[int, int, int]
    tile_size: int
    latent_scale: float
    count_margin: int
    models: Mapping[str, Any]  # {"unet": UNetConfig fields, "vqvae": VQConfig fields} (a record)
    graphs: Mapping[str, GraphSpec]
    batch: BatchRange
    variants: tuple[Variant, ...]
    files: Mapping[str, str]  # file name -> sha256
    versions: Mapping[str, str]
    source: ExportSource
    training: TrainingConditions
    verification: Mapping[str, Any] = field(default_factory=dict)
    cache_key: str = ""
    provenance: tuple[Mapping[str, Any], ...] = ()  # the generator's training records (data.provenance)
    sampling: SamplingDefaults = SamplingDefaults()  # sampler, steps, guidance unless told otherwise

    # ------------------------------------------------------------------ views

    @cached_property
    def info(self) -> GeneratorInfo:
        return GeneratorInfo(
            spec=self.condition,
            schedule=self.schedule,
            latent_shape=self.latent_shape,
            tile_size=self.tile_size,
            training_counts=self.training.counts,
            training_tissues=self.training.tissues,
            count_margin=self.count_margin,
            source=f"HistoSmith export of {self.source.checkpoint} (step {self.source.step})",
            provenance=tuple(self.provenance),
            sampling=self.sampling,
            guidance_range=self.guidance_range,
        )

    @property
    def guidance_range(self) -> tuple[float, float] | None:
        """The guidance scales a distilled U-Net was trained on (None: two-pass classifier-free guidance)."""
        span = self.models.get("unet", {}).get("guidance_range")
        return None if span is None else (float(span[0]), float(span[1]))

    @property
    def distillation(self) -> Mapping[str, Any] | None:
        """What the distilled U-Net was trained from (teacher, steps, scales); None for a classifier-free U-Net."""
        return self.models.get("distillation")

    def graph(self, role: str) -> GraphSpec:
        return self.graphs[role]

    def variant_for(self, engine: Path) -> Variant:
        """The variant whose entry file is ``engine`` (matched by file name)."""
        for v in self.variants:
            if v.entry == engine.name:
                return v
        known = ", ".join(v.entry for v in self.variants)
        raise file_error(engine, f"not listed in {MANIFEST_FILE} (this export has: {known})")

    def with_sampling(self, sampling: SamplingDefaults) -> Manifest:
        """A copy whose sampling defaults are ``sampling`` (``hs-eval sampler --record``)."""
        return _replace(self, sampling=sampling)

    def with_variant(self, variant: Variant, hashes: Mapping[str, str]) -> Manifest:
        """A copy with ``variant`` added (replacing one of the same format and precision) and ``hashes``."""
        kept = tuple(v for v in self.variants if (v.format, v.precision) != (variant.format, variant.precision))
        return _replace(self, variants=(*kept, variant), files={**self.files, **hashes})

    # ------------------------------------------------------------------ persistence

    def body(self) -> dict[str, Any]:
        return {
            "format_version": MANIFEST_VERSION,
            "condition": self.condition.to_json(),
            "schedule": {f.name: getattr(self.schedule, f.name) for f in fields(ScheduleConfig)},
            "latent_shape": list(self.latent_shape),
            "tile_size": self.tile_size,
            "latent_scale": self.latent_scale,
            "count_margin": self.count_margin,
            "models": dict(self.models),
            "graphs": {role: spec.to_json() for role, spec in self.graphs.items()},
            "batch": {"dynamic": self.batch.dynamic, "min": self.batch.min, "max": self.batch.max},
            "variants": [v.to_json() for v in self.variants],
            "files": dict(self.files),
            "versions": dict(self.versions),
            "source": {"checkpoint": self.source.checkpoint, "step": self.source.step,
                       "sha256": self.source.sha256},
            "training_conditions": {"counts": self.training.counts.tolist(),
                                    "tissues": self.training.tissues.tolist()},
            "verification": dict(self.verification),
            "cache_key": self.cache_key,
            "provenance": [dict(r) for r in self.provenance],
            "sampling": self.sampling.to_json(),
        }

    def to_json(self) -> dict[str, Any]:
        body = json_safe(self.body())
        return {**body, "body_sha256": body_digest(body)}

    def save(self, directory: Path) -> None:
        write_json_atomic(directory / MANIFEST_FILE, self.to_json())

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        """Parse and cross-check a manifest body (raises :class:`ManifestError`)."""
        try:
            condition = ConditionSpec.from_json(_require(data, "condition", dict, "manifest"))
        except ManifestError:
            raise
        except HistoSmithError as exc:
            raise ManifestError(str(exc)) from None
        schedule = _schedule(_require(data, "schedule", dict, "manifest"))
        shape = _require(data, "latent_shape", list, "manifest")
        if len(shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise ManifestError(f"latent_shape: expected three positive whole numbers, got {shape}")
        graphs_data = _require(data, "graphs", dict, "manifest")
        graphs = {}
        for role in (UNET, DECODER, STEP):
            if role in graphs_data:
                try:
                    graphs[role] = GraphSpec.from_json(graphs_data[role])
                except (KeyError, TypeError, ValueError) as exc:
                    raise ManifestError(f"graphs.{role}: malformed ({exc})") from None
        for role in (UNET, DECODER):
            if role not in graphs:
                raise ManifestError(f"graphs: missing {role!r}")
        files = _require(data, "files", dict, "manifest")
        for name, digest in files.items():
            check_file_name(name)
            if not isinstance(digest, str) or len(digest) != 64:
                raise ManifestError(f"files.{name}: not a SHA-256")
        variants = tuple(Variant.from_json(v, f"variants[{i}]")
                         for i, v in enumerate(_require(data, "variants", list, "manifest")))
        for v in variants:
            for name in v.file_names:
                if name not in files:
                    raise ManifestError(f"{name} is used by a variant but has no SHA-256 in 'files'")
        source = _require(data, "source", dict, "manifest")
        scale = _require(data, "latent_scale", (int, float), "manifest")
        if not np.isfinite(scale) or scale <= 0:
            raise ManifestError(f"latent_scale: {scale} is not a positive number")
        manifest = cls(
            condition=condition,
            schedule=schedule,
            latent_shape=(shape[0], shape[1], shape[2]),
            tile_size=_int(data, "tile_size", "manifest", 1),
            latent_scale=float(scale),
            count_margin=_int(data, "count_margin", "manifest", 0),
            models=_require(data, "models", dict, "manifest"),
            graphs=graphs,
            batch=BatchRange.from_json(_require(data, "batch", dict, "manifest")),
            variants=variants,
            files=dict(files),
            versions={str(k): str(v) for k, v in _require(data, "versions", dict, "manifest").items()},
            source=ExportSource(str(source.get("checkpoint", "?")), int(source.get("step", 0) or 0),
                                str(source.get("sha256", ""))),
            training=TrainingConditions.from_json(_require(data, "training_conditions", dict, "manifest"),
                                                  condition.n_classes, condition.n_tissues),
            verification=data.get("verification") or {},
            cache_key=str(data.get("cache_key", "")),
            provenance=_records(data.get("provenance", [])),
            sampling=_sampling(data.get("sampling")),
        )
        manifest._check_graph_shapes()
        return manifest

    def _check_graph_shapes(self) -> None:
        """The semantic fields agree with the graph specs (so a spec edit cannot pass as another model)."""
        c, h, w = self.latent_shape
        expect = {
            (UNET, "latent"): ("batch", c, h, w), (UNET, "condition"): ("batch", self.condition.dim),
            (DECODER, "latent"): ("batch", c, h, w),
            (DECODER, "image"): ("batch", 3, self.tile_size, self.tile_size),
            (DECODER, "semantic"): ("batch", self.condition.n_classes + 1, self.tile_size, self.tile_size),
        }
        for (role, tensor), shape in expect.items():
            spec = self.graphs[role]
            found = {t.name: t.shape for t in (*spec.inputs, *spec.outputs)}.get(tensor)
            if found != shape:
                raise ManifestError(f"graphs.{role}.{tensor}: shape {found} does not fit the manifest "
                                    f"(expected {shape})")

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_FILE
        data = read_json_object(path, "not found; the engine must sit in an hs-export directory")
        if "format_version" not in data:
            raise file_error(path, "not a HistoSmith export manifest")
        if data["format_version"] not in READABLE_VERSIONS:
            raise file_error(path, f"manifest format {data['format_version']!r}; this runtime reads "
                                   f"{', '.join(map(str, READABLE_VERSIONS))} (re-export with hs-export)")
        recorded = data.pop("body_sha256", None)
        if recorded != body_digest(data):
            raise file_error(path, "its content does not match its body_sha256: the manifest was edited or "
                                   "damaged after export; re-export instead of editing it")
        try:
            return cls.from_json(data)
        except ManifestError as exc:
            raise file_error(path, f"malformed manifest ({exc})") from None

    # ------------------------------------------------------------------ file checks

    def path_of(self, directory: Path, name: str) -> Path:
        """``directory / name``, refused when it leaves the export directory (also through links)."""
        try:
            check_file_name(name)
        except ManifestError as exc:
            raise file_error(directory / MANIFEST_FILE, str(exc)) from None
        path = directory / name
        root = directory.resolve()
        if root not in path.resolve().parents:
            raise file_error(path, "resolves outside the export directory (a link?); refused")
        return path

    def verify_file(self, directory: Path, name: str) -> Path:
        """Check that ``name`` lies in the export, exists and matches the SHA-256 recorded at export."""
        path = self.path_of(directory, name)
        if not path.is_file():
            raise file_error(path, "missing (listed in the manifest)")
        expected = self.files.get(name)
        if expected is None:
            raise file_error(path, f"not listed in {MANIFEST_FILE}; it belongs to another export")
        if sha256_file(path) != expected:
            raise file_error(path, f"SHA-256 differs from {MANIFEST_FILE}: the file was modified or comes "
                                   "from another export")
        return path


def body_digest(body: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a manifest body (every field except ``body_sha256``)."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _schedule(data: Mapping[str, Any]) -> ScheduleConfig:
    where = "schedule"
    known = {f.name for f in fields(ScheduleConfig)}
    if set(data) - known:
        raise ManifestError(f"{where}: unknown fields {sorted(set(data) - known)}")
    beta = [_require(data, k, (int, float), where) for k in ("beta_start", "beta_end")]
    if not all(0 < b < 1 for b in beta):
        raise ManifestError(f"{where}: betas {beta} outside (0, 1)")
    return ScheduleConfig(
        num_train_timesteps=_int(data, "num_train_timesteps", where, 1),
        beta_start=float(beta[0]), beta_end=float(beta[1]),
        beta_schedule=_choice(data, "beta_schedule", get_args(BetaSchedule), where),
        prediction=_choice(data, "prediction", get_args(Prediction), where),
    )


def record_verification(manifest: Manifest, key: str, value: Any) -> Manifest:
    """A copy with ``verification[key] = value`` (e.g. the quality gate's verdicts)."""
    return _replace(manifest, verification={**manifest.verification, key: value})


def _sampling(data: Any) -> SamplingDefaults:
    if data is None:  # format 2: the paper's recipe
        return SamplingDefaults()
    if not isinstance(data, dict):
        raise ManifestError("sampling: expected an object")
    try:
        return SamplingDefaults.from_json(data)
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"sampling: {exc}") from None


def _records(data: Any) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ManifestError("provenance: expected a list of records")
    return tuple(data)


def _replace(manifest: Manifest, **changes: Any) -> Manifest:
    from dataclasses import replace

    return replace(manifest, **changes)
