"""How much the post-processing alone loses: ground-truth maps in, instances out, CoNIC metrics against
the ground truth.

For every tile of a dataset, the distance map is computed from the true instances and the class map is the
true one; ``labels_from_maps`` (the runtime's watershed) turns them back into instances. A perfect
post-processing scores PQ = mPQ+ = 1; what is missing is the share it loses on real nucleus shapes.

    python benchmarks/bench_postprocess.py --data runs/demo/data --out benchmarks/results/postprocess_example
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from histosmith.data.atomic import write_json_atomic, write_text_atomic
from histosmith.data.labels import distance_map
from histosmith.data.reader import Dataset
from histosmith.evaluation.conic import ConicAccumulator
from histosmith.runtime.postprocess import PostprocessConfig, labels_from_maps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="A prepared dataset (all its tiles are used).")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/postprocess_example"),
                    help="Writes OUT.json and OUT.md.")
    args = ap.parse_args()
    ds = Dataset.open(args.data)
    names = ds.meta.class_names
    post = PostprocessConfig()
    acc = ConicAccumulator(names, ds.meta.count_margin)
    started = time.monotonic()
    for _, _, labels in ds.iter_shards():
        for lab in labels:
            lab = np.asarray(lab, dtype=np.int32)
            acc.add(lab, labels_from_maps(distance_map(lab[..., 0]), lab[..., 1], len(names), post))
    result = acc.result()
    report = {"data": str(args.data), "n_tiles": len(ds), "postprocess": asdict(post), **result.to_dict(),
              "seconds": round(time.monotonic() - started, 1)}
    write_json_atomic(args.out.with_suffix(".json"), report)
    command = "python benchmarks/bench_postprocess.py " + " ".join(sys.argv[1:])
    rows = [f"`{command}`", "", "| tiles | PQ | mPQ+ | " + " | ".join(f"PQ {n}" for n in names) + " |",
            "|---" * (3 + len(names)) + "|",
            f"| {len(ds)} | {result.pq:.3f} | {result.mpq_plus:.3f} | "
            + " | ".join(f"{result.per_class[n]['pq']:.3f}" for n in names) + " |", ""]
    write_text_atomic(args.out.with_suffix(".md"), "\n".join(rows))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
