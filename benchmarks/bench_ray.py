"""``hs-generate --ray`` with 1 and 2 workers against one process, on this machine, in one run.

    python benchmarks/bench_ray.py --export runs/demo/export --n 128 --steps 20

Every run makes the same tiles (same seed, batch and shards; the outputs are compared byte for byte). The
Ray runs start their own local Ray instance, so their time includes its start-up and each actor's engine
load, as a user sees it. One process uses ONNX Runtime's default threads; each Ray actor one thread.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(args: list[str]) -> float:
    started = time.monotonic()
    result = subprocess.run([str(BIN / "hs-generate"), *args], capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"hs-generate failed: {result.stderr[-2000:]}")
    return time.monotonic() - started


def same_shards(a: Path, b: Path) -> bool:
    shards = sorted(p.name for p in a.glob("shard-*"))
    return shards == sorted(p.name for p in b.glob("shard-*")) and all(
        filecmp.cmp(a / s / f, b / s / f, shallow=False)
        for s in shards for f in ("images.npy", "labels.npy", "counts.csv", "patch_info.csv"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, required=True)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ray_cpu")
    args = ap.parse_args()
    common = ["--engine", str(args.export / "unet.onnx"), "--n", str(args.n), "--steps", str(args.steps),
              "--batch", str(args.batch), "--shard-size", str(args.n // args.shards), "--from-dataset", "--seed", "0"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        single = Path(tmp) / "single"
        base = run([*common, "--out", str(single)])
        rows.append({"run": "one process", "seconds": round(base, 2), "tiles_per_s": round(args.n / base, 3),
                     "vs_one_process": 1.0, "identical": True})
        for workers in (1, 2):
            out = Path(tmp) / f"ray{workers}"
            seconds = run([*common, "--out", str(out), "--ray", "--ray-workers", str(workers), "--threads", "1"])
            rows.append({"run": f"ray, {workers} worker{'s' if workers > 1 else ''}", "seconds": round(seconds, 2),
                         "tiles_per_s": round(args.n / seconds, 3), "vs_one_process": round(base / seconds, 3),
                         "identical": same_shards(single, out)})
            print(rows[-1])
    ray2, ray1 = rows[2]["seconds"], rows[1]["seconds"]
    result = {"n": args.n, "steps": args.steps, "batch": args.batch, "shards": args.shards, "runs": rows,
              "ray_2_vs_1_workers": round(ray1 / ray2, 3)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"`python benchmarks/bench_ray.py --export {args.export} --n {args.n} --steps {args.steps}` "
             f"(2 CPU cores, {args.shards} shards)", "",
             "| run | seconds | tiles/s | vs one process | same bytes |", "|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['seconds']:.1f} | {r['tiles_per_s']:.2f} | {r['vs_one_process']:.2f}x | "
              f"{'yes' if r['identical'] else 'NO'} |" for r in rows]
    lines += ["", f"Ray, 2 workers vs 1: {result['ray_2_vs_1_workers']:.2f}x."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
