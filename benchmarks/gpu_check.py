"""GPU checks for the torch CUDA backend (issue: TensorRT fp16 engines and the CUDA-graph runtime).

1. Parity: the fp16 + CUDA-graph backend against the fp32 reference on the same noise (final-latent
   error, class-mask agreement), on the `small` architecture with random (non-degenerate) weights.
2. Throughput: tiles/s for eager fp32, eager fp16 and fp16 + CUDA graph at several batch sizes, for the
   `small` and `paper` architectures, in one run so the ratios are fair.

Weights are random (perturbed away from the zero-initialised output layers): speed does not depend on
them and parity is a numerical property of the graphs. Writes JSON and a Markdown table.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check --steps 20 --batches 1,16,64,256
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from histosmith.config import unet_config, vq_config
from histosmith.models.unet import ConditionalUNet
from histosmith.models.vqvae import VQAutoencoder
from histosmith.models.wrappers import GuidedUNet, LatentDecoder
from histosmith.runtime.backends.torch_backend import TorchBackend
from histosmith.runtime.planning import BatchBuckets
from histosmith.runtime.schedule import DDIMScheduler, ScheduleConfig

TILE = {"small": 64, "paper": 256}


def build(preset: str, seed: int = 0) -> tuple[GuidedUNet, LatentDecoder, tuple[int, int, int], int]:
    torch.manual_seed(seed)
    vq_cfg = vq_config(preset, 3, TILE[preset])
    unet = ConditionalUNet(unet_config(preset, vq_cfg, 2)).eval()
    vq = VQAutoencoder(vq_cfg).eval()
    with torch.no_grad():
        for module in (unet, vq):
            for p in module.parameters():
                p.add_(0.02 * torch.randn_like(p))
    shape = (vq_cfg.latent_channels, vq_cfg.latent_size, vq_cfg.latent_size)
    return GuidedUNet(unet).eval(), LatentDecoder(vq, 1.0).eval(), shape, 5


def inputs(batch: int, shape: tuple[int, ...], cond_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(batch)
    return (rng.standard_normal((batch, *shape)).astype(np.float32),
            rng.random((batch, cond_dim)).astype(np.float32), np.full(batch, 2.0, np.float32))


def backend(kind: str, guided, decoder, tables, batch: int) -> TorchBackend:  # noqa: ANN001
    import copy

    dtype = torch.float32 if kind == "eager-fp32" else torch.float16
    g = copy.deepcopy(guided).cuda().to(dtype)
    d = copy.deepcopy(decoder).cuda().to(dtype)
    return TorchBackend(g, d, tables, "cuda", dtype, cuda_graph=kind == "fp16-cuda-graph",
                        buckets=BatchBuckets((batch,)))


def tiles_per_s(b: TorchBackend, lat, cond, g, repeats: int) -> float:  # noqa: ANN001
    b.sample(lat, cond, g, None)  # warm-up / capture
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        b.sample(lat, cond, g, None)  # ends with a device->host copy: synchronous
        times.append(time.perf_counter() - start)
    return len(lat) / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--presets", default="small,paper")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device")
    tables = DDIMScheduler(ScheduleConfig()).set_timesteps(args.steps)
    result = {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(0),
              "torch": torch.__version__, "steps": args.steps, "parity": {}, "throughput": []}

    guided, decoder, shape, cond_dim = build("small")
    lat, cond, g = inputs(16, shape, cond_dim)
    ref = TorchBackend(guided, decoder, tables).sample(lat, cond, g, None)  # fp32 on the CPU
    for kind in ("eager-fp32", "fp16-cuda-graph"):
        got = backend(kind, guided, decoder, tables, 16).sample(lat, cond, g, None)
        result["parity"][kind] = {
            "latent_rel_err": float(np.abs(got.latent - ref.latent).max() / np.abs(ref.latent).max()),
            "class_agreement": float((got.semantic.argmax(1) == ref.semantic.argmax(1)).mean()),
        }
        print("parity", kind, result["parity"][kind], flush=True)

    for preset in args.presets.split(","):
        guided, decoder, shape, cond_dim = build(preset)
        for batch in (int(b) for b in args.batches.split(",")):
            lat, cond, g = inputs(batch, shape, cond_dim)
            row = {"preset": preset, "batch": batch}
            for kind in ("eager-fp32", "eager-fp16", "fp16-cuda-graph"):
                try:
                    row[kind] = tiles_per_s(backend(kind, guided, decoder, tables, batch), lat, cond, g, args.repeats)
                except torch.cuda.OutOfMemoryError:
                    row[kind] = None
                torch.cuda.empty_cache()
            result["throughput"].append(row)
            print(json.dumps(row), flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"GPU check, {result['date']}, {result['device']}, torch {result['torch']}, {args.steps} DDIM steps, "
             "random weights", "", "| parity vs fp32 CPU | latent rel. error | class agreement |", "|---|---|---|"]
    lines += [f"| {k} | {v['latent_rel_err']:.2e} | {v['class_agreement']:.4f} |" for k, v in result["parity"].items()]
    lines += ["", "| config | batch | eager fp32 tiles/s | eager fp16 | fp16 + CUDA graph | graph vs fp32 |",
              "|---|---|---|---|---|---|"]
    for r in result["throughput"]:
        def f(v: float | None) -> str:
            return "OOM" if v is None else f"{v:.1f}"
        ratio = (f"{r['fp16-cuda-graph'] / r['eager-fp32']:.2f}x"
                 if r["fp16-cuda-graph"] and r["eager-fp32"] else "n/a")
        lines.append(f"| {r['preset']} | {r['batch']} | {f(r['eager-fp32'])} | {f(r['eager-fp16'])} | "
                     f"{f(r['fp16-cuda-graph'])} | {ratio} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
