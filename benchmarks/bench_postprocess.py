"""How much the post-processing alone loses, and what the numpy watershed changes against scikit-image's.

1. Ground-truth maps: for every tile of a dataset, the distance map is computed from the true instances and the
   class map is the true one; ``labels_from_maps`` (the runtime's watershed) turns them back into instances,
   scored with the CoNIC metrics against the truth. A perfect post-processing scores PQ = mPQ+ = 1.
2. Generated maps (``--generated N``): the decoder's maps of N tiles of a generator (default: the shipped model)
   labelled both ways.

Each set is labelled twice, by the runtime (numpy, runtime/morphology.py) and by scipy + scikit-image (the
implementation before it), and the report gives both scores, the tiles whose nucleus counts per class are the
same, the share of pixels labelled differently, and milliseconds per tile of each.

    python benchmarks/bench_postprocess.py --data runs/example --generated 512
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histosmith.data.atomic import write_json_atomic, write_text_atomic
from histosmith.data.labels import count_nuclei
from histosmith.data.rasters import distance_map
from histosmith.data.reader import Dataset
from histosmith.evaluation.conic import ConicAccumulator
from histosmith.evaluation.watershed_reference import scikit_image_morphology
from histosmith.runtime import generate as runtime_generate
from histosmith.runtime.postprocess import WATERSHED, PostprocessConfig, labels_from_maps

IMPLEMENTATIONS = (WATERSHED, "scikit-image")


@dataclass
class Comparison:
    """Labels of one set of maps by both implementations."""

    n_classes: int
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(IMPLEMENTATIONS, 0.0))
    tiles: int = 0
    same_counts: int = 0
    identical: int = 0
    differing_pixels: int = 0
    pixels: int = 0

    def label(self, maps: list[tuple[np.ndarray, np.ndarray]], post: PostprocessConfig) -> list[np.ndarray]:
        """Both labellings of ``maps``; returns the runtime's."""
        started = time.perf_counter()
        ours = [labels_from_maps(d, c, self.n_classes, post) for d, c in maps]
        self.seconds[WATERSHED] += time.perf_counter() - started
        started = time.perf_counter()
        with scikit_image_morphology():
            theirs = [labels_from_maps(d, c, self.n_classes, post) for d, c in maps]
        self.seconds["scikit-image"] += time.perf_counter() - started
        for a, b in zip(ours, theirs, strict=True):
            self.tiles += 1
            self.same_counts += bool(np.array_equal(count_nuclei(a, self.n_classes), count_nuclei(b, self.n_classes)))
            self.identical += bool(np.array_equal(a, b))
            self.differing_pixels += int((a != b).any(-1).sum())
            self.pixels += a.shape[0] * a.shape[1]
        self.theirs = theirs
        return ours

    def record(self) -> dict[str, object]:
        return {"tiles": self.tiles, "same_counts": self.same_counts, "identical": self.identical,
                "differing_pixel_share": self.differing_pixels / max(self.pixels, 1),
                "ms_per_tile": {k: 1e3 * v / max(self.tiles, 1) for k, v in self.seconds.items()}}


def ground_truth(data: Path, post: PostprocessConfig) -> dict[str, object]:
    ds = Dataset.open(data)
    names = ds.meta.class_names
    comparison = Comparison(len(names))
    scores = {k: ConicAccumulator(names, ds.meta.count_margin) for k in IMPLEMENTATIONS}
    for _, _, labels in ds.iter_shards():
        truth = [np.asarray(lab, dtype=np.int32) for lab in labels]
        ours = comparison.label([(distance_map(t[..., 0]), t[..., 1]) for t in truth], post)
        for t, a, b in zip(truth, ours, comparison.theirs, strict=True):
            scores[WATERSHED].add(t, a)
            scores["scikit-image"].add(t, b)
    return {"data": str(data), "class_names": names, **comparison.record(),
            "conic": {k: acc.result().to_dict() for k, acc in scores.items()}}


def generated(engine: str | None, n: int, post: PostprocessConfig, seed: int) -> dict[str, object]:
    """The decoder's maps of ``n`` tiles (conditions drawn from the model's training distribution)."""
    from histosmith import Generator

    gen = Generator.from_pretrained(engine)
    comparison = Comparison(len(gen.class_names))
    keep = runtime_generate.decode_labels

    def both(decoded, n_classes, _post):
        classes = decoded.semantic.argmax(axis=1)
        return comparison.label([(decoded.distance[b, 0], classes[b]) for b in range(len(classes))], post)

    runtime_generate.decode_labels = both
    try:
        gen.generate(n, seed=seed, balance=False)
    finally:
        runtime_generate.decode_labels = keep
    return {"engine": gen.name, "seed": seed, **comparison.record()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="A prepared dataset (all its tiles are used).")
    ap.add_argument("--generated", type=int, default=0, metavar="N", help="Also label N generated tiles both ways.")
    ap.add_argument("--engine", default=None, help="Generator for --generated (default: the shipped model).")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/postprocess_example"),
                    help="Writes OUT.json and OUT.md.")
    args = ap.parse_args()
    post = PostprocessConfig()
    report = {"postprocess": post.record(), "ground_truth": ground_truth(args.data, post)}
    if args.generated:
        report["generated"] = generated(args.engine, args.generated, post, seed=0)
    write_json_atomic(args.out.with_suffix(".json"), report)
    write_text_atomic(args.out.with_suffix(".md"), markdown(report, "python benchmarks/bench_postprocess.py "
                                                                     + " ".join(sys.argv[1:])))
    print(json.dumps(report, indent=2))


def markdown(report: dict, command: str) -> str:
    gt = report["ground_truth"]
    names = gt["class_names"]
    rows = [f"`{command}`", "", f"Ground-truth maps of `{gt['data']}` ({gt['tiles']} tiles), CoNIC metrics against "
            "the truth:", "", "| watershed | PQ | mPQ+ | AJI | " + " | ".join(f"PQ {n}" for n in names) + " |",
            "|---" * (4 + len(names)) + "|"]
    for impl in IMPLEMENTATIONS:
        r = gt["conic"][impl]
        rows.append(f"| {impl} | {r['pq']:.4f} | {r['mpq_plus']:.4f} | {r['aji']:.4f} | "
                    + " | ".join(f"{r['per_class'][n]['pq']:.4f}" for n in names) + " |")
    rows += ["", "The two implementations on the same maps:", "",
             "| maps | tiles | same counts per class | identical labels | pixels labelled differently | "
             f"ms/tile {WATERSHED} | ms/tile scikit-image |", "|---|---|---|---|---|---|---|"]
    for name, r in (("ground truth", gt), ("generated", report.get("generated"))):
        if r:
            ms = r["ms_per_tile"]
            rows.append(f"| {name} | {r['tiles']} | {r['same_counts']} | {r['identical']} | "
                        f"{r['differing_pixel_share']:.2e} | {ms[WATERSHED]:.2f} | {ms['scikit-image']:.2f} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
