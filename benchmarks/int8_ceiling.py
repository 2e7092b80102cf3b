"""How fast can INT8 make the guided U-Net call on this CPU, with accuracy set aside?

The INT8 bars (≥ 2× ONNX Runtime fp32 at batch 1 and 16) are missed by the gated graph of ``hs-calibrate``,
which keeps 82 % of the FLOPs in float to pass its quality gate. This measures the ceiling: the same U-Net
with *every* convolution and matmul quantised — accuracy ignored — in one process, beside fp32 and bf16:

* ONNX Runtime: fp32 ``unet.onnx``; the export's gated ``unet.int8.onnx`` (when present); an all-INT8 Q/DQ
  graph of ``hs-calibrate``'s CPU recipe (u8 activations, s8 per-channel weights), from the activation ranges
  ``hs-calibrate`` cached (``--ranges``) or, without them, from a few random inputs (speed does not depend
  on the ranges);
* OpenVINO (when installed) on the same all-INT8 graph and, in bf16, on ``unet.onnx``;
* torch: the exported programs ``unet.pt2`` / ``unet.bf16.pt2`` eager and under ``torch.compile``
  (inductor, weights frozen), and, when ``torchao`` is installed, its PT2E INT8 recipe for x86 (every
  convolution and linear quantised, oneDNN INT8 kernels through inductor).

Guided U-Net call (conditional + null branch in one graph) per batch; medians over repeats after warm-up.

    python benchmarks/int8_ceiling.py --export runs/int8exp/export \
        --ranges runs/reference/calibration_cache/46bd60d71193ba88bbfa/ranges-unet-percentile-cpu.json \
        --out benchmarks/results/int8_ceiling_reference
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shlex
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from histosmith.benchmark.bench import timed
from histosmith.data.atomic import write_json_atomic, write_text_atomic

Feeds = dict[str, np.ndarray]


def feeds(batch: int, cond_dim: int, seed: int = 0) -> Feeds:
    rng = np.random.default_rng(seed)
    return {"latent": rng.standard_normal((batch, 4, 16, 16)).astype(np.float32),
            "timestep": np.full(batch, 500, np.float32),
            "condition": rng.uniform(0, 0.5, (batch, cond_dim)).astype(np.float32),
            "guidance": np.full(batch, 3.0, np.float32)}


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # two more warm-ups than hs-bench's one: compiled graphs settle over their first calls
    fn()
    return 1e3 * statistics.median(timed(fn, repeats))


def ort_runner(path: Path, threads: int) -> Callable[[Feeds], Callable[[], Any]]:
    """Each contender's session lives only while it is timed: idle runtimes' thread pools must not compete."""
    import onnxruntime as ort

    def make(f: Feeds) -> Callable[[], Any]:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return lambda: session.run(None, f)
    return make


def openvino_runner(path: Path, threads: int, precision: str) -> Callable[[Feeds], Callable[[], Any]]:
    """OpenVINO's CPU plugin on an ONNX graph as is (a Q/DQ graph runs in INT8; ``bf16``: its precision hint)."""
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
              "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}

    def make(f: Feeds) -> Callable[[], Any]:
        request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()
        return lambda: request.infer(f)
    return make


def all_int8(unet: Path, ranges: Path | None, out: Path, cond_dim: int) -> Path:
    """Every Conv / MatMul / Gemm of ``unet`` quantised with hs-calibrate's CPU recipe."""
    from histosmith.calibration.quantize import FeedReader, quantize, recipe

    reader = None
    if ranges is None:  # calibrate on random inputs: the ranges change the accuracy, not the speed
        batches = [feeds(8, cond_dim, seed) for seed in range(4)]
        reader = FeedReader(lambda rows: batches[int(rows[0])], [np.array([i]) for i in range(len(batches))])
        ranges = out.with_suffix(".ranges.json")
    quantize(unet, out, recipe("cpu"), "minmax" if reader else "percentile", reader, ranges, exclude=())
    return out


def torch_runners(export: Path, threads: int, use_torchao: bool) -> dict[str, Callable[[Feeds], Callable[[], Any]]]:
    import torch
    import torch._inductor.config as inductor

    torch.set_num_threads(threads)
    inductor.freezing = True  # constant-fold the weights into the compiled graph (prepacked for oneDNN)
    out: dict[str, Callable[[Feeds], Callable[[], Any]]] = {}

    def args(f: Feeds, dtype: Any) -> tuple[Any, ...]:
        return (torch.from_numpy(f["latent"]).to(dtype), torch.from_numpy(f["timestep"]),
                torch.from_numpy(f["condition"]).to(dtype), torch.from_numpy(f["guidance"]).to(dtype))

    def runner(module: Any, dtype: Any, compile_it: bool) -> Callable[[Feeds], Callable[[], Any]]:
        def make(f: Feeds) -> Callable[[], Any]:
            fn = torch.compile(module, dynamic=False) if compile_it else module
            a = args(f, dtype)

            def call() -> Any:
                with torch.inference_mode():
                    return fn(*a)
            return call
        return make

    for name, precision, dtype in (("unet.pt2", "fp32", torch.float32), ("unet.bf16.pt2", "bf16", torch.bfloat16)):
        if not (export / name).exists():
            continue
        module = torch.export.load(str(export / name)).module()
        out[f"torch eager {precision} ({name})"] = runner(module, dtype, False)
        out[f"torch.compile {precision} ({name})"] = runner(module, dtype, True)
    if use_torchao and (export / "unet.pt2").exists():
        out["torch.compile INT8, all quantised (torchao PT2E, x86)"] = pt2e_int8(export / "unet.pt2", args)
    return out


def pt2e_int8(program: Path, args: Callable[[Feeds, Any], tuple[Any, ...]]) -> Callable[[Feeds], Callable[[], Any]]:
    """torchao's PT2E flow with its x86 inductor quantiser, calibrated on random inputs of the batch size."""
    import torch
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    def make(f: Feeds) -> Callable[[], Any]:
        batch, cond_dim = f["condition"].shape
        example = args(f, torch.float32)
        graph = torch.export.export(torch.export.load(str(program)).module(), example, strict=False).module()
        quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            for seed in range(4):
                prepared(*args(feeds(batch, cond_dim, seed + 1), torch.float32))
        fn = torch.compile(convert_pt2e(prepared), dynamic=False)

        def call() -> Any:
            with torch.no_grad():
                return fn(*example)
        return call
    return make


def markdown(result: dict[str, Any]) -> str:
    lines = [f"`{result['command']}`", "", result["machine"] + f"; torchao {result['torchao'] or 'not installed'}", "",
             "Guided U-Net call (conditional + null branch), ms per call, median of "
             f"{result['repeats']} after warm-up; accuracy is not considered here (see the module doc).", "",
             "| contender | batch | ms p50 | vs ONNX Runtime fp32 | vs torch eager fp32 |", "|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['contender']} | {row['batch']} | {row['ms']:.2f} | {row['vs_ort_fp32']:.2f}x | "
                     f"{row['vs_torch_fp32']:.2f}x |" if row.get("vs_torch_fp32") else
                     f"| {row['contender']} | {row['batch']} | {row['ms']:.2f} | {row['vs_ort_fp32']:.2f}x | n/a |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    from histosmith.data.plots import plt, save_figure

    batches = sorted({r["batch"] for r in result["rows"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 0.4 * len(result["rows"]) + 2), squeeze=False)
    for ax, b in zip(axes[0], batches, strict=True):
        rows = [r for r in result["rows"] if r["batch"] == b]
        ax.barh([r["contender"] for r in rows], [r["vs_ort_fp32"] for r in rows], color="#4c72b0")
        ax.axvline(1.0, color="0.5", lw=0.8)
        ax.axvline(2.0, color="#d95f02", lw=0.8, ls="--", label="INT8 bar: 2x ONNX Runtime fp32")
        ax.set_title(f"batch {b}: speed vs ONNX Runtime fp32", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.invert_yaxis()
        ax.legend(fontsize=7)
    save_figure(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--export", type=Path, required=True)
    p.add_argument("--ranges", type=Path, default=None, help="hs-calibrate's cached activation ranges (JSON).")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import onnx

    from histosmith.runtime.manifest import Manifest

    cond_dim = Manifest.load(args.export).info.spec.dim
    try:
        import torchao

        torchao_version: str | None = torchao.__version__
    except ImportError:
        torchao_version = None
        print("torchao is not installed (pip install -e '.[bench]'): the PT2E INT8 contender is left out",
              file=sys.stderr)
    use_torchao = torchao_version is not None
    with tempfile.TemporaryDirectory() as tmp:
        quantised = all_int8(args.export / "unet.onnx", args.ranges, Path(tmp) / "unet.all-int8.onnx", cond_dim)
        n_qconv = sum(n.op_type == "DequantizeLinear" for n in onnx.load(str(quantised)).graph.node)
        runners = {"ONNX Runtime fp32 (unet.onnx)": ort_runner(args.export / "unet.onnx", args.threads)}
        if (args.export / "unet.int8.onnx").exists():
            runners["ONNX Runtime INT8, gated (unet.int8.onnx)"] = ort_runner(args.export / "unet.int8.onnx",
                                                                            args.threads)
        runners["ONNX Runtime INT8, all quantised"] = ort_runner(quantised, args.threads)
        try:
            import openvino  # noqa: F401

            runners["OpenVINO bf16 (unet.onnx)"] = openvino_runner(args.export / "unet.onnx", args.threads, "bf16")
            runners["OpenVINO INT8, all quantised"] = openvino_runner(quantised, args.threads, "int8")
        except ImportError:
            print("OpenVINO is not installed (pip install -e '.[openvino]'): its contenders are left out",
                  file=sys.stderr)
        runners |= torch_runners(args.export, args.threads, use_torchao)
        rows = []
        for batch in (int(b) for b in args.batches.split(",")):
            f = feeds(batch, cond_dim)
            times = {}
            for name, make in runners.items():
                times[name] = median_ms(make(f), args.repeats)
                gc.collect()  # the timed session goes before the next one starts
            ort_fp32 = times["ONNX Runtime fp32 (unet.onnx)"]
            torch_fp32 = next((v for k, v in times.items() if k.startswith("torch eager fp32")), None)
            for name, ms in times.items():
                rows.append({"contender": name, "batch": batch, "ms": ms, "vs_ort_fp32": ort_fp32 / ms,
                             "vs_torch_fp32": torch_fp32 / ms if torch_fp32 else None})
                print(f"batch {batch:>3}  {ms:8.2f} ms  {ort_fp32 / ms:5.2f}x ORT fp32  {name}", flush=True)
    load = os.getloadavg()[0]
    result = {"command": shlex.join(["python", "benchmarks/int8_ceiling.py", *sys.argv[1:]]),
              "machine": f"{os.uname().machine}, {os.cpu_count()} CPUs, {args.threads} threads, 1-minute load "
                         f"average at the end {load:.1f}; all-INT8 graph: {n_qconv} DequantizeLinear nodes",
              "repeats": args.repeats, "ranges": str(args.ranges) if args.ranges else "random inputs",
              "torchao": torchao_version, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "int8_ceiling.json", result)
    write_text_atomic(args.out / "int8_ceiling.md", markdown(result))
    plot(result, args.out / "int8_ceiling.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
