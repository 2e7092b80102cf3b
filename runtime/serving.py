"""Tiles on request: what ``hs-serve`` (PyTriton) and the Triton Python-backend model of ``hs-export
--triton-repo`` share.

A request names its tiles one by one — counts per class, tissue, seed, index, optionally sampler steps
and guidance (the sampler is the server's) — and gets back image, instance map, class map and measured
counts. Tile ``(seed, index)`` is
computed exactly as ``hs-generate --seed seed`` computes its tile ``index`` (same noise, same condition
vector, same post-processing), so it is byte-identical to that tile whatever else shares its batch.

Every field of a request is validated before its tiles join a batch (a bad request gets one error line
naming the field, never its neighbours'); the valid tiles of the requests Triton batched together are grouped by
step count and run as engine batches of up to ``max_batch``, and should such a batch still fail, each request
is rendered alone so that only the one at fault gets the error (:meth:`TileRenderer.render_each`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from histosmith.data.labels import count_nuclei
from histosmith.errors import HistoSmithError
from histosmith.runtime.backends.base import Backend
from histosmith.runtime.engine import EngineOptions, EngineSession, open_engine
from histosmith.runtime.generate import decode_labels, to_uint8
from histosmith.runtime.info import GeneratorInfo
from histosmith.runtime.planning import fit_batch
from histosmith.runtime.postprocess import MarkerDepth, PostprocessConfig
from histosmith.runtime.schedule import SamplerSettings, SamplerTables, SamplingDefaults, Scheduler
from histosmith.runtime.seeds import tile_noise

log = logging.getLogger(__name__)

# Tensor names of the served model (inputs per tile; the batch axis is the tile axis).
IN_COUNTS, IN_TISSUE, IN_SEED, IN_INDEX = "counts", "tissue", "seed", "index"
IN_STEPS, IN_GUIDANCE = "steps", "guidance"  # optional
MAX_SEED = 2**63 - 1
MAX_INDEX = 2**40  # tile numbers of one seed: far beyond any dataset, small enough for every noise stream
MAX_COUNT = 10_000  # nuclei per class and tile, even with --allow-extrapolation
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
    if value.ndim == 0 or value.shape[0] != n or value.size != n:
        raise HistoSmithError(f"input {name!r}: expected shape ({n}, 1), got {tuple(value.shape)}")
    return value.reshape(n)


def _whole(arrays: dict[str, np.ndarray], name: str, n: int, low: int, high: int,
           default: int | None = None) -> np.ndarray:
    """An integer column with every value in ``low..high`` (floats only when whole numbers)."""
    value = _column(arrays, name, n, default)
    if not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)):
        raise HistoSmithError(f"input {name!r}: expected whole numbers, got {value.dtype}")
    if np.issubdtype(value.dtype, np.floating) and not (np.isfinite(value).all() and (value == np.round(value)).all()):
        raise HistoSmithError(f"input {name!r}: expected whole numbers")
    if ((value < low) | (value > high)).any():
        raise HistoSmithError(f"input {name!r}: must lie in {low}..{high}")
    return value.astype(np.int64)


def parse_tiles(info: GeneratorInfo, arrays: dict[str, np.ndarray], defaults: ServeDefaults) -> list[TileRequest]:
    """The tiles of one request (inputs with a leading tile axis), every field checked; raises HistoSmithError
    naming the field — also for input no check foresaw, so a client never gets a traceback."""
    try:
        return _parse_tiles(info, arrays, defaults)
    except HistoSmithError:
        raise
    except Exception as exc:  # a malformed tensor that slipped past the checks: still one line, no traceback
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HistoSmithError(f"request not understood ({type(exc).__name__}: {first[:200]})") from None


def _parse_tiles(info: GeneratorInfo, arrays: dict[str, np.ndarray], defaults: ServeDefaults) -> list[TileRequest]:
    spec = info.spec
    counts = arrays.get(IN_COUNTS)
    if counts is None:
        raise HistoSmithError(f"input {IN_COUNTS!r} is missing")
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != spec.n_classes or counts.shape[0] == 0:
        raise HistoSmithError(f"input {IN_COUNTS!r}: expected shape (tiles, {spec.n_classes}) for classes "
                              f"{list(spec.class_names)}, got {tuple(counts.shape)}")
    if not np.issubdtype(counts.dtype, np.integer):
        raise HistoSmithError(f"input {IN_COUNTS!r}: expected integers, got {counts.dtype}")
    n = len(counts)
    if (counts < 0).any():
        raise HistoSmithError(f"input {IN_COUNTS!r}: counts must not be negative")
    if (counts > MAX_COUNT).any():
        raise HistoSmithError(f"input {IN_COUNTS!r}: at most {MAX_COUNT} nuclei per class and tile")
    try:
        spec.check_range(counts, defaults.allow_extrapolation)
    except HistoSmithError as exc:
        raise HistoSmithError(f"input {IN_COUNTS!r}: {exc}") from None
    tissues = _column(arrays, IN_TISSUE, n)
    try:
        names = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in tissues]
        tissue_ids = [spec.tissue_index(name) for name in names]
    except UnicodeDecodeError:
        raise HistoSmithError(f"input {IN_TISSUE!r}: not UTF-8 text") from None
    except HistoSmithError as exc:
        raise HistoSmithError(f"input {IN_TISSUE!r}: {exc}") from None
    seeds = _whole(arrays, IN_SEED, n, 0, MAX_SEED)
    indices = _whole(arrays, IN_INDEX, n, 0, MAX_INDEX)
    steps = _whole(arrays, IN_STEPS, n, 1, info.schedule.num_train_timesteps, defaults.steps)
    for s in np.unique(steps):  # the server's sampler at this step count (e.g. a multistep solver's minimum)
        try:
            SamplerSettings(defaults.sampler or "ddim", int(s), defaults.eta, defaults.corrector is not False)  # type: ignore[arg-type]
        except ValueError as exc:
            raise HistoSmithError(f"input {IN_STEPS!r}: {exc}") from None
    guidance = _column(arrays, IN_GUIDANCE, n, defaults.guidance)
    if not np.issubdtype(guidance.dtype, np.number) or not np.isfinite(guidance).all() or (guidance < 0).any() \
            or (guidance > 100).any():
        raise HistoSmithError(f"input {IN_GUIDANCE!r}: guidance must be a finite number in 0..100")
    for g in np.unique(guidance):
        info.check_guidance(float(g), f"input {IN_GUIDANCE!r}:")
    return [TileRequest(counts[i].astype(np.int64), tissue_ids[i], int(seeds[i]), int(indices[i]), int(steps[i]),
                        float(guidance[i])) for i in range(n)]


def stack_tiles(tiles: list[Tile]) -> dict[str, np.ndarray]:
    """Output tensors of one request, tile axis first."""
    return {OUT_IMAGE: np.stack([t.image for t in tiles]), OUT_INSTANCE: np.stack([t.instance for t in tiles]),
            OUT_CLASS: np.stack([t.classes for t in tiles]), OUT_COUNTS: np.stack([t.counts for t in tiles])}


class TileRenderer:
    """One verified engine with one session (backend, buffers) per DDIM step count in use."""

    def __init__(self, engine: Path, max_batch: int | None, defaults: ServeDefaults = ServeDefaults(),
                 device: str = "auto", threads: int | None = None) -> None:
        first = open_engine(engine, EngineOptions(device=device, threads=threads, batch=max_batch))  # checks first
        self.engine = engine
        self.max_batch = max_batch = fit_batch(max_batch, first.batch_limits(), "--max-batch")
        self._options = EngineOptions(device=device, threads=threads, batch=max_batch)
        self.defaults = defaults = defaults.resolved(first.info.sampling)
        first.info.check_guidance(float(defaults.guidance or 0.0))
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

    def render_each(self, requests: list[list[TileRequest]]) -> list[list[Tile] | HistoSmithError]:
        """The tiles of each request, rendered together; should that fail, each request alone, so only a request
        whose own tiles fail gets an error (one line, as a :class:`HistoSmithError`) and its batch-mates their
        tiles — the same bytes either way."""
        try:
            tiles = self.render([t for r in requests for t in r])
        except Exception:
            if len(requests) == 1:
                return [self._render_alone(requests[0])]
            log.warning("an engine batch of %d requests failed; rendering them one by one", len(requests))
            return [self._render_alone(r) for r in requests]
        out: list[list[Tile] | HistoSmithError] = []
        start = 0
        for r in requests:
            out.append(tiles[start:start + len(r)])
            start += len(r)
        return out

    def _render_alone(self, request: list[TileRequest]) -> list[Tile] | HistoSmithError:
        try:
            return self.render(request)
        except HistoSmithError as exc:
            return exc
        except Exception as exc:
            log.exception("a request failed in the engine")
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return HistoSmithError(f"the engine failed on this request ({type(exc).__name__}: {first[:200]})")

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
