"""hs-bench's three files: ``bench.json`` (everything), ``bench.md`` (tables), ``bench.png`` (chart)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from histosmith.data.atomic import write_json_atomic, write_text_atomic

STEM = "bench"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def markdown(result: dict[str, Any], command: str) -> str:
    m, o = result["machine"], result["options"]
    lines = [f"`{command}`", "",
             f"{m['processor']}, {m['cpus']} CPUs, {m['threads']} threads, 1-minute load average at the start "
             f"{m['load_average_1m']:.1f}; {o['steps']} DDIM steps; guided U-Net call = conditional + null branch "
             f"(2B batch). Medians over repeats after a warm-up; p95 in the JSON.", "",
             "| contender | batch | U-Net ms p50 | p95 | vs torch fp32 | vs torch bf16 | vs ORT fp32 | GFLOP/s | "
             "of fp32 probe | DDIM update ms | decoder ms | post ms/tile | write ms/tile | tiles/s | "
             "stages-only tiles/s | runtime overhead |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(
            f"| {r['contender']} | {r['batch']} | {r['unet_ms_p50']:.1f} | {r['unet_ms_p95']:.1f} | "
            f"{_x(r['unet_speedup_vs_torch_fp32'])} | {_x(r['unet_speedup_vs_torch_bf16'])} | "
            f"{_x(r['unet_speedup_vs_ort_fp32'])} | {r['gflops_per_s']:.0f} | {r['share_of_fp32_probe']:.0%} | "
            f"{r['ddim_update_ms']:.3f} | {r['decoder_ms_p50']:.1f} | {r['postprocess_ms_per_tile']:.2f} | "
            f"{r['write_ms_per_tile']:.2f} | {r['tiles_per_s']:.2f} | {r['stages_tiles_per_s']:.2f} | "
            f"{r['runtime_overhead']:+.0%} |")
    tiles = {r["batch"]: r["e2e_tiles"] for r in result["rows"]}
    fixed = sorted(r["dataset_fixed_ms"] for r in result["rows"])
    lines += ["", "End to end: the runtime's `generate` loop writing a dataset, over "
              + ", ".join(f"{n} tiles at batch {b}" for b, n in sorted(tiles.items()))
              + "; runtime overhead = stages-only tiles/s (U-Net calls + DDIM updates + decoder per batch, "
              "post-processing per tile) / end-to-end tiles/s - 1. Write ms/tile: adding tiles to an open dataset; "
              f"opening and closing one output dataset costs {fixed[len(fixed) // 2]:.1f} ms once per run "
              "(median over contenders)."]
    lines += ["", "FLOPs per guided U-Net call (counted from unet.onnx: Conv + MatMul + Gemm):", ""]
    lines += [f"* batch {b}: {f['total'] / 1e9:.2f} GFLOP (Conv {f['Conv'] / 1e9:.2f}, MatMul {f['MatMul'] / 1e9:.2f})"
              for b, f in result["flops_per_guided_call"].items()]
    lines += ["", "This machine's limit, measured in the same run (one 3x3 convolution; torch/oneDNN unless marked):",
              ""]
    lines += [f"* {p['dtype']}: {p['gflops_per_s']:.0f} GFLOP/s median, {p['best_gflops_per_s']:.0f} best "
              f"({p['shape']})" for p in result["probes"]]
    rate = {p["dtype"]: p["gflops_per_s"] for p in result["probes"]}
    if "ort-int8" in rate and "ort-fp32" in rate:
        lines += ["", f"INT8 / fp32 on ONNX Runtime for that convolution: {rate['ort-int8'] / rate['ort-fp32']:.2f}x "
                  "(what a fully quantised convolution gains here; the U-Net's speed-up is lower by its float "
                  "blocks and its non-convolution time)."]
    for name, prof in result["profiles"].items():
        lines += ["", f"ONNX Runtime profile of {name} at batch {prof['batch']} (kernel time per op type):", "",
                  "| op | ms per call | share |", "|---|---|---|"]
        lines += [f"| {p['op']} | {p['ms_per_call']:.2f} | {p['share']:.0%} |" for p in prof["top_ops"]]
    if result.get("gate"):
        lines += gate_markdown(result)
    lines += ["", f"Peak RSS of the benchmark process: {result['peak_rss_mb']:.0f} MB."]
    return "\n".join(lines) + "\n"


def gate_markdown(result: dict[str, Any]) -> list[str]:
    """The gate table and, per batch, the fastest runtime engine that passes it."""
    from histosmith.benchmark.gate import best_at_gate

    gate = result["gate"]
    lines = ["", f"Quality gate (hs-eval gate's) of every runtime engine at `{gate['sampling']}`: {gate['n']} tiles "
             f"per run against two runs of `{gate['reference']}`; each engine with its own decoder, as hs-generate "
             f"runs it. Every metric in {gate['report']}.", "",
             "| engine | configuration | verdict | failed metrics |", "|---|---|---|---|"]
    for name, g in gate["results"].items():
        verdict = "passes" if g["passed"] else "**fails**"
        lines.append(f"| {name} | `{g['label']}` | {verdict} | {', '.join(g['failed']) or '-'} |")
    lines.append("")
    for batch in sorted({r["batch"] for r in result["rows"]}):
        best = best_at_gate(result["rows"], gate, batch)
        if best is None:
            lines.append(f"* batch {batch}: no runtime engine passes the gate")
            continue
        lines.append(f"* batch {batch}: fastest runtime engine at the gate: {best['contender']}, "
                     f"{best['unet_ms_p50']:.1f} ms per guided call — {_x(best['unet_speedup_vs_torch_fp32'])} torch "
                     f"eager fp32, {_x(best['unet_speedup_vs_torch_bf16'])} torch bf16 autocast, "
                     f"{_x(best['unet_speedup_vs_ort_fp32'])} ONNX Runtime fp32")
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    from histosmith.data.plots import plt, save_figure

    rows = result["rows"]
    names = list(dict.fromkeys(r["contender"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        for ax, key in zip(axes, ("unet_ms_p50", "tiles_per_s"), strict=True):
            vals = [next((r[key] for r in rows if r["contender"] == name and r["batch"] == b), np.nan)
                    for b in batches]
            ax.bar(np.arange(len(batches)) + i * width, vals, width, label=name)
    for ax, label in zip(axes, ("guided U-Net call, ms (lower is better)", "end-to-end tiles/s (higher is better)"),
                         strict=True):
        ax.set_xticks(np.arange(len(batches)) + width * (len(names) - 1) / 2, [f"batch {b}" for b in batches])
        ax.set_yscale("log")
        ax.set_title(label)
    axes[1].legend(fontsize=7)
    save_figure(fig, path)


def write_results(out: Path, result: dict[str, Any], command: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    result = result | {"command": command}
    paths = [out / f"{STEM}.json", out / f"{STEM}.md", out / f"{STEM}.png"]
    write_json_atomic(paths[0], result)
    write_text_atomic(paths[1], markdown(result, command))
    plot(result, paths[2])
    return paths
