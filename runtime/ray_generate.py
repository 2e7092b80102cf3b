"""``hs-generate --ray [ADDRESS]``: the same dataset, made by a pool of Ray actors over tile-index ranges.

The unit of work is one output shard (tiles ``[k * shard_size, (k + 1) * shard_size)``). Each actor loads
the engine once and keeps its backends (ONNX Runtime sessions, preallocated buffers; CUDA graphs on GPU)
for every shard it makes; it writes the shard itself, atomically (temporary directory, then rename).
Batches inside a shard are cut exactly as the single-process loop cuts them and tile ``i`` depends only on
``(seed, i)``, so the bytes equal ``hs-generate`` without ``--ray``.

Faults: actors are created with unlimited restarts and task retries, so a worker process that dies
mid-shard is restarted by Ray and the shard is made again; a shard that already exists is never written
twice (the rename is atomic and a retried task that finds its shard finished returns at once). ``--resume``
skips every shard on disk, in any order. ``meta.json`` is written last, when every shard exists.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from histosmith.data.layout import shard_name
from histosmith.data.meta import DatasetMeta
from histosmith.data.writer import DatasetWriter, write_shard
from histosmith.errors import HistoSmithError
from histosmith.runtime.conditions import ConditionTable
from histosmith.runtime.engine import EngineSession
from histosmith.runtime.generate import (
    GenerationPlan,
    GenerationResult,
    begin_output,
    check_output,
    run_record,
    tile_row,
)
from histosmith.runtime.postprocess import marker_depth_label
from histosmith.runtime.schedule import SamplerSettings
from histosmith.runtime.serving import ServeDefaults, TileRenderer, TileRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: start a local Ray instance; "auto": the cluster this machine belongs to
    workers: int = 2  # actors
    cpus_per_worker: float = 1.0
    device: str = "auto"
    threads: int | None = None  # ONNX Runtime intra-op threads per actor
    connect_timeout_s: float = 60.0  # how long joining a cluster may take before one error line
    # Tests only: the actor making shard ``fault_shard`` kills its own process once, after its first batch,
    # leaving ``fault_marker`` behind so that the retry runs normally.
    fault_shard: int | None = None
    fault_marker: str | None = None


def connect(address: str | None, workers: int, cpus_per_worker: float, timeout_s: float = 60.0) -> None:
    """Join the Ray cluster at ``address`` (or start a local one); one ``error:`` line when that fails, and within
    ``timeout_s`` (Ray itself keeps retrying an address that answers but is no cluster)."""
    if address not in (None, "auto"):
        _check_reachable(address, timeout_s)
    if address is not None:
        _probe(address, timeout_s)
    import ray

    if ray.is_initialized():
        return
    try:
        if address is None:
            ray.init(num_cpus=max(1, int(np.ceil(workers * cpus_per_worker))), include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as exc:  # ray raises ConnectionError, ValueError or RuntimeError depending on the address
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise HistoSmithError(f"--ray {address or 'local'}: cannot {'start' if address is None else 'join'} a Ray "
                              f"cluster ({first})") from None


_PROBE = "import sys, ray; ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False); ray.shutdown()"


def _probe(address: str, timeout_s: float) -> None:
    """Join the cluster once in a child process, bounded by ``timeout_s``: Ray's connection retries cannot be
    interrupted in-process, and their log lines stay out of the user's terminal."""
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE, address], capture_output=True, text=True,
                               timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise HistoSmithError(f"--ray {address}: no Ray cluster took the connection within {timeout_s:g} s "
                              "(--ray-timeout sets the wait)") from None
    if probe.returncode:
        lines = [line for line in probe.stderr.splitlines() if line.strip() and not line.startswith(" ")]
        raise HistoSmithError(f"--ray {address}: cannot connect to a Ray cluster "
                              f"({(lines[-1:] or ['no output'])[0][:200]})")


def _check_reachable(address: str, timeout_s: float) -> None:
    """Ray keeps retrying an address that does not answer; fail fast on one that cannot be reached."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise HistoSmithError(f"--ray {address}: expected host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=min(timeout_s, 10)).close()
    except OSError as exc:
        raise HistoSmithError(f"--ray {address}: no Ray cluster answers there ({exc.strerror or exc})") from None


class ShardWorker:
    """One actor: the engine loaded once, shards made on request."""

    def __init__(self, engine: str, sampling: SamplerSettings, marker_depth: str, batch: int, device: str,
                 threads: int | None, fault_shard: int | None, fault_marker: str | None) -> None:
        # the driver checked the range
        defaults = ServeDefaults(steps=sampling.steps, eta=sampling.eta, allow_extrapolation=True,
                                 marker_depth=marker_depth, sampler=sampling.sampler, corrector=sampling.corrector)
        self.renderer = TileRenderer(Path(engine), batch, defaults, device, threads)
        self.fault = (fault_shard, fault_marker)

    def pid(self) -> int:
        return os.getpid()

    def make_shard(self, out: str, shard: int, start: int, end: int, table: ConditionTable, seed: int,
                   guidance: float) -> int:
        path = Path(out) / shard_name(shard)
        if path.exists():  # a retried task whose first attempt got as far as the rename
            return shard
        info = self.renderer.info
        requests = [TileRequest(table.counts[i], int(table.tissues[i]), seed, i, self.renderer.defaults.steps,
                                guidance) for i in range(start, end)]
        tiles = []
        batch = self.renderer.max_batch
        for b in range(0, len(requests), batch):  # the single-process loop's batches within this shard
            tiles += self.renderer.render(requests[b:b + batch])
            self._maybe_fail(shard)
        labels = np.stack([np.stack([t.instance, t.classes], axis=-1) for t in tiles])  # (n, H, W, 2)
        write_shard(path, np.stack([t.image for t in tiles]), labels, np.stack([t.counts for t in tiles]),
                    info.spec.class_names, [tile_row(info, table, seed, i) for i in range(start, end)])
        return shard

    def _maybe_fail(self, shard: int) -> None:
        fault_shard, marker = self.fault
        if fault_shard == shard and marker and not Path(marker).exists():
            Path(marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)


def generate_run_on_ray(session: EngineSession, plan: GenerationPlan, table: ConditionTable, out: Path,
                        options: RayOptions, resume: bool = False) -> GenerationResult:
    """:func:`histosmith.runtime.generate.generate` with the shards made by Ray actors: the run is recorded,
    locked and checked for a resume exactly as in one process, the cluster joined before anything is written."""
    from histosmith.data.lock import exclusive

    record = run_record(session, plan, table)
    with exclusive(out, "dataset"):
        check_output(out, record, resume)
        connect(options.address, options.workers, options.cpus_per_worker, options.connect_timeout_s)
        meta = begin_output(session, plan, record, out, resume)
        return generate_on_ray(session.path(session.variant.entry), plan, record, meta, table, out, options)


def generate_on_ray(engine: Path, plan: GenerationPlan, record: dict, meta: DatasetMeta, table: ConditionTable,
                    out: Path, options: RayOptions, show_progress: bool = True) -> GenerationResult:
    """Make every missing shard of the run ``record`` (already in ``out``) on Ray, then ``meta.json``."""
    import ray
    from ray.util import ActorPool

    n, size = record["n"], record["shard_size"]
    shards = [(k, k * size, min((k + 1) * size, n)) for k in range((n + size - 1) // size)]
    pending = [s for s in shards if not (out / shard_name(s[0])).exists()]
    done = sum(end - start for _, start, end in shards) - sum(end - start for _, start, end in pending)
    if done:
        log.info("resuming: %d of %d shards already on disk", len(shards) - len(pending), len(shards))
    started = time.monotonic()
    if pending:
        connect(options.address, options.workers, options.cpus_per_worker, options.connect_timeout_s)
        remote = ray.remote(num_cpus=options.cpus_per_worker, max_restarts=-1, max_task_retries=-1)(ShardWorker)
        depth = str(marker_depth_label(plan.postprocess, meta.class_names))
        actors = [remote.remote(str(engine), plan.sampling, depth, plan.batch, options.device,
                                options.threads, options.fault_shard, options.fault_marker)
                  for _ in range(min(options.workers, len(pending)))]
        table_ref = ray.put(table)
        pool = ActorPool(actors)
        jobs = pool.map_unordered(
            lambda actor, s: actor.make_shard.remote(str(out), s[0], s[1], s[2], table_ref, plan.seed, plan.guidance),
            pending)
        sizes = {k: end - start for k, start, end in pending}
        with tqdm(total=n, initial=done, desc=f"generate (ray, {len(actors)} workers)", unit="tile",
                  disable=not show_progress, dynamic_ncols=True) as bar:
            for shard in jobs:
                bar.update(sizes[shard])
        for actor in actors:
            ray.kill(actor)
    missing = [shard_name(k) for k, _, _ in shards if not (out / shard_name(k)).exists()]
    if missing:
        raise HistoSmithError(f"{out}: shards {missing} are missing after the Ray run; rerun with --resume")
    writer = DatasetWriter(out, meta, size, resume=True)
    writer.close()
    return GenerationResult(out, n, n - done, time.monotonic() - started, table.counts, writer.counts())

