"""``hs-bench``: every engine (and peer) at every batch size in one process, so the ratios are fair.

Per contender and batch: the guided U-Net call (median and p95 over repeats after a warm-up), the DDIM
update, the decoder, post-processing and writing per tile, and end-to-end tiles/s of the runtime's
``generate`` (what ``hs-generate`` runs, writing a dataset to a temporary directory). FLOPs per guided
call are counted from the fp32 graph; achieved GFLOP/s is set against fp32 and bf16 convolution probes
measured in the same run. ONNX Runtime engines also get a per-operator profile.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from histosmith.benchmark.contenders import (
    BatchInputs,
    Contender,
    openvino_available,
    openvino_peer,
    runtime_engine,
    torch_peer,
)
from histosmith.benchmark.flops import count_flops
from histosmith.benchmark.gate import BenchGate
from histosmith.benchmark.probes import conv_probe, ort_conv_probe
from histosmith.benchmark.profile import profile_ops
from histosmith.errors import HistoSmithError, file_error
from histosmith.runtime import conditions as cond
from histosmith.runtime.backends.base import Backend
from histosmith.runtime.generate import GenerationPlan, decode_labels, generate
from histosmith.runtime.info import GeneratorInfo
from histosmith.runtime.manifest import Manifest
from histosmith.runtime.postprocess import PostprocessConfig
from histosmith.runtime.schedule import SamplerTables, Scheduler
from histosmith.runtime.seeds import tile_noise

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchOptions:
    engines: tuple[str, ...] = ()  # U-Net file names in the export; () = every CPU engine of the manifest
    batches: tuple[int, ...] = (1, 16)
    steps: int = 20
    repeats: int = 5
    threads: int | None = None
    peers: bool = False
    checkpoint: Path | None = None  # peers: the training run (default: the export's source checkpoint)
    profile: bool = True
    show_progress: bool = True
    compile: bool = False  # torch (.pt2) engines also measured as hs-generate --compile runs them
    gate: BenchGate | None = None  # every runtime engine through hs-eval gate's quality gate
    command: str = "hs-bench"  # how the gate's report names what made it

    def __post_init__(self) -> None:
        if not self.batches or min(self.batches) < 1:
            raise HistoSmithError(f"--batches must be positive integers, got {list(self.batches)}")
        if self.steps < 1 or self.repeats < 1:
            raise HistoSmithError("--steps and --repeats must be >= 1")


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Seconds per call over ``repeats`` calls after one warm-up call."""
    fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def _ms(values: list[float]) -> tuple[float, float]:
    return 1e3 * statistics.median(values), 1e3 * float(np.percentile(values, 95))


def cpu_engines(export: Path, manifest: Manifest, names: tuple[str, ...]) -> list[Path]:
    """The requested engine files, checked against the manifest. Default: every ONNX graph, the fp32 torch
    program and, on CPUs with native bf16 (AVX512-BF16 / AMX), the bf16 one (fp16 programs are for GPUs)."""
    from histosmith.training.loop import cpu_has_native_bf16

    listed = [v.entry for v in manifest.variants if v.guided_unet and v.format in ("onnx", "torch")]
    torch_precisions = ("fp32", "bf16") if cpu_has_native_bf16() else ("fp32",)
    chosen = list(names) or [v.entry for v in manifest.variants if v.entry in listed
                             and (v.format == "onnx" or v.precision in torch_precisions)]
    for name in chosen:
        if name not in listed:
            raise file_error(export / name, f"not an engine of this export (it has: {', '.join(listed)})")
    return [export / n for n in chosen]


def ddim_update_ms(latent_shape: tuple[int, ...], batch: int, repeats: int) -> float:
    """The runtime's in-place update ``x = A x + B ε̂`` on a batch (the same for every ONNX engine)."""
    x = np.random.default_rng(0).standard_normal((batch, *latent_shape)).astype(np.float32)
    eps = x.copy()

    def update() -> None:
        np.multiply(x, 0.99, out=x)
        np.multiply(eps, 0.01, out=eps)
        np.add(x, eps, out=x)

    return _ms(timed(update, repeats * 20))[0]


def writing_ms(decoded, info, repeats: int) -> tuple[float, float]:  # noqa: ANN001
    """Writing a batch of tiles to an open dataset, per tile (what every batch of a long run pays), and the
    fixed cost of one dataset (open, then close: the shard's arrays, CSVs and ``meta.json``, atomically)."""
    from histosmith.data.format import DatasetMeta, DatasetWriter
    from histosmith.runtime.generate import to_uint8

    labels = decode_labels(decoded, info.n_classes, PostprocessConfig())
    images = [to_uint8(im) for im in decoded.image]
    meta = DatasetMeta(class_names=list(info.spec.class_names), tissue_names=list(info.spec.tissue_names),
                       tile_size=info.tile_size, count_margin=info.count_margin)
    per_tile, whole = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="hs-bench-write-") as tmp:
            t0 = time.perf_counter()
            writer = DatasetWriter(Path(tmp) / "d", meta, None)
            t1 = time.perf_counter()
            for k, (im, lab) in enumerate(zip(images, labels, strict=True)):
                writer.add(im, lab, {"patch_info": f"t{k}", "tissue": info.spec.tissue_names[0]})
            t2 = time.perf_counter()
            writer.close()
            t3 = time.perf_counter()
        per_tile.append((t2 - t1) / len(images))
        whole.append((t1 - t0) + (t3 - t2))
    return statistics.median(per_tile) * 1e3, statistics.median(whole) * 1e3


def e2e_batches(batch: int, min_tiles: int = 32) -> int:
    """Whole batches per end-to-end run: at least two and ``min_tiles`` tiles, so a run's fixed cost (opening
    the output, writing ``meta.json``) is spread as over a real run's many batches rather than one tile."""
    return max(2, -(-min_tiles // batch))


@dataclass
class BenchSession:
    """A contender's backend seen as a generator session, so ``generate`` runs it like ``hs-generate``."""

    info: GeneratorInfo
    loaded: Backend
    model_id: str = "hs-bench"

    def batch_limits(self) -> tuple[int, int]:
        return self.loaded.batch_sizes()

    def backend(self, tables: SamplerTables) -> Backend:
        return self.loaded


def end_to_end(backend: Backend, info: GeneratorInfo, steps: int, batch: int, n_batches: int) -> float:
    """Tiles/s of the runtime's generate loop (conditions, sampling, labels, writing) over whole batches."""
    table = cond.from_dataset(info, batch * n_batches, 7)
    with tempfile.TemporaryDirectory(prefix="hs-bench-e2e-") as tmp:
        result = generate(BenchSession(info, backend), GenerationPlan(seed=0, steps=steps, batch=batch), table,
                          Path(tmp) / "out", show_progress=False)
    return result.generated / result.seconds


def measure(contender: Contender, inputs: BatchInputs, info, tables, opts: BenchOptions) -> dict[str, Any]:  # noqa: ANN001
    batch = len(inputs.latent)
    calls = contender.prepare(inputs)
    unet_p50, unet_p95 = _ms(timed(calls.unet, opts.repeats * 4))
    dec_p50, dec_p95 = _ms(timed(calls.decoder, opts.repeats))
    decoded = calls.backend.sample(inputs.latent, inputs.condition, inputs.guidance, None)
    post = _ms(timed(lambda: decode_labels(decoded, info.n_classes, PostprocessConfig()), opts.repeats))[0] / batch
    write, dataset_fixed = writing_ms(decoded, info, max(2, opts.repeats // 2))
    n_batches = e2e_batches(batch)
    e2e = statistics.median(end_to_end(calls.backend, info, opts.steps, batch, n_batches)
                            for _ in range(max(2, opts.repeats // 2)))
    return {"contender": contender.name, "kind": contender.kind, "precision": contender.precision, "batch": batch,
            "unet_ms_p50": unet_p50, "unet_ms_p95": unet_p95, "decoder_ms_p50": dec_p50, "decoder_ms_p95": dec_p95,
            "postprocess_ms_per_tile": post, "write_ms_per_tile": write,
            "dataset_fixed_ms": dataset_fixed, "e2e_tiles": batch * n_batches, "tiles_per_s": e2e,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _contenders(export: Path, manifest: Manifest, tables, opts: BenchOptions) -> list[Contender]:  # noqa: ANN001
    paths = cpu_engines(export, manifest, opts.engines)
    out = [runtime_engine(p, tables, opts.threads) for p in paths]
    if opts.compile:
        out += [runtime_engine(p, tables, opts.threads, compile_engine=True) for p in paths if p.suffix == ".pt2"]
    if opts.peers:
        checkpoint = opts.checkpoint or Path(manifest.source.checkpoint)
        if not checkpoint.exists():
            raise file_error(checkpoint, "--peers needs the training checkpoint (pass --checkpoint)")
        out += [torch_peer(checkpoint, tables, False, opts.threads), torch_peer(checkpoint, tables, True, opts.threads)]
        if openvino_available():
            out.append(openvino_peer(export / "unet.onnx", export / "decoder.onnx", tables, "bf16", opts.threads))
            if (export / "unet.int8.onnx").exists():
                out.append(openvino_peer(export / "unet.int8.onnx", export / "decoder.onnx", tables, "int8",
                                         opts.threads))
        else:
            log.warning("OpenVINO is not installed: no OpenVINO peer (pip install openvino)")
    return out


def run_bench(export: Path, opts: BenchOptions) -> dict[str, Any]:
    """Measure; returns the result document (what ``hs-bench`` writes as JSON)."""
    manifest = Manifest.load(export)
    fp32 = export / "unet.onnx"
    if "unet.onnx" not in manifest.files:
        raise file_error(export, "no fp32 unet.onnx: hs-bench counts FLOPs from it")
    info = manifest.info
    tables = Scheduler(info.schedule).set_timesteps(opts.steps)
    contenders = _contenders(export, manifest, tables, opts)
    threads = opts.threads or len(os.sched_getaffinity(0))
    probes = [asdict(probe(dtype, threads=opts.threads)) for probe, dtype in
              ((conv_probe, "fp32"), (conv_probe, "bf16"), (ort_conv_probe, "fp32"), (ort_conv_probe, "int8"))]
    rows: list[dict[str, Any]] = []
    flops: dict[int, dict[str, int]] = {}
    profiles: dict[str, Any] = {}
    bar = tqdm(total=len(contenders) * len(opts.batches), desc="hs-bench", unit="run", disable=not opts.show_progress,
               dynamic_ncols=True)
    for batch in opts.batches:
        flops[batch] = count_flops(fp32, batch)
        table = cond.from_dataset(info, batch, 0)
        latent, _ = tile_noise(0, np.arange(batch), info.latent_shape, opts.steps, False)
        inputs = BatchInputs(latent, np.full(batch, 500.0, np.float32), info.spec.vectors(table.counts, table.tissues),
                             np.full(batch, 4.0, np.float32))
        update = ddim_update_ms(info.latent_shape, batch, opts.repeats)
        for c in contenders:
            bar.set_postfix_str(f"{c.name} batch {batch}")
            row = measure(c, inputs, info, tables, opts) | {"ddim_update_ms": update}
            row["gflops_per_s"] = flops[batch]["total"] / row["unet_ms_p50"] / 1e6
            rows.append(row)
            bar.update()
            if opts.profile and c.kind == "engine" and c.name.endswith("(onnxruntime-cpu)") \
                    and batch == max(opts.batches):
                path = export / c.name.split(" ")[0]
                feeds = {"latent": inputs.latent, "timestep": inputs.timestep, "condition": inputs.condition,
                         "guidance": inputs.guidance}
                profiles[c.name] = {"batch": batch, "top_ops": profile_ops(path, feeds, opts.threads)}
    bar.close()
    _derive(rows, probes, opts.steps)
    gate = None
    if opts.gate is not None:
        from histosmith.benchmark.gate import gate_engines

        gate = gate_engines(export, [(c.name, c.path, c.compiled) for c in contenders if c.path is not None],
                            opts.gate, opts.command, opts.show_progress)
    return {
        "export": str(export),
        "options": json.loads(json.dumps(asdict(opts), default=str)),  # paths as text
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "threads": threads, "load_average_1m": os.getloadavg()[0], "python": platform.python_version()},
        "config": {"latent_shape": list(info.latent_shape), "tile_size": info.tile_size,
                   "unet": dict(manifest.models.get("unet", {}))},
        "flops_per_guided_call": {str(b): f for b, f in flops.items()},
        "probes": probes,
        "rows": rows,
        "profiles": profiles,
        "gate": gate,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _derive(rows: list[dict[str, Any]], probes: list[dict[str, Any]], steps: int) -> None:
    """Shares of the probes, ratios to the references at the same batch, and the runtime's overhead."""
    peak = {p["dtype"]: p["gflops_per_s"] for p in probes}
    for r in rows:
        same = [x for x in rows if x["batch"] == r["batch"]]
        r["share_of_fp32_probe"] = r["gflops_per_s"] / peak["fp32"]
        r["share_of_bf16_probe"] = r["gflops_per_s"] / peak["bf16"]
        for ref_name, key in (("torch-eager-fp32", "unet_speedup_vs_torch_fp32"),
                              ("torch-bf16-autocast", "unet_speedup_vs_torch_bf16"),
                              ("unet.onnx (onnxruntime-cpu)", "unet_speedup_vs_ort_fp32")):
            ref = next((x for x in same if x["contender"] == ref_name), None)
            r[key] = ref["unet_ms_p50"] / r["unet_ms_p50"] if ref else None
            e2e_key = key.replace("unet_speedup", "e2e_speedup")
            r[e2e_key] = r["tiles_per_s"] / ref["tiles_per_s"] if ref else None
        # (S U-Net calls + S updates + decoder) per batch + post-processing per tile, as tiles/s
        stages = (steps * (r["unet_ms_p50"] + r["ddim_update_ms"]) + r["decoder_ms_p50"]) / r["batch"] \
            + r["postprocess_ms_per_tile"]
        r["stages_tiles_per_s"] = 1e3 / stages
        r["runtime_overhead"] = r["stages_tiles_per_s"] / r["tiles_per_s"] - 1.0
