"""The one GPU check: the exported engines on a GPU — parity with the CPU fp32 reference first, then speed.

What it runs are the files a user runs: torch.export programs (``unet.pt2`` and its fp16 sibling), exported
here on the CPU and loaded on the GPU, so a device or dtype baked into a graph fails here first; and, when
onnxruntime-gpu is installed, the ONNX step graph on the CUDA provider with device-bound OrtValues.

1. Parity (`small`, batch 16): each engine against the live fp32 modules on the CPU on the same noise:
   final-latent error relative to its scale, class-mask pixel agreement.
2. Throughput: tiles/s of eager fp32, eager fp16 and fp16 + whole-loop CUDA graph (and ONNX Runtime) at
   each batch, `small` then `paper`, cheapest first.

With TensorRT installed, fp16 engines of the `small` config are built from the exported ONNX step and
decoder graphs (one profile per batch) and run by the TensorRT backend in both parts.

Every result is appended to ``OUT.json`` / ``OUT.md`` the moment it is measured, so a timeout loses only
the measurement in flight. Weights are random (``benchmarks/random_models.py``).

``--dry-run`` runs the whole script on the CPU with the `tiny` config, bf16 standing in for fp16 and
ONNX Runtime's CPU provider driving the same device-binding code, in seconds (the test suite runs it).

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check --steps 20 --batches 1,16,64,256
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import statistics
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from random_models import RandomModels, random_models

from histosmith.data.atomic import write_json_atomic
from histosmith.export.onnx_export import clean, save_onnx, to_fp16, to_onnx
from histosmith.export.torch_export import export_program, program_name, save_program
from histosmith.models.wrappers import SamplerStep
from histosmith.runtime.backends.onnx_backend import OnnxBackend
from histosmith.runtime.backends.torch_backend import TorchBackend
from histosmith.runtime.planning import BatchBuckets
from histosmith.runtime.schedule import SamplerTables, ScheduleConfig, Scheduler
from histosmith.runtime.specs import DECODER, STEP, UNET, decoder_spec, step_spec, unet_spec

PARITY_BATCH = 16


class Results:
    """``OUT.json`` (rewritten atomically after each result) and ``OUT.md`` (one line appended per result)."""

    def __init__(self, out: Path, meta: dict[str, Any]):
        self.out, self.data = out, {"meta": meta, "parity": [], "throughput": [], "skipped": []}
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out.with_suffix(".json"), self.data)
        self.md = out.with_suffix(".md")
        self.md.write_text(f"GPU check, {meta['date']}, {meta['device']}, torch {meta['torch']}, "
                           f"onnxruntime {meta['onnxruntime']}, {meta['steps']} steps, random weights"
                           + (" (DRY RUN on the CPU: tiny config, bf16 for fp16)" if meta["dry_run"] else "")
                           + "\n")
        self.section = ""

    def _line(self, section: str, header: str, row: str) -> None:
        with self.md.open("a") as f:
            if section != self.section:
                f.write(f"\n{header}\n")
                self.section = section
            f.write(row + "\n")

    def add(self, kind: str, record: dict[str, Any]) -> None:
        self.data[kind].append(record)
        write_json_atomic(self.out.with_suffix(".json"), self.data)
        if kind == "parity":
            self._line(kind, "| config | sampler | engine | vs | latent rel. error | class agreement |\n"
                             "|---|---|---|---|---|---|",
                       f"| {record['preset']} | {record['sampler']} | {record['engine']} | {record['reference']} | "
                       f"{record['latent_rel_err']:.2e} | {record['class_agreement']:.4f} |")
        elif kind == "throughput":
            value = "OOM" if record["tiles_per_s"] is None else f"{record['tiles_per_s']:.1f}"
            self._line(kind, "| config | batch | engine | tiles/s | vs eager fp32 |\n|---|---|---|---|---|",
                       f"| {record['preset']} | {record['batch']} | {record['engine']} | {value} | "
                       f"{record.get('vs_fp32', '')} |")
        else:
            self._line(kind, "| skipped | why |\n|---|---|", f"| {record['what']} | {record['why']} |")
        print(json.dumps(record), flush=True)


class Engines:
    """The exported engines of one config, written to a temporary directory and loaded from it."""

    def __init__(self, models: RandomModels, max_batch: int, half: str, work: Path, onnx_provider: str | None,
                 onnx: bool):
        self.models, self.dir, self.half = models, work, half
        example = [torch.from_numpy(a) for a in models.inputs(2)]
        example.insert(1, torch.tensor([999.0, 500.0]))
        shape, dim = models.latent_shape, models.cond_dim
        self.specs = {UNET: unet_spec(shape, dim), DECODER: decoder_spec(shape, *self._tile_classes()),
                      STEP: step_spec(shape, dim)}
        inputs = {UNET: example, DECODER: example[:1]}
        for precision in ("fp32", half):
            for graph, module in ((UNET, models.guided), (DECODER, models.decoder)):
                program = export_program(module, self.specs[graph], inputs[graph], precision, max_batch)
                save_program(program, work / program_name(graph, precision))
        self.onnx_provider = onnx_provider
        if onnx:
            history = torch.stack([example[0], example[0]], dim=1)  # (B, 2, C, h, w)
            step_example = [*example, torch.tensor([1.0, -0.5, 0.0, 1.2, -0.4, 0.3, -0.1]), example[0], history]
            for graph, module, ex in ((STEP, SamplerStep(models.guided).eval(), step_example),
                                      (DECODER, models.decoder, example[:1])):
                model = clean(to_onnx(module, self.specs[graph], ex, True))
                save_onnx(model, work / f"{graph}.onnx")
                save_onnx(to_fp16(model), work / f"{graph}.fp16.onnx")

    def _tile_classes(self) -> tuple[int, int]:
        lat = torch.zeros((1, *self.models.latent_shape))
        with torch.no_grad():
            image, _, semantic = self.models.decoder(lat)
        return image.shape[-1], semantic.shape[1] - 1

    def torch_backend(self, precision: str, device: str, graph: bool, tables: SamplerTables,
                      batch: int) -> TorchBackend:
        unet, decoder = (self.dir / program_name(g, precision) for g in (UNET, DECODER))
        return TorchBackend.from_files(unet, decoder, tables, device, precision, graph, BatchBuckets((batch,)),
                                       pad=True)

    def tensorrt_backend(self, tables: SamplerTables, buckets: BatchBuckets) -> Any:
        """fp16 TensorRT engines built here from the exported step and decoder graphs, one profile per bucket."""
        from histosmith.export.tensorrt_build import build_engine, import_tensorrt
        from histosmith.runtime.backends.tensorrt_backend import TensorRTBackend
        from histosmith.runtime.cuda_rt import device_facts
        from histosmith.runtime.manifest import TensorRTBuild, Variant

        trt = import_tensorrt()
        plans = {STEP: self.dir / "unet.plan", DECODER: self.dir / "decoder.plan"}
        for graph, plan in plans.items():
            build_engine(trt, self.dir / f"{graph}.fp16.onnx", plan, self.specs[graph], buckets, 4.0,
                         self.dir / "timing.cache")
        gpu, major, minor = device_facts()
        variant = Variant("fp16", "tensorrt", entry=plans[STEP].name, decoder=plans[DECODER].name,
                          fused_step=plans[STEP].name,
                          tensorrt=TensorRTBuild(gpu, f"{major}.{minor}", trt.__version__, buckets.sizes))
        return TensorRTBackend(plans[STEP], plans[DECODER], self.specs[STEP], self.specs[DECODER], variant, tables)

    def onnx_backend(self, precision: str, tables: SamplerTables, graph: bool) -> OnnxBackend:
        suffix = "" if precision == "fp32" else ".fp16"
        return OnnxBackend(self.dir / f"{STEP}{suffix}.onnx", self.dir / f"{DECODER}{suffix}.onnx", self.specs[UNET],
                           self.specs[DECODER], tables, (1, 1 << 16), self.onnx_provider, None,
                           self.dir / f"{STEP}{suffix}.onnx", self.specs[STEP], device_loop=True, cuda_graph=graph)


def kinds(device: str, half: str) -> list[tuple[str, str, bool]]:
    """(label, precision, CUDA graph) of the torch engine runs."""
    return [("eager-fp32", "fp32", False), (f"eager-{half}", half, False), (f"{half}-cuda-graph", half, True)]


def tiles_per_s(backend: Any, inputs: tuple, repeats: int, sync: Any) -> float:
    backend.sample(*inputs, None)  # warm-up / capture
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        backend.sample(*inputs, None)  # ends with a device->host copy: synchronous
        times.append(time.perf_counter() - start)
    return len(inputs[0]) / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--presets", default="small,paper")
    ap.add_argument("--dry-run", action="store_true", help="the whole script on the CPU with tiny models")
    ap.add_argument("--samplers", default="ddim,dpmpp-2m,unipc",
                    help="parity is checked for each sampler's tables (multistep solvers carry an x̂_0 history)")
    ap.add_argument("--throughput-sampler", default="unipc", help="the sampler of the throughput runs")
    args = ap.parse_args()
    if args.dry_run:
        device, half, presets, batches, steps, repeats = "cpu", "bf16", ["tiny"], [1, 2], 4, 1  # 4: x̂_0 history used
        onnx_provider: str | None = "cpu"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device (use --dry-run to check the script on the CPU)")
        device, half, presets, steps, repeats = "cuda", "fp16", args.presets.split(","), args.steps, args.repeats
        batches = [int(b) for b in args.batches.split(",")]
        onnx_provider = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else None
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    tables_of = {s: Scheduler(ScheduleConfig()).set_timesteps(steps, sampler=s) for s in args.samplers.split(",")}
    tables = Scheduler(ScheduleConfig()).set_timesteps(steps, sampler=args.throughput_sampler)
    results = Results(args.out, {
        "date": datetime.date.today().isoformat(), "dry_run": args.dry_run, "steps": steps,
        "samplers": list(tables_of), "throughput_sampler": args.throughput_sampler,
        "distilled": f"a guidance-distilled {presets[0]} U-Net (one pass per call) checked beside the two-pass one",
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)",
        "torch": torch.__version__, "onnxruntime": ort.__version__, "providers": ort.get_available_providers()})
    if onnx_provider is None:
        results.add("skipped", {"what": "ONNX Runtime CUDA", "why": "onnxruntime-gpu is not installed"})
    have_trt = importlib.util.find_spec("tensorrt") is not None and device == "cuda"
    if not have_trt:
        results.add("skipped", {"what": "TensorRT", "why": "the tensorrt package is not installed"
                                if device == "cuda" else "dry run on the CPU"})

    with tempfile.TemporaryDirectory() as tmp:
        configs = [(preset, False) for preset in presets] + [(presets[0], True)]
        for p, (base, distilled) in enumerate(configs):
            models = random_models(base, distilled=distilled)
            preset = f"{base}-distilled" if distilled else base
            work = Path(tmp) / preset
            work.mkdir()
            engines = Engines(models, max(batches + [PARITY_BATCH]), half, work, onnx_provider,
                              onnx_provider is not None or have_trt)
            trt_backend = None
            if have_trt and p == 0:  # built once, for the first (small) config: a build takes minutes
                try:
                    sizes = tuple(sorted({*batches, PARITY_BATCH}))
                    trt_backend = engines.tensorrt_backend(tables, BatchBuckets(sizes))
                except Exception as exc:  # record the failure, keep measuring the rest
                    results.add("skipped", {"what": "TensorRT build", "why": f"FAILED: {exc!r}"[:300]})
                    traceback.print_exc()
            # parity first, on the first config and on the distilled one
            for sampler, s_tables in tables_of.items() if p == 0 or distilled else ():
                lat, cond, g = models.inputs(PARITY_BATCH)
                ref = TorchBackend(models.guided, models.decoder, s_tables).sample(lat, cond, g, None)
                runs = [(label, "torch", pr, gr) for label, pr, gr in kinds(device, half)]
                if onnx_provider is not None:
                    runs += [(f"onnxruntime-{onnx_provider}-{pr}-device", "onnx", pr, device == "cuda")
                             for pr in ("fp32", "fp16")]
                if trt_backend is not None and s_tables is tables:  # the engines were built for these tables
                    runs.append(("tensorrt-fp16-graph", "tensorrt", "fp16", True))
                for label, kind, precision, graph in runs:
                    try:
                        backend = (engines.torch_backend(precision, device, graph, s_tables, PARITY_BATCH)
                                   if kind == "torch" else trt_backend if kind == "tensorrt"
                                   else engines.onnx_backend(precision, s_tables, graph))
                        got = backend.sample(lat, cond, g, None)
                        results.add("parity", {
                            "engine": label, "preset": preset, "sampler": sampler,
                            "reference": "live fp32 modules, CPU",
                            "latent_rel_err": float(np.abs(got.latent - ref.latent).max() / np.abs(ref.latent).max()),
                            "class_agreement": float((got.semantic.argmax(1) == ref.semantic.argmax(1)).mean())})
                    except Exception as exc:  # a broken engine is the finding: record it, keep measuring
                        results.add("skipped", {"what": f"parity {label}", "why": f"FAILED: {exc!r}"[:300]})
                        traceback.print_exc()
            for batch in batches:
                inputs = models.inputs(batch)
                fp32_rate = None
                for label, precision, graph in kinds(device, half):
                    try:
                        rate: float | None = tiles_per_s(engines.torch_backend(precision, device, graph, tables, batch),
                                                         inputs, repeats, sync)
                    except torch.cuda.OutOfMemoryError:
                        rate = None
                    if device == "cuda":
                        torch.cuda.empty_cache()
                    fp32_rate = rate if label == "eager-fp32" else fp32_rate
                    ratio = f"{rate / fp32_rate:.2f}x" if rate and fp32_rate else ""
                    results.add("throughput", {"preset": preset, "batch": batch, "engine": f"torch {label}",
                                               "tiles_per_s": rate, "vs_fp32": ratio})
                if trt_backend is not None:
                    rate = tiles_per_s(trt_backend, inputs, repeats, sync)
                    results.add("throughput", {"preset": preset, "batch": batch, "engine": "tensorrt fp16 + CUDA graph",
                                               "tiles_per_s": rate,
                                               "vs_fp32": f"{rate / fp32_rate:.2f}x" if fp32_rate else ""})
                if onnx_provider is not None:
                    rate = tiles_per_s(engines.onnx_backend("fp16", tables, device == "cuda"), inputs, repeats, sync)
                    results.add("throughput", {"preset": preset, "batch": batch,
                                               "engine": f"onnxruntime-{onnx_provider} fp16 device loop",
                                               "tiles_per_s": rate,
                                               "vs_fp32": f"{rate / fp32_rate:.2f}x" if fp32_rate else ""})
            if trt_backend is not None:
                trt_backend.close()


if __name__ == "__main__":
    main()
