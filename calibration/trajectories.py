"""Calibration inputs recorded along real fp32 DDIM trajectories (docs/int8.md).

Conditions are drawn from a labelled dataset (its per-tile counts and tissues). Every sample runs the
whole DDIM loop with the fp32 U-Net, and the inputs of every guided call are kept, so every part of the
trajectory — pure noise at t ≈ 1000 down to nearly clean latents — is represented in proportion.
Chunks of samples are cached as ``.npz`` files in a directory keyed by the U-Net's SHA-256, the drawn
conditions and the options; an interrupted run resumes at the first missing chunk.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from histosmith.data.atomic import write_bytes_atomic
from histosmith.data.conditioning import ConditionSpec
from histosmith.data.format import Dataset
from histosmith.errors import HistoSmithError, file_error
from histosmith.runtime.conditions import ConditionTable
from histosmith.runtime.schedule import ScheduleConfig, Scheduler
from histosmith.runtime.seeds import tile_noise
from histosmith.runtime.specs import CONDITION, GUIDANCE, LATENT, NOISE_PRED, TIMESTEP

log = logging.getLogger(__name__)
CHUNK_PREFIX = "trajectory-"


@dataclass(frozen=True)
class TrajectoryOptions:
    samples: int = 64
    steps: int = 20
    guidance: float = 4.0
    seed: int = 0
    chunk: int = 16  # samples per cached chunk (and per U-Net batch)

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise HistoSmithError(f"--samples must be >= 1, got {self.samples}")
        if self.steps < 1:
            raise HistoSmithError(f"--steps must be >= 1, got {self.steps}")


@dataclass(frozen=True)
class CalibrationSet:
    """Recorded guided-U-Net inputs, one row per (sample, step); ``step`` is the DDIM step index."""

    latent: np.ndarray  # (N, C, h, w) float32
    timestep: np.ndarray  # (N,) float32
    condition: np.ndarray  # (N, D) float32
    guidance: np.ndarray  # (N,) float32
    step: np.ndarray  # (N,) int64
    noise_pred: np.ndarray  # (N, C, h, w) the fp32 U-Net's output (the sensitivity reference)

    def __len__(self) -> int:
        return len(self.timestep)

    def feeds(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The U-Net's input feed for ``rows``."""
        return {LATENT: self.latent[rows], TIMESTEP: self.timestep[rows], CONDITION: self.condition[rows],
                GUIDANCE: self.guidance[rows]}

    def subset(self, rows: np.ndarray) -> CalibrationSet:
        return CalibrationSet(self.latent[rows], self.timestep[rows], self.condition[rows], self.guidance[rows],
                              self.step[rows], self.noise_pred[rows])

    def spread(self, n: int, seed: int = 1) -> np.ndarray:
        """``n`` rows covering every step about equally (for evaluation subsets)."""
        rng = np.random.default_rng(seed)
        steps = np.unique(self.step)
        per = max(1, n // len(steps))
        rows = [rng.permutation(np.flatnonzero(self.step == s))[:per] for s in steps]
        return np.sort(np.concatenate(rows))[:max(n, len(steps))]


def dataset_conditions(data: Path, spec: ConditionSpec, samples: int, seed: int) -> ConditionTable:
    """``samples`` (counts, tissue) rows drawn from a labelled dataset whose classes match the export's."""
    ds = Dataset.open(data)
    if list(ds.meta.class_names) != list(spec.class_names):
        raise file_error(data, f"classes {list(ds.meta.class_names)} differ from the export's "
                               f"{list(spec.class_names)}; calibrate on data of the model's own classes")
    counts = ds.counts()
    if counts is None or len(counts) == 0:
        raise file_error(data, "no counts.csv: calibration draws its conditions from the per-tile counts")
    lookup = {name: i for i, name in enumerate(spec.tissue_names)}
    names = [r.get("tissue", "") for r in ds.patch_info()]
    unknown = sorted({n for n in names if n not in lookup})
    if unknown:
        raise file_error(data, f"tissues {unknown} are not among the export's {list(spec.tissue_names)}")
    tissues = np.array([lookup[n] for n in names], dtype=np.int64)
    rows = np.random.default_rng(seed).integers(len(counts), size=samples)
    return ConditionTable(np.asarray(counts, np.int64)[rows], tissues[rows])


def trajectory_key(unet_sha256: str, table: ConditionTable, opts: TrajectoryOptions) -> str:
    payload = json.dumps({"unet": unet_sha256, "options": asdict(opts),
                          "conditions": hashlib.sha256(table.counts.tobytes() + table.tissues.tobytes()).hexdigest()},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _run_chunk(session, spec: ConditionSpec, schedule: ScheduleConfig, latent_shape: tuple[int, ...],  # noqa: ANN001
               table: ConditionTable, index: np.ndarray, opts: TrajectoryOptions) -> dict[str, np.ndarray]:
    """The fp32 DDIM loop (eta 0) for one chunk of samples, keeping every step's U-Net inputs and output."""
    scheduler = Scheduler(schedule)
    tables = scheduler.set_timesteps(opts.steps)
    x, _ = tile_noise(opts.seed, index, latent_shape, opts.steps, False)
    cond = spec.vectors(table.counts[index], table.tissues[index])
    g = np.full(len(index), opts.guidance, np.float32)
    rec: dict[str, list[np.ndarray]] = {k: [] for k in ("latent", "timestep", "condition", "guidance", "step",
                                                         "noise_pred")}
    for i, t in enumerate(tables.timesteps):
        ts = np.full(len(index), t, np.float32)
        eps = session.run([NOISE_PRED], {LATENT: x, TIMESTEP: ts, CONDITION: cond, GUIDANCE: g})[0]
        for key, value in (("latent", x), ("timestep", ts), ("condition", cond), ("guidance", g),
                           ("step", np.full(len(index), i, np.int64)), ("noise_pred", eps)):
            rec[key].append(value)
        x = scheduler.step(eps, i, x).astype(np.float32)
    return {k: np.concatenate(v) for k, v in rec.items()}


def record_trajectories(unet_path: Path, unet_sha256: str, spec: ConditionSpec, schedule: ScheduleConfig,
                        latent_shape: tuple[int, ...], table: ConditionTable, opts: TrajectoryOptions,
                        cache: Path, threads: int | None = None, show_progress: bool = True) -> CalibrationSet:
    """Record (or load from ``cache``) the U-Net inputs of every step of ``opts.samples`` trajectories."""
    from histosmith.runtime.backends.onnx_backend import make_session

    directory = cache / trajectory_key(unet_sha256, table, opts)
    directory.mkdir(parents=True, exist_ok=True)
    session = None
    parts: list[dict[str, np.ndarray]] = []
    starts = list(range(0, opts.samples, opts.chunk))
    bar = tqdm(total=opts.samples, desc="calibration trajectories", unit="sample", disable=not show_progress,
               dynamic_ncols=True)
    for k, start in enumerate(starts):
        path = directory / f"{CHUNK_PREFIX}{k:05d}.npz"
        index = np.arange(start, min(start + opts.chunk, opts.samples))
        if path.exists():
            with np.load(path) as f:
                parts.append({name: f[name] for name in f.files})
        else:
            if session is None:
                session = make_session(unet_path, "cpu", threads)
            part = _run_chunk(session, spec, schedule, latent_shape, table, index, opts)

            def write(f, part=part) -> None:  # noqa: ANN001
                np.savez(f, **part)

            write_bytes_atomic(path, write)
            parts.append(part)
        bar.update(len(index))
    bar.close()
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    log.info("calibration set: %d U-Net inputs (%d samples x %d steps) in %s", len(merged["step"]), opts.samples,
             opts.steps, directory)
    return CalibrationSet(**merged)
