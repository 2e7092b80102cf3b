"""Peak memory of ``hs-generate`` as N grows: it must stay flat (tiles stream to shards on disk).

Each N runs in a fresh child process; its peak RSS comes from ``getrusage(RUSAGE_CHILDREN)``. DDIM steps
are few on purpose: memory does not depend on them, wall time does.

    python benchmarks/bench_memory.py --export runs/demo/export --n 1000,10000 --steps 2
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def run_child(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of one child process."""
    code = ("import resource, subprocess, sys, time; t = time.time(); "
            "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, time.time() - t, r.returncode)")
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True).stdout.split()
    if out[2] != "0":
        raise SystemExit(f"hs-generate failed: {' '.join(cmd)}")
    return float(out[0]), float(out[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", type=Path, required=True)
    ap.add_argument("--n", default="1000,10000")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/memory_cpu"))
    args = ap.parse_args()
    exe = str(Path(sys.executable).parent / "hs-generate")
    rows = []
    for n in (int(x) for x in args.n.split(",")):
        work = Path(tempfile.mkdtemp(prefix="hs-mem-"))
        try:
            cmd = [exe, "--engine", str(args.export / "unet.onnx"), "--n", str(n), "--steps", str(args.steps),
                   "--batch", str(args.batch), "--from-dataset", "--out", str(work / "gen")]
            rss, seconds = run_child(cmd)
            size = sum(p.stat().st_size for p in (work / "gen").rglob("*") if p.is_file()) / 2**20
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rows.append({"n": n, "peak_rss_mb": round(rss, 1), "seconds": round(seconds, 1),
                     "dataset_mb": round(size, 1)})
        print(json.dumps(rows[-1]), flush=True)
    result = {"command": "python benchmarks/bench_memory.py " + " ".join(sys.argv[1:]), "rows": rows,
              "self_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"`{result['command']}`", "", "| tiles | peak RSS (MB) | dataset on disk (MB) | seconds |",
             "|---|---|---|---|"]
    lines += [f"| {r['n']} | {r['peak_rss_mb']} | {r['dataset_mb']} | {r['seconds']} |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
