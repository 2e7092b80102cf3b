"""TorchScript vs torch.export (ExportedProgram) vs AOTInductor as the torch engine, measured on this CPU.

For each engine kind, on one config with random weights (``benchmarks/random_models.py``): does it run
in fp32 / bf16 / fp16 when loaded that way, its largest error against the live module in the same dtype,
how many device constants its graph carries (each one breaks the engine on another device), export time,
file size, load time and guided U-Net ms per call (median) at each batch. One run, so ratios are fair.

    python benchmarks/bench_torch_engine.py --preset small --batches 1,16 --repeats 5 --aoti
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from random_models import random_models

from histosmith.export.torch_export import cast_inputs, export_program, save_program
from histosmith.runtime.backends.torch_program import DTYPES, device_constants, load_program
from histosmith.runtime.specs import unet_spec


def time_call(fn, args, warmup: int = 2) -> float:  # noqa: ANN001
    """Seconds of one call after ``warmup`` calls (TorchScript's profiling executor optimises late)."""
    with torch.no_grad():
        for _ in range(warmup):
            fn(*args)
        start = time.perf_counter()
        fn(*args)
    return time.perf_counter() - start


def rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref.float()).abs().max() / ref.float().abs().max())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--aoti", action="store_true", help="also compile an AOTInductor package (minutes)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/torch_engine_cpu"))
    args = ap.parse_args()
    models = random_models(args.preset)
    spec = unet_spec(models.latent_shape, models.cond_dim)
    batches = [int(b) for b in args.batches.split(",")]

    def example(batch: int) -> tuple[torch.Tensor, ...]:
        lat, cond, g = models.inputs(batch)
        t = torch.linspace(999, 1, batch) if batch > 1 else torch.tensor([500.0])
        return torch.from_numpy(lat), t, torch.from_numpy(cond), torch.from_numpy(g)

    rows: list[dict] = []
    engines: list[tuple[dict, object]] = []  # (row, callable) of every engine that runs
    tmp = Path(tempfile.mkdtemp())

    def add(kind: str, precision: str, fn, extra: dict) -> None:  # noqa: ANN001
        live = copy.deepcopy(models.guided).to(DTYPES[precision])
        row = {"engine": kind, "precision": precision} | extra
        try:
            ex = cast_inputs(spec, example(3), DTYPES[precision])
            with torch.no_grad():
                row["rel_error_vs_live"] = rel_error(fn(*ex), live(*ex))
            row["runs"] = True
            if precision != "fp16":  # no fp16 arithmetic on this CPU: its timings mean nothing
                engines.append((row, fn))
        except Exception as exc:  # the point: record how an engine fails in this precision
            row["runs"], row["error"] = False, str(exc).strip().splitlines()[-1][:200]
        rows.append(row)
        print(json.dumps(row), flush=True)

    # TorchScript: traced in fp32 and cast after loading (what hs-export shipped), and traced per dtype.
    start = time.perf_counter()
    with torch.no_grad():
        traced = torch.jit.trace(models.guided, example(3), check_trace=False)
    ts_export = time.perf_counter() - start
    torch.jit.save(traced, str(tmp / "unet.pt"))
    for precision in DTYPES:
        start = time.perf_counter()
        loaded = torch.jit.load(str(tmp / "unet.pt")).eval().to(DTYPES[precision])
        add("torchscript (fp32 trace, cast)", precision, loaded,
            {"device_constants": len(device_constants(loaded.inlined_graph)), "export_s": ts_export,
             "load_s": time.perf_counter() - start, "mb": (tmp / "unet.pt").stat().st_size / 2**20})
    typed = copy.deepcopy(models.guided).to(torch.bfloat16)
    start = time.perf_counter()
    with torch.no_grad():
        traced = torch.jit.trace(typed, cast_inputs(spec, example(3), torch.bfloat16), check_trace=False)
    add("torchscript (traced in bf16)", "bf16", traced,
        {"device_constants": len(device_constants(traced.inlined_graph)), "export_s": time.perf_counter() - start})

    for precision in DTYPES:
        start = time.perf_counter()
        program = export_program(models.guided, spec, example(3), precision, 256)
        export_s = time.perf_counter() - start
        path = tmp / f"unet.{precision}.pt2"
        save_program(program, path)
        start = time.perf_counter()
        module = load_program(path, "cpu", precision)
        add("torch.export program", precision, module,
            {"device_constants": len(device_constants(program.graph)), "export_s": export_s,
             "load_s": time.perf_counter() - start, "mb": path.stat().st_size / 2**20})
        if args.aoti and precision == "fp32":
            start = time.perf_counter()
            package = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp / "unet.aoti.pt2"))
            compile_s = time.perf_counter() - start
            start = time.perf_counter()
            compiled = torch._inductor.aoti_load_package(package)
            add("AOTInductor package (built for this CPU)", precision, compiled,
                {"export_s": export_s + compile_s, "load_s": time.perf_counter() - start,
                 "mb": Path(package).stat().st_size / 2**20})

    # Timing interleaved over engines, round after round: load from other processes hits all alike.
    for b in batches:
        samples: dict[int, list[float]] = {i: [] for i in range(len(engines))}
        for _ in range(args.repeats):
            for i, (row, fn) in enumerate(engines):
                samples[i].append(time_call(fn, cast_inputs(spec, example(b), DTYPES[row["precision"]])))
        for i, (row, _) in enumerate(engines):
            row[f"ms_batch_{b}"] = 1000 * statistics.median(samples[i])
            print(row["engine"], row["precision"], b, f"{row[f'ms_batch_{b}']:.1f} ms", flush=True)

    result = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "preset": args.preset,
              "threads": torch.get_num_threads(), "repeats": args.repeats, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    cols = [f"ms_batch_{b}" for b in batches]
    lines = [f"Torch engine kinds, `{args.preset}` guided U-Net, random weights, CPU ({torch.get_num_threads()} "
             f"threads), torch {torch.__version__}, {result['date']}; ms per guided call, median of {args.repeats}",
             "", "| engine | precision | runs | rel. error vs live | device constants | export s | load s | MB | "
             + " | ".join(f"ms batch {b}" for b in batches) + " | note |",
             "|---" * (8 + len(batches)) + "|---|"]

    def f(v: object, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    for r in rows:
        lines.append(f"| {r['engine']} | {r['precision']} | {'yes' if r['runs'] else 'no'} | "
                     f"{f(r.get('rel_error_vs_live'), '.1e')} | {f(r.get('device_constants'), 'd')} | "
                     f"{f(r.get('export_s'), '.1f')} | {f(r.get('load_s'), '.2f')} | {f(r.get('mb'), '.1f')} | "
                     + " | ".join(f(r.get(c), ".1f") for c in cols) + f" | {r.get('error', '')[:90]} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
