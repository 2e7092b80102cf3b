"""Tiles on request: what ``hs-serve`` (PyTriton) and the Triton Python-backend model of ``hs-export
--triton-repo`` share.

A request names its tiles one by one — counts per class, tissue, seed, index, optionally sampler steps
and guidance (the sampler is the server's) — and gets back image, instance map, class map and measured
counts. Tile ``(seed, index)`` is
computed exactly as ``hs-generate --seed seed`` computes its tile ``index`` (same noise, same condition
vector, same post-processing), so it is byte-identical to that tile whatever else shares its batch.

Requests are validated one by one (a bad request gets its own error, never its neighbours'); valid tiles
from concurrent requests are grouped by step count and run as engine batches of up to ``max_batch``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from histosmith.data.labels import count_nuclei
from histosmith.errors import HistoSmithError
from histosmith.runtime.backends.base import Backend
from histosmith.runtime.engine import EngineOptions, EngineSession, open_engine
from histosmith.runtime.generate import decode_labels, to_uint8
from histosmith.runtime.info import GeneratorInfo
from histosmith.runtime.postprocess import MarkerDepth, PostprocessConfig
from histosmith.runtime.schedule import SamplerSettings, SamplerTables, SamplingDefaults, Scheduler
from histosmith.runtime.seeds import tile_noise

log = logging.getLogger(__name__)

# Tensor names of the served model (inputs per tile; the batch axis is the tile axis).
IN_COUNTS, IN_TISSUE, IN_SEED, IN_INDEX = "counts", "tissue", "seed", "index"
IN_STEPS, IN_GUIDANCE = "steps", "guidance"  # optional
OUT_IMAGE, OUT_INSTANCE, OUT_CLASS, OUT_COUNTS = "image", "instance", "class", "counts"
MODEL_NAME = "histosmith"


@dataclass(frozen=True)
class TileRequest:
    counts: np.ndarray  # (K,) int64
    tissue: int
    seed: int
    index: int
    steps: int
    guidance: float


@dataclass(frozen=True)
class Tile:
    image: np.ndarray  # (H, W, 3) uint8
    instance: np.ndarray  # (H, W) int32
    classes: np.ndarray  # (H, W) int32
    counts: np.ndarray  # (K,) int32


@dataclass(frozen=True)
class ServeDefaults:
    """The server's settings; ``None`` sampling fields take the model's own (its manifest's ``sampling``)."""

    steps: int | None = None
    guidance: float | None = None
    eta: float = 0.0
    allow_extrapolation: bool = False
    marker_depth: str = str(MarkerDepth())  # the watershed's --marker-depth text, resolved for the model's classes
    sampler: str | None = None  # one for the server: requests choose steps and guidance, not the solver
    corrector: bool | None = None

    def resolved(self, model: SamplingDefaults) -> ServeDefaults:
        """Every unset sampling field from ``model``; the combination is checked (e.g. eta with a solver)."""
        out = replace(self, steps=model.steps if self.steps is None else self.steps,
                      guidance=model.guidance if self.guidance is None else self.guidance,
                      sampler=model.sampler if self.sampler is None else self.sampler,
                      corrector=model.corrector if self.corrector is None else self.corrector)
        try:
            SamplerSettings(out.sampler, out.steps, out.eta, out.corrector)  # type: ignore[arg-type]
        except ValueError as exc:
            raise HistoSmithError(str(exc)) from None
        return out


def _column(arrays: dict[str, np.ndarray], name: str, n: int, default: float | None = None) -> np.ndarray:
    value = arrays.get(name)
    if value is None:
        if default is None:
            raise HistoSmithError(f"input {name!r} is missing")
        return np.full(n, default)
    value = np.asarray(value)
    if value.shape[0] != n or value.size != n:
        raise HistoSmithError(f"input {name!r}: expected shape ({n}, 1), got {tuple(value.shape)}")
    return value.reshape(n)


def parse_tiles(info: GeneratorInfo, arrays: dict[str, np.ndarray], defaults: ServeDefaults) -> list[TileRequest]:
    """The tiles of one request (inputs with a leading tile axis); raises HistoSmithError on bad input."""
    spec = info.spec
    counts = arrays.get(IN_COUNTS)
    if counts is None:
        raise HistoSmithError(f"input {IN_COUNTS!r} is missing")
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != spec.n_classes:
        raise HistoSmithError(f"input {IN_COUNTS!r}: expected shape (tiles, {spec.n_classes}) for classes "
                              f"{list(spec.class_names)}, got {tuple(counts.shape)}")
    if not np.issubdtype(counts.dtype, np.integer):
        raise HistoSmithError(f"input {IN_COUNTS!r}: expected integers, got {counts.dtype}")
    n = len(counts)
    if (counts < 0).any():
        raise HistoSmithError(f"input {IN_COUNTS!r}: counts must not be negative")
    spec.check_range(counts, defaults.allow_extrapolation)
    tissues = _column(arrays, IN_TISSUE, n)
    names = [t.decode() if isinstance(t, bytes) else str(t) for t in tissues]
    tissue_ids = [spec.tissue_index(name) for name in names]
    seeds = _column(arrays, IN_SEED, n)
    indices = _column(arrays, IN_INDEX, n)
    steps = _column(arrays, IN_STEPS, n, defaults.steps)
    guidance = _column(arrays, IN_GUIDANCE, n, defaults.guidance)
    if (indices < 0).any():
        raise HistoSmithError(f"input {IN_INDEX!r}: tile indices must not be negative")
    if ((steps < 1) | (steps > info.schedule.num_train_timesteps)).any():
        raise HistoSmithError(f"input {IN_STEPS!r}: steps must lie in 1..{info.schedule.num_train_timesteps}")
    if not np.isfinite(guidance).all() or (guidance < 0).any():
        raise HistoSmithError(f"input {IN_GUIDANCE!r}: guidance must be a finite number >= 0")
    return [TileRequest(counts[i].astype(np.int64), tissue_ids[i], int(seeds[i]), int(indices[i]), int(steps[i]),
                        float(guidance[i])) for i in range(n)]


def stack_tiles(tiles: list[Tile]) -> dict[str, np.ndarray]:
    """Output tensors of one request, tile axis first."""
    return {OUT_IMAGE: np.stack([t.image for t in tiles]), OUT_INSTANCE: np.stack([t.instance for t in tiles]),
            OUT_CLASS: np.stack([t.classes for t in tiles]), OUT_COUNTS: np.stack([t.counts for t in tiles])}


class TileRenderer:
    """One verified engine with one session (backend, buffers) per DDIM step count in use."""

    def __init__(self, engine: Path, max_batch: int, defaults: ServeDefaults = ServeDefaults(),
                 device: str = "auto", threads: int | None = None) -> None:
        self.engine, self.max_batch = engine, max_batch
        self._options = EngineOptions(device=device, threads=threads, batch=max_batch)
        first = open_engine(engine, self._options)  # every check before any weights load
        self.defaults = defaults = defaults.resolved(first.info.sampling)
        low, high = first.batch_limits()
        if not low <= max_batch <= high:
            raise HistoSmithError(f"--max-batch {max_batch} is outside what the exported graphs accept "
                                  f"({low}..{high})")
        self.info: GeneratorInfo = first.info
        self.post: PostprocessConfig = MarkerDepth.parse(defaults.marker_depth).config(first.info.spec.class_names)
        self._sessions: dict[int, tuple[EngineSession, SamplerTables]] = {}
        self._sessions[defaults.steps] = (first, self._tables(defaults.steps))
        self.backend(defaults.steps)  # load now: configuration errors surface before serving

    def _tables(self, steps: int) -> SamplerTables:
        d = self.defaults
        return Scheduler(self.info.schedule).set_timesteps(steps, d.eta, d.sampler or "ddim", d.corrector is not False)

    def backend(self, steps: int) -> Backend:
        if steps not in self._sessions:
            self._sessions[steps] = (open_engine(self.engine, self._options), self._tables(steps))
        session, tables = self._sessions[steps]
        return session.backend(tables)

    def close(self) -> None:
        for session, _ in self._sessions.values():
            session.close()

    def render(self, requests: list[TileRequest]) -> list[Tile]:
        """Tiles for ``requests`` in order, in engine batches of at most ``max_batch`` per step count."""
        out: list[Tile | None] = [None] * len(requests)
        by_steps: dict[int, list[int]] = {}
        for i, r in enumerate(requests):
            by_steps.setdefault(r.steps, []).append(i)
        for steps, positions in by_steps.items():
            for start in range(0, len(positions), self.max_batch):
                chunk = positions[start:start + self.max_batch]
                for i, tile in zip(chunk, self._render_batch([requests[i] for i in chunk], steps), strict=True):
                    out[i] = tile
        return [t for t in out if t is not None]

    def _render_batch(self, batch: list[TileRequest], steps: int) -> list[Tile]:
        spec, stochastic = self.info.spec, self.defaults.eta > 0
        noise = [tile_noise(r.seed, np.array([r.index]), self.info.latent_shape, steps, stochastic) for r in batch]
        latents = np.concatenate([n[0] for n in noise])  # (B, C, h, w)
        step_noise = np.concatenate([n[1] for n in noise], axis=1) if stochastic else None  # (S, B, C, h, w)
        vectors = spec.vectors(np.stack([r.counts for r in batch]), np.array([r.tissue for r in batch]))
        guidance = np.array([r.guidance for r in batch], dtype=np.float32)
        decoded = self.backend(steps).sample(latents, vectors, guidance, step_noise)
        tiles = []
        for b, labels in enumerate(decode_labels(decoded, spec.n_classes, self.post)):
            counts = count_nuclei(labels, spec.n_classes, self.info.count_margin).astype(np.int32)
            tiles.append(Tile(to_uint8(decoded.image[b]), labels[..., 0].astype(np.int32),
                              labels[..., 1].astype(np.int32), counts))
        return tiles


@dataclass
class _Pending:
    tiles: list[TileRequest]
    future: Future


class DynamicBatcher:
    """Collects tiles from concurrent requests into engine batches: a batch starts when a request arrives
    and closes when it holds ``max_batch`` tiles or ``max_delay_s`` has passed. One engine thread."""

    def __init__(self, renderer: TileRenderer, max_delay_s: float = 0.005) -> None:
        self.renderer = renderer
        self.max_delay_s = max_delay_s
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="histosmith-batcher", daemon=True)
        self._thread.start()
        self.batches: list[int] = []  # tiles per engine call, for statistics

    def submit(self, tiles: list[TileRequest]) -> Future:
        """A future with the request's tiles (a list of Tile, in order)."""
        future: Future = Future()
        self._queue.put(_Pending(tiles, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        carry: _Pending | None = None
        while True:
            first = carry or self._queue.get()
            carry = None
            if first is None:
                return
            group, size = [first], len(first.tiles)
            deadline = time.monotonic() + self.max_delay_s
            while size < self.renderer.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None or size + len(item.tiles) > self.renderer.max_batch:
                    carry = item  # next batch (or shutdown after this one)
                    if item is None:
                        self._queue.put(None)
                        carry = None
                    break
                group.append(item)
                size += len(item.tiles)
            self._run(group, size)

    def _run(self, group: list[_Pending], size: int) -> None:
        tiles = [t for p in group for t in p.tiles]
        try:
            rendered = self.renderer.render(tiles)
        except Exception as exc:  # an engine failure fails this batch's requests, not the server
            log.exception("engine batch of %d tiles failed", size)
            for p in group:
                p.future.set_exception(exc)
            return
        self.batches.append(size)
        start = 0
        for p in group:
            p.future.set_result(rendered[start:start + len(p.tiles)])
            start += len(p.tiles)
