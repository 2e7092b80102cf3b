"""The Python API: load a generator, make labelled tiles in memory or stream them to a dataset.

``hs-generate`` is a thin layer over it::

    from histosmith import Generator, QCPolicy

    gen = Generator.from_pretrained()                       # the shipped hgsc-64 model (or a name, an export)
    tiles = gen.generate(8, counts={"neoplastic": 12, "inflammatory": 4}, tissue="tumour_nest", seed=0)
    tiles.images.shape, tiles.instances.shape, tiles.counts  # (8, 64, 64, 3) uint8, (8, 64, 64) int32, (8, 3)
    gen.generate_to("synthetic/", 1000, balance=True, qc=QCPolicy(tolerance=0.2, attempts=4))

Needs only the lean runtime (numpy + ONNX Runtime): no torch unless the engine is a torch ``.pt2`` program.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histosmith.runtime.conditions import ConditionRequest, ConditionTable
from histosmith.runtime.engine import EngineOptions, EngineSession, open_engine
from histosmith.runtime.generate import (
    GenerationPlan,
    GenerationResult,
    batch_ranges,
    generate,
    sampling_plan_fields,
    tile_sampler,
)
from histosmith.runtime.planning import fit_batch
from histosmith.runtime.postprocess import MarkerDepth
from histosmith.runtime.pretrained import resolve_engine
from histosmith.runtime.qc import AreaLimits


@dataclass(frozen=True)
class QCPolicy:
    """Resample tiles whose nuclei miss the request: ``tolerance`` (relative, at least one nucleus; None: no count
    check), ``attempts`` samples per tile at most, ``max_area`` (``"neoplastic=360,..."``: the size check)."""

    tolerance: float | None = 0.2
    attempts: int = 3
    max_area: str | None = None


@dataclass(frozen=True)
class Tiles:
    """Labelled tiles in memory, tile axis first."""

    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    instances: np.ndarray  # (N, H, W) int32 instance ids (0 background)
    classes: np.ndarray  # (N, H, W) int32 class ids (0 background, 1..K)
    counts: np.ndarray  # (N, K) measured nuclei per class
    requested: np.ndarray  # (N, K) requested nuclei per class
    tissues: list[str]  # requested tissue per tile
    class_names: list[str]

    @property
    def labels(self) -> np.ndarray:
        """(N, H, W, 2): the CoNIC layout (instance, class)."""
        return np.stack([self.instances, self.classes], axis=-1)

    def __len__(self) -> int:
        return len(self.images)


class Generator:
    """A verified generator (an export, an engine file, or a shipped model) and how it samples by default."""

    def __init__(self, session: EngineSession, name: str | None = None):
        self.session = session
        self.name = name or session.directory.name

    @classmethod
    def from_pretrained(cls, name: str | None = None, **options: Any) -> Generator:
        """A shipped model by name (default: ``hgsc-64``), or any engine path / export directory."""
        return cls.open(name, **options)

    @classmethod
    def open(cls, engine: str | Path | None = None, *, device: str = "auto", threads: int | None = None,
             batch: int = 16, precision: str = "auto", compile: bool = False) -> Generator:
        """``engine``: an engine file (``EXPORT/unet.onnx``, ``.pt2``, ``.plan``), an export directory (its
        ``unet.onnx``), a shipped model's name, or None for the default shipped model."""
        if engine is not None and Path(engine).is_dir():
            engine = Path(engine) / "unet.onnx"
        path, shipped = resolve_engine(engine)
        opts = EngineOptions(device=device, threads=threads, precision=precision, batch=batch,  # type: ignore[arg-type]
                             compile=compile)
        return cls(open_engine(path, opts), shipped)

    # ------------------------------------------------------------------ facts

    @property
    def class_names(self) -> list[str]:
        return list(self.session.info.spec.class_names)

    @property
    def tissue_names(self) -> list[str]:
        return list(self.session.info.spec.tissue_names)

    @property
    def tile_size(self) -> int:
        return self.session.info.tile_size

    def __repr__(self) -> str:
        s = self.session.info.sampling
        return (f"Generator({self.name!r}: classes {self.class_names}, tissues {self.tissue_names}, "
                f"{self.tile_size} px; default {s.sampler} {s.steps} steps, guidance {s.guidance:g})")

    # ------------------------------------------------------------------ planning

    def plan(self, *, seed: int = 0, sampler: str | None = None, steps: int | None = None,
             guidance: float | None = None, eta: float = 0.0, corrector: bool | None = None, batch: int | None = None,
             qc: QCPolicy | None = None, marker_depth: str | None = None,
             shard_size: int | None = None) -> GenerationPlan:
        """The generation plan of these options (unset sampling options: the model's defaults; unset batch: 16, or
        the nearest the model's graphs take)."""
        plan = GenerationPlan(seed=seed, eta=eta, batch=fit_batch(batch, self.session.batch_limits(), "batch"),
                              shard_size=shard_size,
                              qc=qc.tolerance if qc else None, qc_attempts=qc.attempts if qc else 3,
                              qc_max_area=AreaLimits.parse(qc.max_area) if qc and qc.max_area else None,
                              **sampling_plan_fields(sampler, steps, guidance, corrector))
        model = self.session.info.sampling.marker_depth
        depth = MarkerDepth.parse(marker_depth or model) if (marker_depth or model) else MarkerDepth()
        return plan.with_marker_depth(depth, self.class_names).with_model_defaults(self.session.info.sampling)

    def conditions(self, n: int | None = None, *, counts: Mapping[str, int] | None = None, tissue: str | None = None,
                   conditions_csv: str | Path | None = None, balance: bool = False, allow_extrapolation: bool = False,
                   seed: int = 0) -> ConditionTable:
        """The per-tile requests: explicit ``counts`` (+ ``tissue``), a CSV, ``balance`` (rare classes raised), or
        (default) draws from the training distribution."""
        text = ",".join(f"{k}={int(v)}" for k, v in counts.items()) if counts else None
        request = ConditionRequest.from_options(n, text, tissue, Path(conditions_csv) if conditions_csv else None,
                                                counts is None and conditions_csv is None and not balance, balance,
                                                allow_extrapolation)
        return request.resolve(self.session.info, seed)

    # ------------------------------------------------------------------ generating

    def generate(self, n: int | None = None, *, counts: Mapping[str, int] | None = None, tissue: str | None = None,
                 conditions_csv: str | Path | None = None, balance: bool = False, allow_extrapolation: bool = False,
                 show_progress: bool = False, **plan_options: Any) -> Tiles:
        """``n`` labelled tiles in memory (the same tiles ``generate_to`` writes for the same options)."""
        plan = self.plan(**plan_options)
        table = self.conditions(n, counts=counts, tissue=tissue, conditions_csv=conditions_csv, balance=balance,
                                allow_extrapolation=allow_extrapolation, seed=plan.seed)
        return self.sample(table, plan, show_progress)

    def sample(self, table: ConditionTable, plan: GenerationPlan, show_progress: bool = False) -> Tiles:
        """Tiles for a condition table with a plan (what :meth:`generate` calls)."""
        from tqdm import tqdm

        from histosmith.data.labels import count_nuclei

        fit_batch(plan.batch, self.session.batch_limits(), "batch")
        tables = plan.tables(self.session.info.schedule)
        sample_batch = tile_sampler(self.session, plan, table, self.session.backend(tables), tables)
        images, labels = [], []
        n = len(table)
        for start, end in tqdm(batch_ranges(0, n, plan.batch, n), desc="generate", unit="batch",
                               disable=not show_progress):
            tiles = sample_batch(np.arange(start, end))
            images += tiles.images
            labels += tiles.labels
        k = len(self.class_names)
        margin = self.session.info.count_margin
        lab = np.stack(labels) if labels else np.zeros((0, self.tile_size, self.tile_size, 2), np.int32)
        measured = np.stack([count_nuclei(t, k, margin) for t in labels]) if labels else np.zeros((0, k), np.int64)
        return Tiles(np.stack(images), lab[..., 0].astype(np.int32), lab[..., 1].astype(np.int32), measured,
                     table.counts.copy(), [self.tissue_names[t] for t in table.tissues], self.class_names)

    def generate_to(self, out: str | Path, n: int | None = None, *, counts: Mapping[str, int] | None = None,
                    tissue: str | None = None, conditions_csv: str | Path | None = None, balance: bool = False,
                    allow_extrapolation: bool = False, resume: bool = False, show_progress: bool = True,
                    **plan_options: Any) -> GenerationResult:
        """Stream tiles to a dataset directory (sharded CoNIC layout, atomic shards, ``resume`` after a crash)."""
        from histosmith.runtime.generate import check_output_dir

        out = Path(out)
        check_output_dir(out, resume)
        plan = self.plan(**plan_options)
        table = self.conditions(n, counts=counts, tissue=tissue, conditions_csv=conditions_csv, balance=balance,
                                allow_extrapolation=allow_extrapolation, seed=plan.seed)
        return generate(self.session, plan, table, out, resume=resume, show_progress=show_progress)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
