"""Where a U-Net's FLOPs are: the guided call's Conv / MatMul / Gemm work per top-level block (the blocks
``hs-calibrate`` quantises or keeps float), counted from the graph.

    python benchmarks/block_flops.py --export runs/reference/export --out benchmarks/results/block_flops_reference
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from histosmith.benchmark.flops import node_flops
from histosmith.calibration.sensitivity import block_of
from histosmith.data.atomic import write_json_atomic, write_text_atomic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=16, help="tiles per guided call (the graph runs 2x this)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    graph = args.export / "unet.onnx"
    if not graph.is_file():
        sys.exit(f"error: {graph}: not found")
    per_block: dict[str, int] = {}
    for node, flops in node_flops(graph, args.batch):
        per_block[block_of(node.name)] = per_block.get(block_of(node.name), 0) + flops
    total = sum(per_block.values())
    rows = [{"block": b, "gflop": f / 1e9, "share": f / total} for b, f in per_block.items()]
    command = "python " + " ".join(sys.argv)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "block_flops.json", {"command": command, "graph": str(graph), "batch": args.batch,
                                                     "total_gflop": total / 1e9, "blocks": rows})
    lines = [f"`{command}`", "", f"FLOPs of one guided U-Net call at batch {args.batch} ({total / 1e9:.2f} GFLOP: "
             "Conv + MatMul + Gemm, counted from unet.onnx), per top-level block:", "",
             "| block | GFLOP | share |", "|---|---|---|"]
    lines += [f"| {r['block']} | {r['gflop']:.2f} | {r['share']:.1%} |" for r in rows]
    write_text_atomic(args.out / "block_flops.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
