"""The batch loop shared by ``hs-sample`` and ``hs-generate``: conditions and seeds in, a dataset out.

Tile ``i`` depends only on (seed, i): its initial noise, step noise and (for random condition sources)
its condition come from per-tile generators. Batches never cross a shard boundary and shards are
written atomically, so ``--resume`` restarts at the first missing shard and produces the same bytes as
an uninterrupted run with the same batch size.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from histosmith.data.atomic import write_json_atomic
from histosmith.data.format import Dataset, DatasetMeta, DatasetWriter, default_shard_size
from histosmith.data.provenance import PROVENANCE_KEY
from histosmith.errors import HistoSmithError, file_error
from histosmith.runtime.backends.base import Backend, Decoded
from histosmith.runtime.conditions import ConditionTable
from histosmith.runtime.info import GeneratorInfo
from histosmith.runtime.postprocess import PostprocessConfig, labels_from_maps
from histosmith.runtime.schedule import DDIMTables
from histosmith.runtime.seeds import tile_noise

log = logging.getLogger(__name__)
PLAN_FILE = "generation.json"


@dataclass(frozen=True)
class GenerationPlan:
    """Everything that determines the output bytes; a resumed run must match it exactly."""

    n: int
    seed: int
    batch: int
    steps: int
    eta: float
    guidance: float
    shard_size: int
    conditions: str  # how conditions were chosen (for the record and the resume check)
    conditions_digest: str
    model: str  # engine / checkpoint identity
    postprocess: dict[str, Any]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return np.clip(np.round((image.transpose(1, 2, 0) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def decode_labels(decoded: Decoded, n_classes: int, post: PostprocessConfig) -> list[np.ndarray]:
    """Per tile (H, W, 2) labels from the decoder's distance and class maps."""
    classes = decoded.semantic.argmax(axis=1)  # (B, H, W)
    return [labels_from_maps(decoded.distance[b, 0], classes[b], n_classes, post) for b in range(len(classes))]


def _digest(table: ConditionTable) -> str:
    import hashlib

    return hashlib.sha256(table.counts.tobytes() + table.tissues.tobytes()).hexdigest()[:16]


def _check_plan(out: Path, plan: GenerationPlan, resume: bool, provenance: list[dict[str, Any]]) -> None:
    path = out / PLAN_FILE
    if path.exists():
        if not resume:
            raise file_error(out, "already holds a generation run; pass --resume to finish it or use a new --out")
        try:
            previous = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise file_error(path, f"unreadable ({exc})") from None
        mine = asdict(plan)
        diff = sorted(k for k in mine if previous.get(k) != mine[k])
        if diff:
            raise file_error(path, f"--resume with different settings ({', '.join(diff)}); use the original ones")
    elif resume:
        raise file_error(path, "nothing to resume (no generation.json)")
    # The generator's training records ride along (not part of the plan: they follow from the model).
    write_json_atomic(path, asdict(plan) | {PROVENANCE_KEY: provenance})


@dataclass
class GenerationResult:
    out: Path
    n_tiles: int
    generated: int
    seconds: float
    requested: np.ndarray  # (N, K)
    measured: np.ndarray  # (N, K)


def generate(
    backend: Backend,
    info: GeneratorInfo,
    tables: DDIMTables,
    table: ConditionTable,
    out: Path,
    *,
    seed: int,
    batch: int,
    guidance: float,
    eta: float,
    model_id: str,
    conditions_label: str,
    resume: bool = False,
    shard_size: int | None = None,
    post: PostprocessConfig = PostprocessConfig(),
    show_progress: bool = True,
) -> GenerationResult:
    """Generate ``len(table)`` tiles into ``out`` (a dataset in the HistoSmith/CoNIC layout)."""
    n = len(table)
    spec = info.spec
    shard_size = shard_size or default_shard_size(info.tile_size)
    plan = GenerationPlan(n=n, seed=seed, batch=batch, steps=tables.num_steps, eta=eta, guidance=guidance,
                          shard_size=shard_size, conditions=conditions_label, conditions_digest=_digest(table),
                          model=model_id, postprocess=asdict(post))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise file_error(out, f"cannot create the output directory ({exc.strerror})") from None
    provenance = list(info.provenance)
    _check_plan(out, plan, resume, provenance)
    meta = DatasetMeta(
        class_names=list(spec.class_names), tissue_names=list(spec.tissue_names), tile_size=info.tile_size,
        count_margin=info.count_margin, source=info.source, licence="generated",
        notes=f"{n} synthetic tiles; seed {seed}, {tables.num_steps} DDIM steps, eta {eta}, guidance {guidance}",
        extra={"generation": asdict(plan), PROVENANCE_KEY: provenance},
    )
    writer = DatasetWriter(out, meta, shard_size, resume=True)
    start = writer.tiles_done
    if start:
        log.info("resuming at tile %d of %d", start, n)
    vectors = spec.vectors(table.counts, table.tissues)
    guidance_all = np.full(n, guidance, dtype=np.float32)
    started = time.monotonic()
    bar = tqdm(total=n, initial=start, desc=f"generate ({backend.name})", unit="tile", disable=not show_progress,
               dynamic_ncols=True)
    i = start
    while i < n:
        end = min(i + batch, n, (i // shard_size + 1) * shard_size)  # never cross a shard boundary
        index = np.arange(i, end)
        latents, step_noise = tile_noise(seed, index, info.latent_shape, tables.num_steps, tables.stochastic)
        decoded = backend.sample(latents, vectors[index], guidance_all[index], step_noise)
        for b, labels in enumerate(decode_labels(decoded, spec.n_classes, post)):
            tile = int(index[b])
            row = {"patch_info": f"gen-{seed}-{tile:07d}", "tissue": spec.tissue_names[table.tissues[tile]],
                   "seed": seed, "index": tile}
            row.update({f"requested_{c}": int(v) for c, v in zip(spec.class_names, table.counts[tile], strict=True)})
            writer.add(to_uint8(decoded.image[b]), labels, row)
        bar.update(len(index))
        i = end
    bar.close()
    writer.close()
    seconds = time.monotonic() - started
    measured = Dataset.open(out).counts()
    return GenerationResult(out, n, n - start, seconds, table.counts, measured)


@dataclass(frozen=True)
class ControlSummary:
    class_names: list[str]
    requested_mean: list[float]
    measured_mean: list[float]
    mae: list[float]
    pearson_r: list[float | None]  # None where the request did not vary

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
