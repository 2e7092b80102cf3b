"""``hs-eval gate``: is a faster configuration as good as the paper's pipeline? Judged on a set of tiles.

A *configuration* is an engine file (any precision, any backend), a sampler and its step count, the guidance
scale (and whether the U-Net is a guidance-distilled student, which its manifest says). The *reference* is
the export's fp32 ``unet.onnx`` with DDIM at 50 steps and two-pass guidance at the model's scale.

All runs generate tiles for the same ≥ 500 requests (counts and tissues drawn from the training distribution,
fixed seed): reference run A (noise seed ``s``), reference run B (noise seed ``s + 1``: the noise floor), and
each candidate (noise seed ``s``, the same noise as A). Every metric is computed on each run:

* count fidelity per class: Pearson r and mean absolute error, requested vs measured nuclei;
* morphology per class against the real tiles: median nucleus area ratio, share of nuclei above the real
  99th-percentile area, share of nuclei touching another one;
* KID (polynomial-kernel MMD², :mod:`histosmith.evaluation.kid`) between the run's tiles and run A's on the
  real-only segmenter's pooled encoder features (for A itself: B against A);
* tissue accuracy of the tissue CNN trained on the real tiles (requested tissue vs predicted);
* label consistency: mean per-tile binary PQ of the real-only segmenter's instances against the generated labels.

A candidate passes when, for every metric, ``|candidate - A| <= max(2 |B - A|, floor)`` (for KID:
``KID(candidate, A) <= max(2 KID(B, A), floor)``), the floors of :data:`FLOORS` guarding against a spread
that two runs happen to make small. Same-noise agreement with A (same instance count, class-pixel
agreement) is reported as a diagnostic only: a diffusion sampler is chaotic, so any numeric change moves
single tiles without moving the distribution.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from histosmith.data.labels import instance_classes, nucleus_areas, touching_instances
from histosmith.data.reader import Dataset
from histosmith.errors import HistoSmithError
from histosmith.runtime.conditions import ConditionTable
from histosmith.runtime.engine import EngineOptions, open_engine
from histosmith.runtime.generate import GenerationPlan, control_summary, generate
from histosmith.runtime.schedule import SamplerSettings

log = logging.getLogger(__name__)

# The least tolerance of each metric (absolute units of the metric): a difference this small is never a failure.
# One pair of reference runs estimates the seed-to-seed spread poorly; three reference seeds of the reference
# model (docs/experiments/2026-12-07-samplers-and-the-gate.md) moved the median-area ratio of inflammatory nuclei
# by 0.07 (a median of ~43 px moves in whole pixels), the touching share by 0.043 and the label PQ by 0.025: the
# floors of those metrics sit above the largest change seen, the others at a small fraction of their scale.
FLOORS: dict[str, float] = {
    "count_r": 0.02,  # Pearson r, requested vs measured (seeds moved it by at most 0.007)
    "count_mae": 0.25,  # nuclei per tile (at most 0.07)
    "area_ratio": 0.10,  # median area generated / real (0.07)
    "above_p99": 0.01,  # share of nuclei above the real p99 area (0.008)
    "touching": 0.05,  # share of nuclei touching another one (0.043)
    "kid": 0.01,  # KID on segmenter features (|KID| of a seed against A at most 0.005)
    "tissue_accuracy": 0.03,  # (0.006)
    "label_pq": 0.04,  # mean per-tile binary PQ, segmenter vs generated labels (0.025)
}
SPREAD_FACTOR = 2.0
MIN_TILES = 500


@dataclass(frozen=True)
class Configuration:
    """One way of generating: an engine file, its sampler settings, the guidance scale. ``fused_step``: an ONNX
    engine runs its fused step graph (as TensorRT and the GPU providers do) instead of the U-Net + host update."""

    engine: Path
    sampling: SamplerSettings
    guidance: float
    compile: bool = False
    seed_offset: int = 0  # candidates share reference run A's noise unless told otherwise
    fused_step: bool = False
    device: str = "auto"  # "openvino": an ONNX engine in OpenVINO instead of ONNX Runtime

    @property
    def label(self) -> str:
        compiled = "-compiled" if self.compile else ""
        step = "-step" if self.fused_step else ""
        step += "-openvino" if self.device == "openvino" else ""
        other = f"-seed+{self.seed_offset}" if self.seed_offset else ""
        return f"{self.engine.name}{compiled}{step}-{self.sampling.label}-g{self.guidance:g}{other}"


@dataclass(frozen=True)
class GateOptions:
    n: int = MIN_TILES
    seed: int = 0  # noise seed of reference run A and of every candidate; B uses seed + 1
    condition_seed: int = 7
    batch: int = 16
    threads: int | None = None
    show_progress: bool = True
    allow_small: bool = False  # fewer than MIN_TILES requests (tests, quick looks): the verdict says so

    def __post_init__(self) -> None:
        if self.n < MIN_TILES and not self.allow_small:
            raise HistoSmithError(f"--n {self.n}: the gate judges a set of at least {MIN_TILES} tiles")
        if self.n < 8:
            raise HistoSmithError(f"--n {self.n}: at least 8 tiles")


@dataclass
class RunMetrics:
    """The metrics of one run (per class lists in class order; None where a class has no nucleus)."""

    count_r: list[float | None]
    count_mae: list[float]
    area_ratio: list[float | None]
    above_p99: list[float | None]
    touching: list[float | None]
    tissue_accuracy: float
    label_pq: float
    kid: float | None = None  # against run A (A's own: B against A)
    features: np.ndarray | None = field(default=None, repr=False)

    def values(self, class_names: list[str]) -> dict[str, float | None]:
        """``metric[class]`` -> value: every gated number of the run, flat."""
        out: dict[str, float | None] = {}
        for key in ("count_r", "count_mae", "area_ratio", "above_p99", "touching"):
            for name, v in zip(class_names, getattr(self, key), strict=True):
                out[f"{key}[{name}]"] = v
        out["tissue_accuracy"] = self.tissue_accuracy
        out["label_pq"] = self.label_pq
        out["kid"] = self.kid
        return out


@dataclass(frozen=True)
class Judges:
    """What measures the runs: real tiles (morphology), the tissue CNN and the real-only segmenter."""

    real_areas: list[np.ndarray]  # per class, the real nuclei's areas
    tissue_net: Any
    segmenter: Any
    class_names: list[str]
    key: str = ""  # identity of the judges (real tiles, tissue classifier, segmenter): measurements are cached by it


def load_judges(real: Path, segmenter: Path, tissue_names: list[str], cache_dir: Path,
                show_progress: bool = False) -> Judges:
    """The real areas per class, the tissue classifier (cached by the real tiles' content) and the segmenter."""
    from histosmith.evaluation.tissue import load_or_train
    from histosmith.segmentation.train import load_segmenter

    data = Dataset.open(real)
    k = data.meta.n_classes
    areas: list[list[np.ndarray]] = [[] for _ in range(k)]
    for _, _, labels in data.iter_shards():
        for lab in labels:
            a, c = nucleus_areas(np.asarray(lab), k)
            for cls in range(k):
                areas[cls].append(a[c == cls + 1])
    clf = load_or_train(real, tissue_names, cache_dir, show_progress=show_progress)
    model, _ = load_segmenter(segmenter)
    from histosmith.data.atomic import sha256_file
    from histosmith.training.checkpoint import resolve

    key = hashlib.sha256(f"{Path(real).resolve()}|{clf.key}|{sha256_file(resolve(segmenter))}".encode()).hexdigest()
    return Judges([np.concatenate(a) if a else np.zeros(0) for a in areas], clf.net, model,
                  list(data.meta.class_names), key[:16])


def _load_run(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """images (N, H, W, 3), labels (N, H, W, 2), requested (N, K), measured (N, K), requested tissue (N,)."""
    ds = Dataset.open(path)
    names = list(ds.meta.class_names)
    rows = ds.patch_info()
    images = np.concatenate([np.asarray(i) for _, i, _ in ds.iter_shards()])
    labels = np.concatenate([np.asarray(lab) for _, _, lab in ds.iter_shards()])
    requested = np.array([[int(r[f"requested_{c}"]) for c in names] for r in rows])
    tissue_names = list(ds.meta.tissue_names)
    tissues = np.array([tissue_names.index(r["tissue"]) for r in rows])
    return images, labels, requested, ds.counts(), tissues


MEASURED = "gate_metrics.json"  # beside a run's shards: its metrics under the judges' key (reused by later gates)
FEATURES = "gate_features.npy"


def measure_run(path: Path, judges: Judges) -> RunMetrics:
    """Every metric of one generated dataset except KID (which needs run A), and its segmenter features; cached
    in the run directory for the same judges."""
    from histosmith.data.atomic import read_json_object, write_json_atomic

    cached = path / MEASURED
    if judges.key and cached.is_file() and (path / FEATURES).is_file():
        data = read_json_object(cached)
        if data.get("judges") == judges.key:
            fields = {k: v for k, v in data.items() if k not in ("judges", "kid")}
            return RunMetrics(**fields, features=np.load(path / FEATURES))
    metrics = _measure(path, judges)
    if judges.key:
        tmp = path / f".{FEATURES}.tmp.npy"
        np.save(tmp, metrics.features)
        tmp.replace(path / FEATURES)
        record = {k: v for k, v in metrics.__dict__.items() if k not in ("features", "kid")}
        write_json_atomic(cached, record | {"judges": judges.key})
    return metrics


def _measure(path: Path, judges: Judges) -> RunMetrics:
    from histosmith.evaluation.tissue import predict
    from histosmith.segmentation.consistency import tile_pq
    from histosmith.segmentation.predict import pooled_features, predict_labels

    images, labels, requested, measured, tissues = _load_run(path)
    names = judges.class_names
    k = len(names)
    summary = control_summary(names, requested, measured)
    areas: list[list[np.ndarray]] = [[] for _ in range(k)]
    touching: list[list[np.ndarray]] = [[] for _ in range(k)]
    for lab in labels:
        inst = np.asarray(lab[..., 0])
        if not inst.any():
            continue
        classes = instance_classes(inst, np.asarray(lab[..., 1]), k)
        touch = touching_instances(inst)
        a, c = nucleus_areas(np.asarray(lab), k)
        ids = np.unique(inst[inst > 0])
        for cls in range(k):
            areas[cls].append(a[c == cls + 1])
            touching[cls].append(touch[ids][classes[ids] == cls + 1])
    area_ratio, above, touch_share = [], [], []
    for cls in range(k):
        gen = np.concatenate(areas[cls]) if areas[cls] else np.zeros(0)
        real = judges.real_areas[cls]
        ok = len(gen) and len(real)
        area_ratio.append(float(np.median(gen) / np.median(real)) if ok else None)
        above.append(float((gen > np.percentile(real, 99)).mean()) if ok else None)
        t = np.concatenate(touching[cls]) if touching[cls] else np.zeros(0)
        touch_share.append(float(t.mean()) if len(t) else None)
    tissue_acc = float(np.mean(predict(judges.tissue_net, images) == tissues))
    predicted = predict_labels(judges.segmenter, images, tta=False)
    pq = float(tile_pq(names, list(labels), predicted).mean())
    features = pooled_features(judges.segmenter, images)
    return RunMetrics(summary.pearson_r, summary.mae, area_ratio, above, touch_share, tissue_acc, pq,
                      features=features)


def kid(x: np.ndarray, y: np.ndarray) -> float:
    """KID of two feature sets (mean over subsets, :func:`histosmith.evaluation.kid.kid_with_floor`)."""
    from histosmith.evaluation.kid import kid_with_floor

    return kid_with_floor(x, y)[0].mean


def same_noise(a: Path, b: Path) -> dict[str, float]:
    """Diagnostic: share of tiles with the same instance count, and class-pixel agreement, of two runs made
    from the same noise."""
    _, la, _, _, _ = _load_run(a)
    _, lb, _, _, _ = _load_run(b)
    return {"same_instance_count": float(np.mean(la[..., 0].max(axis=(1, 2)) == lb[..., 0].max(axis=(1, 2)))),
            "class_pixel_agreement": float(np.mean(la[..., 1] == lb[..., 1]))}


def judge(reference: RunMetrics, other: RunMetrics, candidate: RunMetrics,
          class_names: list[str]) -> list[dict[str, Any]]:
    """Per metric: the three values, the difference, the spread, the tolerance and whether it passes."""
    ref, ref_b, cand = (m.values(class_names) for m in (reference, other, candidate))
    rows = []
    for key, a in ref.items():
        b, c = ref_b[key], cand[key]
        base = key.split("[")[0]
        row: dict[str, Any] = {"metric": key, "reference": a, "reference_b": b, "candidate": c,
                               "floor": FLOORS[base]}
        if base == "kid":  # already a distance to run A
            diff, spread = c, (abs(b) if b is not None else None)
        elif a is None or b is None or c is None or any(math.isnan(v) for v in (a, b, c)):
            row |= {"difference": None, "spread": None, "tolerance": None,
                    "passed": a is None and c is None, "note": "undefined in some run (no nuclei of the class)"}
            rows.append(row)
            continue
        else:
            diff, spread = abs(c - a), abs(b - a)
        tolerance = max(SPREAD_FACTOR * (spread or 0.0), FLOORS[base])
        row |= {"difference": diff, "spread": spread, "tolerance": tolerance,
                "passed": diff is not None and diff <= tolerance}
        rows.append(row)
    return rows


class RunCache:
    """Generated runs under ``root``, one directory per (configuration, seed); an earlier run with the same
    settings is reused (or resumed), so a sweep pays for the reference runs once."""

    def __init__(self, root: Path, table: ConditionTable, opts: GateOptions, marker_depth: Any = None):
        self.root, self.table, self.opts, self.marker_depth = root, table, opts, marker_depth

    def run(self, config: Configuration, seed: int) -> Path:
        seed += config.seed_offset
        session = open_engine(config.engine, EngineOptions(config.device, threads=self.opts.threads,
                                                           batch=self.opts.batch, compile=config.compile,
                                                           device_loop=True if config.fused_step else None))
        try:
            s = config.sampling
            plan = GenerationPlan(seed=seed, steps=s.steps, eta=s.eta, guidance=config.guidance, sampler=s.sampler,
                                  corrector=s.corrector, batch=min(self.opts.batch, session.batch_limits()[1]))
            if self.marker_depth is not None:
                plan = plan.with_marker_depth(self.marker_depth, session.info.spec.class_names)
            # engines of two exports may share a name; runs labelled by another post-processing are not reused
            key = hashlib.sha256((session.model_id + json.dumps(plan.postprocess.record(), sort_keys=True)).encode())
            out = self.root / f"{replace(config, seed_offset=0).label}-{key.hexdigest()[:8]}-s{seed}"
            resume = (out / "generation.json").is_file()
            generate(session, plan, self.table, out, resume=resume, show_progress=self.opts.show_progress)
        finally:
            session.close()
        return out


@dataclass(frozen=True)
class GateInputs:
    """What every gate needs besides its candidates (hs-eval gate and sampler, hs-calibrate, hs-bench --gate)."""

    real: Path  # the real dataset the model was trained on
    segmenter: Path  # hs-train seg run trained on real tiles only
    runs: Path  # the generated runs, reused by later gates with the same settings
    n: int = MIN_TILES
    seed: int = 0
    batch: int = 16
    threads: int | None = None
    allow_small: bool = False
    reference_guidance: float | None = None


@dataclass
class PreparedGate:
    reference: Configuration
    table: ConditionTable
    judges: Judges
    opts: GateOptions
    runs: Path

    def run(self, candidates: list[Configuration], marker_depth: Any = None) -> GateResult:
        return run_gate(self.reference, candidates, self.table, self.judges, self.runs, self.opts, marker_depth)


def prepare_gate(reference_export: Path, inputs: GateInputs, show_progress: bool = True) -> PreparedGate:
    """Check the inputs (one error line each) before any work, then load the reference, the requests and the
    judges. ``reference_export``: the export whose fp32 ``unet.onnx`` at DDIM 50 is the reference (a guidance-
    distilled student's is its teacher's)."""
    from histosmith.data.layout import META_FILE
    from histosmith.data.sources.example import cache_dir
    from histosmith.runtime import conditions as cond

    if not (inputs.real / META_FILE).is_file():
        raise HistoSmithError(f"--real {inputs.real}: not a prepared dataset (no meta.json)")
    if not inputs.segmenter.exists():
        raise HistoSmithError(f"--segmenter {inputs.segmenter}: not found (an hs-train seg run)")
    opts = GateOptions(n=inputs.n, seed=inputs.seed, batch=inputs.batch, threads=inputs.threads,
                       allow_small=inputs.allow_small, show_progress=show_progress)
    reference = reference_configuration(reference_export, inputs.reference_guidance)
    info = open_engine(reference.engine).info
    if info.guidance_range is not None:
        raise HistoSmithError(f"{reference_export}: a guidance-distilled export; the gate's reference is its "
                              "teacher's export (fp32 two-pass unet.onnx)")
    table = cond.from_dataset(info, inputs.n, opts.condition_seed)
    judges = load_judges(inputs.real, inputs.segmenter, list(info.spec.tissue_names), cache_dir() / "gate",
                         show_progress=show_progress)
    inputs.runs.mkdir(parents=True, exist_ok=True)
    return PreparedGate(reference, table, judges, opts, inputs.runs)


def reference_configuration(export: Path, guidance: float | None = None) -> Configuration:
    """fp32 ``unet.onnx``, DDIM 50, two-pass guidance at the model's scale."""
    from histosmith.runtime.manifest import Manifest

    manifest = Manifest.load(export)
    if "unet.onnx" not in manifest.files:
        raise HistoSmithError(f"{export}: no fp32 unet.onnx, the gate's reference")
    scale = manifest.sampling.guidance if guidance is None else guidance
    return Configuration(export / "unet.onnx", SamplerSettings("ddim", 50), scale)


@dataclass
class GateResult:
    reference: Configuration
    candidates: list[Configuration]
    rows: dict[str, list[dict[str, Any]]]  # candidate label -> judge() rows
    metrics: dict[str, RunMetrics]  # run label -> metrics
    diagnostics: dict[str, dict[str, float]]
    n: int

    def passed(self, label: str) -> bool:
        return all(r["passed"] for r in self.rows[label])

    def failures(self, label: str) -> list[dict[str, Any]]:
        return [r for r in self.rows[label] if not r["passed"]]


def run_gate(reference: Configuration, candidates: list[Configuration], table: ConditionTable, judges: Judges,
             work: Path, opts: GateOptions, marker_depth: Any = None) -> GateResult:
    """Generate (or reuse) the two reference runs and every candidate's, measure them and judge each candidate."""
    cache = RunCache(work, table, opts, marker_depth)
    path_a = cache.run(reference, opts.seed)
    path_b = cache.run(reference, opts.seed + 1)
    metrics = {"reference": measure_run(path_a, judges), "reference_b": measure_run(path_b, judges)}
    a_features = metrics["reference"].features
    assert a_features is not None
    metrics["reference_b"].kid = kid(a_features, metrics["reference_b"].features)
    metrics["reference"].kid = 0.0
    rows, diagnostics = {}, {}
    for config in candidates:
        path = cache.run(config, opts.seed)
        m = measure_run(path, judges)
        m.kid = kid(a_features, m.features)
        metrics[config.label] = m
        rows[config.label] = judge(metrics["reference"], metrics["reference_b"], m, judges.class_names)
        diagnostics[config.label] = same_noise(path_a, path)
    return GateResult(reference, candidates, rows, metrics, diagnostics, len(table))
