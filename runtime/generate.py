"""The batch loop shared by ``hs-sample`` and ``hs-generate``: conditions and seeds in, a dataset out.

Tile ``i`` depends only on (seed, i): its initial noise, step noise and (for random condition sources)
its condition come from per-tile generators. Batches never cross a shard boundary and shards are
written atomically, so ``--resume`` restarts at the first missing shard and produces the same bytes as
an uninterrupted run with the same batch size.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from histosmith.data.atomic import describe_os_error, read_json_object, write_json_atomic
from histosmith.data.layout import default_shard_size
from histosmith.data.lock import exclusive
from histosmith.data.meta import DatasetMeta
from histosmith.data.provenance import PROVENANCE_KEY
from histosmith.data.reader import Dataset
from histosmith.data.writer import DatasetWriter
from histosmith.errors import HistoSmithError, file_error
from histosmith.runtime.backends.base import Backend, Decoded
from histosmith.runtime.conditions import ConditionTable
from histosmith.runtime.engine import GeneratorSession
from histosmith.runtime.planning import DEFAULT_BATCH, fit_batch
from histosmith.runtime.postprocess import MarkerDepth, PostprocessConfig, labels_from_maps
from histosmith.runtime.qc import AreaLimits, PairCheck, QCTiles, qc_result, sample_with_qc
from histosmith.runtime.schedule import (
    Sampler,
    SamplerSettings,
    SamplerTables,
    SamplingDefaults,
    ScheduleConfig,
    Scheduler,
)
from histosmith.runtime.seeds import tile_noise

log = logging.getLogger(__name__)
PLAN_FILE = "generation.json"


@dataclass(frozen=True)
class GenerationPlan:
    """The sampling settings of a run (validated when built)."""

    seed: int = 0
    steps: int = 50
    eta: float = 0.0
    guidance: float = 4.0
    sampler: Sampler = "ddim"
    corrector: bool = True  # UniPC's corrector
    batch: int = DEFAULT_BATCH  # with "batch" in ``unset``: fitted to the model's graphs (:meth:`with_batch_limits`)
    shard_size: int | None = None  # None: about 128 MB of tiles per shard
    postprocess: PostprocessConfig = PostprocessConfig()
    qc: float | None = None  # relative count tolerance (at least 1 nucleus); None: no QC (histosmith.runtime.qc)
    qc_attempts: int = 3
    qc_max_area: AreaLimits | None = None  # the size check (histosmith.runtime.qc); None: off
    # Sampling fields the user did not set: taken from the model's defaults (manifest ``sampling``) by
    # :meth:`with_model_defaults` once the model is known.
    unset: frozenset[str] = frozenset()

    @property
    def sampling(self) -> SamplerSettings:
        return SamplerSettings(self.sampler, self.steps, self.eta, self.corrector)

    def tables(self, schedule: ScheduleConfig) -> SamplerTables:
        """The per-step tables of this plan's sampler on ``schedule``."""
        return Scheduler(schedule).settings_tables(self.sampling)

    def with_model_defaults(self, defaults: SamplingDefaults) -> GenerationPlan:
        """The plan with every sampling field the user left unset taken from the model's defaults."""
        values = {"sampler": defaults.sampler, "steps": defaults.steps, "guidance": defaults.guidance,
                  "corrector": defaults.corrector}
        return replace(self, **{k: v for k, v in values.items() if k in self.unset}, unset=self.unset - set(values))

    def with_batch_limits(self, limits: tuple[int, int]) -> GenerationPlan:
        """The plan with its batch checked against what the model's graphs take (:func:`fit_batch`); a batch the
        user left unset is brought inside that range."""
        batch = fit_batch(None if "batch" in self.unset else self.batch, limits)
        return replace(self, batch=batch, unset=self.unset - {"batch"})

    def with_marker_depth(self, marker: MarkerDepth, class_names: Sequence[str]) -> GenerationPlan:
        """The plan with ``--marker-depth`` resolved against the model's classes (an unknown class is refused)."""
        return replace(self, postprocess=marker.config(class_names, self.postprocess.min_area))

    @property
    def qc_on(self) -> bool:
        """Whether a check of the plan itself is on (the pair check is passed to ``generate`` separately)."""
        return self.qc is not None or self.qc_max_area is not None

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**63:
            raise HistoSmithError(f"--seed {self.seed}: must be a whole number in 0..2^63-1")
        try:
            self.sampling  # noqa: B018 — validates sampler, steps, eta together
        except ValueError as exc:
            raise HistoSmithError(str(exc)) from None
        if not (math.isfinite(self.guidance) and 0.0 <= self.guidance <= 100.0):
            raise HistoSmithError(f"--guidance {self.guidance}: must be a number in 0..100")
        if self.batch < 1 or (self.shard_size is not None and self.shard_size < 1):
            raise HistoSmithError("--batch and --shard-size must be at least 1")
        if self.qc is not None and not (math.isfinite(self.qc) and 0.0 <= self.qc <= 10.0):
            raise HistoSmithError(f"--qc {self.qc}: must be a relative tolerance in 0..10")
        if not 1 <= self.qc_attempts <= 100:
            raise HistoSmithError(f"--qc-attempts {self.qc_attempts}: must be in 1..100")


def sampling_plan_fields(sampler: str | None, steps: int | None, guidance: float | None,
                         corrector: bool | None) -> dict[str, Any]:
    """GenerationPlan fields of the sampler options; those left out are marked for the model's defaults."""
    given = {"sampler": sampler, "steps": steps, "guidance": guidance, "corrector": corrector}
    fallback = {"sampler": "ddim", "steps": 50, "guidance": 4.0, "corrector": True}
    return {k: fallback[k] if v is None else v for k, v in given.items()} | {
        "unset": frozenset(k for k, v in given.items() if v is None)}


def run_record(session: GeneratorSession, plan: GenerationPlan, conditions: ConditionTable,
               check: PairCheck | None = None) -> dict[str, Any]:
    """``generation.json``: everything that determines the output bytes; a resumed run must match it."""
    qc = {"qc": plan.qc} if plan.qc is not None else {}
    if plan.qc_max_area is not None:
        qc |= plan.qc_max_area.record()
    if check is not None:
        qc |= check.record()
    return {"n": len(conditions), "seed": plan.seed, "batch": plan.batch} | plan.sampling.record() | {
            "guidance": plan.guidance, "shard_size": plan.shard_size or default_shard_size(session.info.tile_size),
            "conditions": conditions.label, "conditions_digest": conditions.digest(), "model": session.model_id,
            "postprocess": plan.postprocess.record()} | (qc | {"qc_attempts": plan.qc_attempts} if qc else {})


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return np.clip(np.round((image.transpose(1, 2, 0) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def decode_labels(decoded: Decoded, n_classes: int, post: PostprocessConfig) -> list[np.ndarray]:
    """Per tile (H, W, 2) labels from the decoder's distance and class maps."""
    classes = decoded.semantic.argmax(axis=1)  # (B, H, W)
    return [labels_from_maps(decoded.distance[b, 0], classes[b], n_classes, post) for b in range(len(classes))]


def check_output_dir(out: Path, resume: bool) -> None:
    """``out`` must be new or empty, or (with ``resume``) hold an earlier generation run. Reads only."""
    if out.exists() and not out.is_dir():
        raise file_error(out, "exists and is not a directory")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise file_error(out, f"cannot be created: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise file_error(out, f"not writable ({existing} does not allow it)")
    path = out / PLAN_FILE
    if not resume:
        if out.exists() and any(out.iterdir()):
            hint = "pass --resume to finish that run" if path.exists() else "choose a new or empty directory"
            raise file_error(out, f"exists and is not empty; {hint} (generation never writes into other data)")
        return
    if not path.is_file():
        raise file_error(out, f"nothing to resume (no {PLAN_FILE}: not an earlier generation run)")


def check_output(out: Path, record: dict[str, Any], resume: bool) -> None:
    """:func:`check_output_dir`, and a resumed run must have exactly these settings."""
    check_output_dir(out, resume)
    if not resume:
        return
    path = out / PLAN_FILE
    previous = {"sampler": "ddim"} | read_json_object(path)  # runs from before the solvers were DDIM
    diff = sorted(k for k in record if previous.get(k) != record[k])
    if diff:
        raise file_error(path, f"--resume with different settings ({', '.join(diff)}); use the original ones")


def begin_output(session: GeneratorSession, plan: GenerationPlan, record: dict[str, Any], out: Path,
                 resume: bool) -> DatasetMeta:
    """Create ``out``, record the run (``generation.json``) and return the dataset's metadata. Shared by the
    single-process loop and ``hs-generate --ray``, which write the same bytes."""
    info, spec, n = session.info, session.info.spec, record["n"]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise describe_os_error(out, exc) from None
    provenance = [dict(r) for r in info.provenance]
    if not resume:
        # The generator's training records ride along (not part of the plan: they follow from the model).
        write_json_atomic(out / PLAN_FILE, record | {PROVENANCE_KEY: provenance})
    return DatasetMeta(
        class_names=list(spec.class_names), tissue_names=list(spec.tissue_names), tile_size=info.tile_size,
        count_margin=info.count_margin, source=info.source, licence="generated",
        notes=f"{n} synthetic tiles; seed {plan.seed}, {plan.sampling.label}, guidance {plan.guidance}",
        extra={"generation": record, PROVENANCE_KEY: provenance},
    )


def discard_output(out: Path) -> None:
    """Remove what a new run wrote into ``out`` (new or empty when it started: :func:`check_output_dir`) before
    its first shard reached the disk, so the same command can simply run again."""
    for path in out.iterdir() if out.is_dir() else ():
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def record_qc_result(out: Path) -> None:
    """Add ``qc_result`` (tiles, passed, acceptance, mean attempts) to a finished run's ``generation.json``,
    computed from every tile on disk, so a resumed run reports the whole dataset. Not a setting: ``--resume``
    compares only the keys of :func:`run_record`."""
    path = out / PLAN_FILE
    write_json_atomic(path, read_json_object(path) | {"qc_result": qc_result(Dataset.open(out))})


def tile_row(info: Any, conditions: ConditionTable, seed: int, tile: int) -> dict[str, Any]:
    """The patch_info row of generated tile ``tile``."""
    spec = info.spec
    row: dict[str, Any] = {"patch_info": f"gen-{seed}-{tile:07d}", "seed": seed, "index": tile,
                           "tissue": spec.tissue_names[conditions.tissues[tile]]}
    row.update({f"requested_{c}": int(v) for c, v in zip(spec.class_names, conditions.counts[tile], strict=True)})
    return row


@dataclass
class GenerationResult:
    out: Path
    n_tiles: int
    generated: int
    seconds: float
    requested: np.ndarray  # (N, K)
    measured: np.ndarray  # (N, K)


def batch_ranges(start: int, n: int, batch: int, shard_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` of every batch from tile ``start`` on; batches never cross a shard boundary."""
    out, i = [], start
    while i < n:
        end = min(i + batch, n, (i // shard_size + 1) * shard_size)
        out.append((i, end))
        i = end
    return out


def tile_sampler(session: GeneratorSession, plan: GenerationPlan, conditions: ConditionTable, backend: Backend,
                 tables: SamplerTables, check: PairCheck | None = None):  # noqa: ANN201 — a closure
    """``sample_batch(index) -> QCTiles``: the tiles ``index`` (a run's tile numbers) sampled, post-processed and,
    with any QC of the plan or a pair check, resampled — the same bytes whatever other tiles share the batch."""
    info = session.info
    spec = info.spec
    info.check_guidance(plan.guidance)
    vectors = spec.vectors(conditions.counts, conditions.tissues)
    guidance_all = np.full(len(conditions), plan.guidance, dtype=np.float32)
    max_area = plan.qc_max_area.vector(list(spec.class_names)) if plan.qc_max_area is not None else None
    qc_on = plan.qc_on or check is not None

    def sample(index: np.ndarray, attempt: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        latents, step_noise = tile_noise(plan.seed, index, info.latent_shape, tables.num_steps, tables.stochastic,
                                         attempt)
        decoded = backend.sample(latents, vectors[index], guidance_all[index], step_noise)
        labels = decode_labels(decoded, spec.n_classes, plan.postprocess)
        return [to_uint8(decoded.image[b]) for b in range(len(index))], labels

    def sample_batch(index: np.ndarray) -> QCTiles:
        if not qc_on:
            return QCTiles(*sample(index, 0), attempts=None, passed=None)
        return sample_with_qc(sample, index, conditions.counts[index], spec.n_classes, info.count_margin,
                              plan.qc, plan.qc_attempts, check, max_area)

    return sample_batch


def generate(session: GeneratorSession, plan: GenerationPlan, conditions: ConditionTable, out: Path, *,
             resume: bool = False, show_progress: bool = True, check: PairCheck | None = None) -> GenerationResult:
    """Generate ``len(conditions)`` tiles into ``out`` (a dataset in the HistoSmith/CoNIC layout).

    ``check`` (``--qc-segmenter``) is a pair check: tiles that fail it in every attempt are left out of the
    dataset and listed in their shard's ``rejected.csv`` (:mod:`histosmith.runtime.qc`). One writer per ``out``
    (:mod:`histosmith.data.lock`): a second run on the same directory is refused before it touches it."""
    with exclusive(out, "dataset"):
        return _generate(session, plan, conditions, out, resume, show_progress, check)


def _generate(session: GeneratorSession, plan: GenerationPlan, conditions: ConditionTable, out: Path,
              resume: bool, show_progress: bool, check: PairCheck | None) -> GenerationResult:
    info = session.info
    spec = info.spec
    n = len(conditions)
    plan = plan.with_batch_limits(session.batch_limits())
    record = run_record(session, plan, conditions, check)
    qc_on = plan.qc_on or check is not None
    if plan.qc_max_area is not None:
        plan.qc_max_area.vector(list(spec.class_names))  # an unknown class is refused before anything is written
    info.check_guidance(plan.guidance)
    shard_size = record["shard_size"]
    check_output(out, record, resume)
    tables = plan.tables(info.schedule)
    backend = session.backend(tables)  # the expensive part; nothing is written before it succeeds
    meta = begin_output(session, plan, record, out, resume)
    writer = DatasetWriter(out, meta, shard_size, resume=resume)
    start = writer.tiles_done
    if start:
        log.info("resuming at tile %d of %d", start, n)
    sample_batch = tile_sampler(session, plan, conditions, backend, tables, check)
    started = time.monotonic()
    bar = tqdm(total=n, initial=start, desc=f"generate ({backend.name})", unit="tile", disable=not show_progress,
               dynamic_ncols=True)
    try:
        for i, end in batch_ranges(start, n, plan.batch, shard_size):
            index = np.arange(i, end)
            tiles = sample_batch(index)
            for b, (image, labels) in enumerate(zip(tiles.images, tiles.labels, strict=True)):
                row = tile_row(info, conditions, plan.seed, int(index[b]))
                if tiles.attempts is not None and tiles.passed is not None:
                    row.update({"qc_attempts": int(tiles.attempts[b]), "qc_pass": int(tiles.passed[b])})
                if tiles.score is not None:
                    row["qc_pq"] = f"{tiles.score[b]:.4f}"
                if tiles.oversized is not None:
                    row["qc_oversized"] = int(tiles.oversized[b])
                if tiles.first is not None:  # what the tile held before QC (hs-eval control: r before QC)
                    row.update({f"qc_first_{c}": int(v) for c, v in zip(spec.class_names, tiles.first[b], strict=True)})
                if tiles.agrees is not None and not tiles.agrees[b]:
                    writer.reject(row)  # the training data never holds a pair the segmenter disagrees with
                else:
                    writer.add(image, labels, row)
            bar.update(len(index))
    except Exception:
        if not resume and writer.tiles_done == 0:  # nothing of this run on disk: leave nothing that blocks a rerun
            discard_output(out)
        raise
    finally:
        bar.close()  # before any error line, so it is not glued to the bar
    writer.close()
    if qc_on:
        record_qc_result(out)
    seconds = time.monotonic() - started
    kept = conditions.counts
    if check is not None:  # requests of the tiles in the dataset, in its order
        kept = kept[[int(r["index"]) for r in Dataset.open(out).patch_info()]]
    return GenerationResult(out, n, n - start, seconds, kept, writer.counts())


@dataclass(frozen=True)
class ControlSummary:
    class_names: list[str]
    requested_mean: list[float]
    measured_mean: list[float]
    mae: list[float]
    pearson_r: list[float | None]  # None where the request did not vary
    qc: dict[str, Any] | None = None  # with --qc: tiles, passed, acceptance, mean_attempts

    def format_table(self) -> str:
        lines = [f"{'class':<16}{'requested':>10}{'measured':>10}{'MAE':>8}{'r':>8}"]
        for name, rq, ms, mae, r in zip(self.class_names, self.requested_mean, self.measured_mean, self.mae,
                                        self.pearson_r, strict=True):
            lines.append(f"{name:<16}{rq:>10.2f}{ms:>10.2f}{mae:>8.2f}{'n/a' if r is None else f'{r:.3f}':>8}")
        return "\n".join(lines)


def control_summary(class_names: list[str], requested: np.ndarray, measured: np.ndarray) -> ControlSummary:
    """Requested vs measured counts per class: means, mean absolute error, Pearson r."""
    if requested.shape != measured.shape:
        raise HistoSmithError(f"count tables differ in shape: {requested.shape} vs {measured.shape}")
    rs: list[float | None] = []
    for c in range(requested.shape[1]):
        q, m = requested[:, c].astype(float), measured[:, c].astype(float)
        rs.append(float(np.corrcoef(q, m)[0, 1]) if q.std() > 0 and m.std() > 0 else None)
    return ControlSummary(list(class_names), requested.mean(0).tolist(), measured.mean(0).tolist(),
                          np.abs(requested - measured).mean(0).tolist(), rs)
