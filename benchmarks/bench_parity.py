"""Numerical parity on a trained model: every engine of an export vs the torch reference sampler.

ONNX Runtime fp32 / fp16 graphs and the torch.export programs (fp32, bf16, and fp16 with --fp16-torch;
on this CPU bf16 stands in for a GPU's fp16). Same noise and conditions for every backend; reports
final-latent relative error, class-mask pixel agreement (all pixels, and the pixels the reference calls
nucleus) and the share of tiles with identical instance counts.

    python benchmarks/bench_parity.py --checkpoint runs/demo/ldm --export runs/demo/export --n 64 --steps 50
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from histosmith.generator import load_generator
from histosmith.runtime import conditions as cond
from histosmith.runtime.backends.onnx_backend import OnnxBackend
from histosmith.runtime.backends.torch_backend import TorchBackend
from histosmith.runtime.generate import decode_labels
from histosmith.runtime.manifest import Manifest
from histosmith.runtime.postprocess import PostprocessConfig
from histosmith.runtime.schedule import Scheduler
from histosmith.runtime.seeds import tile_noise
from histosmith.runtime.specs import DECODER, UNET


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--export", type=Path, required=True)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--fp16-torch", action="store_true", help="also the fp16 torch program (slow: no fp16 on CPUs)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/parity_cpu"))
    args = ap.parse_args()
    gen = load_generator(args.checkpoint)
    manifest = Manifest.load(args.export)
    info = manifest.info
    tables = Scheduler(info.schedule).set_timesteps(args.steps)
    table = cond.from_dataset(info, args.n, 0)
    latents, _ = tile_noise(0, np.arange(args.n), info.latent_shape, args.steps, False)
    vectors = info.spec.vectors(table.counts, table.tissues)
    g = np.full(args.n, args.guidance, np.float32)
    post = PostprocessConfig()

    def run(backend) -> tuple:  # noqa: ANN001
        outs = [backend.sample(latents[i:i + 16], vectors[i:i + 16], g[i:i + 16], None) for i in range(0, args.n, 16)]
        latent = np.concatenate([o.latent for o in outs])
        classes = np.concatenate([o.semantic.argmax(1) for o in outs])
        counts = [lab[..., 0].max() for o in outs for lab in decode_labels(o, info.n_classes, post)]
        return latent, classes, np.array(counts)

    def engines():  # noqa: ANN202
        for name, suffix in (("onnxruntime-fp32", ""), ("onnxruntime-fp16", ".fp16")):
            yield name, OnnxBackend(args.export / f"unet{suffix}.onnx", args.export / f"decoder{suffix}.onnx",
                                    manifest.graph(UNET), manifest.graph(DECODER), tables, manifest.batch.bounds)
        for v in manifest.variants:
            if v.format == "torch" and (v.precision != "fp16" or args.fp16_torch):
                yield f"torch.export-{v.precision}", TorchBackend.from_files(
                    args.export / v.guided_unet, args.export / v.decoder, tables, "cpu", v.precision)

    ref = run(TorchBackend(gen.guided, gen.decoder, tables))
    rows = {}
    nucleus = ref[1] != 0
    for name, backend in engines():
        got = run(backend)
        rows[name] = {"latent_rel_err": float(np.abs(got[0] - ref[0]).max() / np.abs(ref[0]).max()),
                      "class_agreement": float((got[1] == ref[1]).mean()),
                      "nucleus_class_agreement": float((got[1] == ref[1])[nucleus].mean()),
                      "same_instance_count": float((got[2] == ref[2]).mean())}
        print(name, json.dumps(rows[name]), flush=True)
    command = "python benchmarks/bench_parity.py " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    lines = [f"`{command}`", "", "| vs torch fp32 reference | final latent rel. error | class-mask agreement | "
             "on nucleus pixels | same instance count |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['latent_rel_err']:.2e} | {v['class_agreement']:.4f} | {v['nucleus_class_agreement']:.4f} | "
              f"{v['same_instance_count']:.3f} |" for k, v in rows.items()]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
