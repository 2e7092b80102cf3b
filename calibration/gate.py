"""The INT8 quality gate: the quantised graph against fp32 on the same noise and conditions.

Both run the whole DDIM loop (eta 0) with ONNX Runtime on this CPU; the final latents go through the
same fp32 decoder and post-processing. Measured: class-mask pixel agreement, the share of tiles with
the same instance count, count control (Pearson r of requested vs measured nuclei, per class) for each,
image PSNR and latent error. The gate passes when every threshold holds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from histosmith.data.labels import count_nuclei
from histosmith.errors import HistoSmithError
from histosmith.runtime.backends.base import Decoded
from histosmith.runtime.conditions import ConditionTable
from histosmith.runtime.generate import control_summary, decode_labels
from histosmith.runtime.info import GeneratorInfo
from histosmith.runtime.planning import step_coefs, step_graph_feed
from histosmith.runtime.postprocess import PostprocessConfig
from histosmith.runtime.schedule import Scheduler
from histosmith.runtime.seeds import tile_noise
from histosmith.runtime.specs import (
    CONDITION,
    DISTANCE,
    GUIDANCE,
    IMAGE,
    LATENT,
    NEXT_LATENT,
    NOISE_PRED,
    SEMANTIC,
    TIMESTEP,
    X0_HISTORY,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateThresholds:
    tiles: int = 64
    steps: int = 50
    guidance: float = 4.0
    class_agreement: float = 0.99
    same_instance_count: float = 0.90
    control_r_delta: float = 0.02
    seed: int = 12345  # gate noise: not the calibration seeds

    def __post_init__(self) -> None:
        if self.tiles < 1 or self.steps < 1:
            raise HistoSmithError("the quality gate needs at least one tile and one step")


@dataclass
class GateResult:
    graph: str
    class_agreement: float
    same_instance_count: float
    control_r_fp32: list[float | None]
    control_r_int8: list[float | None]
    control_r_delta: float  # the largest |r_int8 - r_fp32| over classes where both are defined
    image_psnr_db: float
    latent_rel_error: float
    passed: bool = False
    failures: list[str] = field(default_factory=list)


def _session(path: Path, threads: int | None):  # noqa: ANN202
    from histosmith.runtime.backends.onnx_backend import make_session

    return make_session(path, "cpu", threads)


def final_latents(graph: Path, fused_step: bool, info: GeneratorInfo, table: ConditionTable, th: GateThresholds,
                  threads: int | None, label: str, show_progress: bool, batch: int = 16) -> np.ndarray:
    """The DDIM loop on a U-Net graph (``x ← A x + B ε̂``) or a fused step graph (it does the update)."""
    session = _session(graph, threads)
    scheduler = Scheduler(info.schedule)
    tables = scheduler.set_timesteps(th.steps)
    names = [i.name for i in session.get_inputs()]
    coefs = step_coefs(tables, 7 if X0_HISTORY in names else 3) if fused_step else None
    n = len(table)
    out = np.empty((n, *info.latent_shape), np.float32)
    vectors = info.spec.vectors(table.counts, table.tissues)
    for start in tqdm(range(0, n, batch), desc=f"gate: {label}", unit="batch", disable=not show_progress,
                      dynamic_ncols=True):
        index = np.arange(start, min(start + batch, n))
        x, _ = tile_noise(th.seed, index, info.latent_shape, th.steps, False)
        feed = {CONDITION: vectors[index], GUIDANCE: np.full(len(index), th.guidance, np.float32)}
        for i, t in enumerate(tables.timesteps):
            feed[LATENT], feed[TIMESTEP] = x, np.full(len(index), t, np.float32)
            if coefs is not None:  # DDIM keeps no x̂_0 history: the graph's history input stays zero
                x = session.run([NEXT_LATENT], feed | step_graph_feed(names, coefs[i], x))[0]
            else:
                x = scheduler.step(session.run([NOISE_PRED], feed)[0], i, x).astype(np.float32)
        out[index] = x
    return out


def decode(decoder: Path, latents: np.ndarray, threads: int | None, batch: int = 16) -> Decoded:
    session = _session(decoder, threads)
    names = [IMAGE, DISTANCE, SEMANTIC]
    parts = [session.run(names, {LATENT: latents[i:i + batch]}) for i in range(0, len(latents), batch)]
    return Decoded(*(np.concatenate([p[k] for p in parts]) for k in range(3)), latents)


def compare(graph: str, ref: Decoded, got: Decoded, info: GeneratorInfo, table: ConditionTable,
            th: GateThresholds) -> GateResult:
    post = PostprocessConfig()
    k = info.n_classes
    ref_labels, got_labels = decode_labels(ref, k, post), decode_labels(got, k, post)
    ref_counts = np.stack([count_nuclei(lab, k, info.count_margin) for lab in ref_labels])
    got_counts = np.stack([count_nuclei(lab, k, info.count_margin) for lab in got_labels])
    agreement = float((ref.semantic.argmax(1) == got.semantic.argmax(1)).mean())
    same = float(np.mean([a[..., 0].max() == b[..., 0].max() for a, b in zip(ref_labels, got_labels, strict=True)]))
    names = list(info.spec.class_names)
    r_ref = control_summary(names, table.counts, ref_counts).pearson_r
    r_got = control_summary(names, table.counts, got_counts).pearson_r
    deltas = [abs(a - b) for a, b in zip(r_ref, r_got, strict=True) if a is not None and b is not None]
    mse = float(np.mean((ref.image - got.image) ** 2))
    psnr = float(10 * np.log10(4.0 / mse)) if mse > 0 else float("inf")  # images in [-1, 1]: peak-to-peak 2
    lat = float(np.abs(got.latent - ref.latent).max() / max(np.abs(ref.latent).max(), 1e-12))
    result = GateResult(graph, agreement, same, r_ref, r_got, max(deltas, default=0.0), psnr, lat)
    if agreement < th.class_agreement:
        result.failures.append(f"class-mask agreement {agreement:.2%} < {th.class_agreement:.2%}")
    if same < th.same_instance_count:
        result.failures.append(f"same instance count on {same:.1%} of tiles < {th.same_instance_count:.1%}")
    if result.control_r_delta > th.control_r_delta:
        result.failures.append(f"count-control r differs from fp32 by {result.control_r_delta:.3f} "
                               f"> {th.control_r_delta}")
    result.passed = not result.failures
    return result
