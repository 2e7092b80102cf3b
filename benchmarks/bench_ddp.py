"""torchrun DDP step time: 2 CPU processes (gloo) against 1 at the same global batch, both stages, one run.

    python benchmarks/bench_ddp.py --data runs/demo/data --config small --steps 40

Step time = the ``seconds`` column of the last ``log.csv`` row (training loop only, after data loading and
latent caching) divided by the steps. Each process uses one thread (OMP_NUM_THREADS=1) so two processes
use the machine's two cores; the single process is measured with one thread and with two.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def train(args: list[str], processes: int, threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [str(BIN / "hs-train"), *args] if processes == 1 else \
        [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={processes}", str(BIN / "hs-train"), *args]
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    out = Path(args[args.index("--out") + 1])
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["seconds"]) / int(rows[-1]["step"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--config", default="small")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ddp_cpu")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        common = ["--data", str(args.data), "--config", args.config, "--max-steps", str(args.steps),
                  "--batch-size", str(args.batch_size)]
        vq = Path(tmp) / "vq-1p1t"
        for stage in ("vqvae", "ldm"):
            extra = ["--vqvae", str(vq)] if stage == "ldm" else []
            times = {}
            for label, procs, threads in (("1p1t", 1, 1), ("1p2t", 1, 2), ("2p1t", 2, 1)):
                times[label] = train([stage, *common, *extra, "--out", str(Path(tmp) / f"{stage[:2]}-{label}")],
                                     procs, threads)
            rows.append({"stage": stage, "step_s_1proc_1thread": round(times["1p1t"], 4),
                         "step_s_1proc_2threads": round(times["1p2t"], 4), "step_s_2proc": round(times["2p1t"], 4),
                         "speedup_vs_1proc_1thread": round(times["1p1t"] / times["2p1t"], 3),
                         "speedup_vs_1proc_2threads": round(times["1p2t"] / times["2p1t"], 3)})
            print(rows[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"config": args.config, "steps": args.steps,
                                                         "global_batch": args.batch_size, "rows": rows}, indent=1))
    lines = [f"`python benchmarks/bench_ddp.py --data {args.data} --config {args.config} --steps {args.steps}` "
             f"(global batch {args.batch_size}, 2 CPU cores)", "",
             "| stage | 1 process, 1 thread s/step | 1 process, 2 threads | 2 processes (DDP, gloo) | 2 proc vs 1p1t "
             "| 2 proc vs 1p2t |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['step_s_1proc_1thread']:.3f} | {r['step_s_1proc_2threads']:.3f} | "
              f"{r['step_s_2proc']:.3f} | {r['speedup_vs_1proc_1thread']:.2f}x | "
              f"{r['speedup_vs_1proc_2threads']:.2f}x |"
              for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
