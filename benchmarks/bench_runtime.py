"""ONNX Runtime (fp32, fp16) vs the torch reference sampler on this machine, in one run.

For each backend and batch size: guided U-Net milliseconds per DDIM step (p50, p95), decoder ms per
batch, post-processing ms per tile, and end-to-end tiles/s for a full sampling run; medians over
repeats after a warm-up. Writes JSON, a Markdown table and a PNG chart.

    python benchmarks/bench_runtime.py --checkpoint runs/demo/ldm --export runs/demo/export \
        --batches 1,16 --steps 20 --repeats 5 --out benchmarks/results/runtime_cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from histosmith.generator import load_generator
from histosmith.runtime import conditions as cond
from histosmith.runtime.backends.onnx_backend import OnnxBackend
from histosmith.runtime.backends.torch_backend import TorchBackend
from histosmith.runtime.generate import decode_labels
from histosmith.runtime.manifest import Manifest
from histosmith.runtime.postprocess import PostprocessConfig
from histosmith.runtime.schedule import DDIMScheduler
from histosmith.runtime.seeds import tile_noise
from histosmith.runtime.specs import DECODER, UNET


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up (graph optimisation, allocator, oneDNN primitive caches)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def stage_calls(backend, gen, latents, vectors, guidance):  # noqa: ANN001, ANN201 - benchmark glue
    """Zero-argument callables for one guided U-Net step and one decoder call on this batch."""
    if isinstance(backend, OnnxBackend):
        batch = len(latents)
        backend.buffers(batch)
        return (lambda: backend.run_unet(batch)), (lambda: backend.run_decoder(batch))
    lt, vt, gt = (torch.from_numpy(a) for a in (latents, vectors, guidance))
    tt = torch.full((len(latents),), 500.0)

    def unet() -> None:
        with torch.inference_mode():
            gen.guided(lt, tt, vt, gt)

    def decoder() -> None:
        with torch.inference_mode():
            gen.decoder(lt)

    return unet, decoder


def measure(backend, gen, latents, vectors, guidance, n_classes: int, repeats: int) -> dict[str, float]:  # noqa: ANN001
    """Stage timings and end-to-end throughput of one backend at one batch size."""
    batch = len(latents)
    post = PostprocessConfig()
    unet_call, decoder_call = stage_calls(backend, gen, latents, vectors, guidance)
    unet_t = timed(unet_call, repeats * 4)
    dec_t = timed(decoder_call, repeats)
    decoded = backend.sample(latents, vectors, guidance, None)
    post_t = timed(lambda: decode_labels(decoded, n_classes, post), repeats)
    e2e = timed(lambda: decode_labels(backend.sample(latents, vectors, guidance, None), n_classes, post),
                max(2, repeats // 2))
    return {
        "unet_ms_per_step_p50": 1e3 * statistics.median(unet_t), "unet_ms_per_step_p95": 1e3 * pct(unet_t, 95),
        "decoder_ms_p50": 1e3 * statistics.median(dec_t),
        "postprocess_ms_per_tile_p50": 1e3 * statistics.median(post_t) / batch,
        "tiles_per_s": batch / statistics.median(e2e),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--export", type=Path, required=True)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/runtime_cpu"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = args.threads or torch.get_num_threads()

    gen = load_generator(args.checkpoint)
    manifest = Manifest.load(args.export)
    info = manifest.info
    tables = DDIMScheduler(info.schedule).set_timesteps(args.steps)
    backends = {
        "torch-eager-fp32": TorchBackend(gen.guided, gen.decoder, tables),
        "onnxruntime-fp32": OnnxBackend(args.export / "unet.onnx", args.export / "decoder.onnx",
                                        manifest.graph(UNET), manifest.graph(DECODER), tables,
                                        manifest.batch.bounds, "cpu", threads),
        "onnxruntime-fp16": OnnxBackend(args.export / "unet.fp16.onnx", args.export / "decoder.fp16.onnx",
                                        manifest.graph(UNET), manifest.graph(DECODER), tables,
                                        manifest.batch.bounds, "cpu", threads),
    }
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        table = cond.from_dataset(info, batch, 0)
        latents, _ = tile_noise(0, np.arange(batch), info.latent_shape, args.steps, False)
        vectors = info.spec.vectors(table.counts, table.tissues)
        guidance = np.full(batch, 2.0, np.float32)
        for name, backend in backends.items():
            rows.append({"backend": name, "batch": batch,
                         **measure(backend, gen, latents, vectors, guidance, info.n_classes, args.repeats)})
            print(json.dumps(rows[-1]))
    for r in rows:
        ref = next(x for x in rows if x["backend"] == "torch-eager-fp32" and x["batch"] == r["batch"])
        r["speedup_vs_torch"] = r["tiles_per_s"] / ref["tiles_per_s"]
    result = {
        "command": "python benchmarks/bench_runtime.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "machine": {"processor": platform.processor() or platform.machine(), "threads": threads,
                    "python": platform.python_version(), "torch": torch.__version__},
        "config": {"unet": manifest.models["unet"], "latent_shape": manifest.latent_shape,
                   "tile_size": manifest.tile_size, "steps": args.steps},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"`{result['command']}`", "",
             "| backend | batch | U-Net ms/step p50 | p95 | decoder ms | post ms/tile | tiles/s | vs torch |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['batch']} | {r['unet_ms_per_step_p50']:.1f} | "
                     f"{r['unet_ms_per_step_p95']:.1f} | {r['decoder_ms_p50']:.1f} | "
                     f"{r['postprocess_ms_per_tile_p50']:.2f} | {r['tiles_per_s']:.2f} | "
                     f"{r['speedup_vs_torch']:.2f}x |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    from histosmith.data.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(backends)
    batches = sorted({r["batch"] for r in rows})
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [next(r["tiles_per_s"] for r in rows if r["backend"] == name and r["batch"] == b) for b in batches]
        ax.bar(np.arange(len(batches)) + i * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(batches)) + width * (len(names) - 1) / 2, [f"batch {b}" for b in batches])
    ax.set_ylabel(f"tiles/s ({args.steps} DDIM steps)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(f"end-to-end generation, {threads} CPU threads")
    save_figure(fig, args.out.with_suffix(".png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
