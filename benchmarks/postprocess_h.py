"""The watershed's marker depth ``h`` chosen by measurement: merged nuclei vs split ones, on generated and
real maps.

Generates tiles once (conditions drawn from the real dataset, fixed seeds) and keeps the decoder's distance
and class maps; then, for every ``h``, turns them into instances with the runtime's post-processing and
measures what the user sees: Pearson r of measured against requested counts per class, the generated
nuclei's median area against the real ones' and the share larger than the real 99th-percentile area (merged
nuclei). The same ``h`` is also applied to the real tiles' true distance maps (CoNIC PQ of the round trip),
so a value that splits generated blobs by cutting real irregular nuclei in two shows up as a lower PQ; with
``--vqvae RUN`` also to the same real tiles' reconstructions by that autoencoder (what ``hs-eval vqvae`` judges
a marker depth on: reconstructed maps merge touching nuclei much as generated ones do).

    python benchmarks/postprocess_h.py --engine runs/reference/export/unet.onnx --data runs/reference/data \
        --out benchmarks/results/postprocess_h_reference
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from histosmith.data.atomic import write_json_atomic, write_text_atomic
from histosmith.data.labels import count_nuclei, instance_classes, touching_instances
from histosmith.data.rasters import distance_map
from histosmith.data.reader import Dataset
from histosmith.evaluation.conic import ConicAccumulator
from histosmith.evaluation.realism import NucleusTable, collect, nucleus_features, spread
from histosmith.runtime import conditions as cond
from histosmith.runtime.engine import EngineOptions, open_engine
from histosmith.runtime.generate import to_uint8
from histosmith.runtime.postprocess import MarkerDepth, PostprocessConfig, labels_from_maps, marker_depth_label
from histosmith.runtime.schedule import Scheduler
from histosmith.runtime.seeds import tile_noise


def generated_maps(engine: Path, data: Dataset, n: int, steps: int, guidance: float, batch: int):  # noqa: ANN201
    """Requested counts (N, K), uint8 images, distance maps and class-id maps of ``n`` generated tiles."""
    session = open_engine(engine, EngineOptions(batch=batch))
    info = session.info
    table = cond.from_dataset(info, n, 0)
    tables = Scheduler(info.schedule).set_timesteps(steps, 0.0)
    backend = session.backend(tables)
    vectors = info.spec.vectors(table.counts, table.tissues)
    images, distances, classes = [], [], []
    for start in tqdm(range(0, n, batch), desc="generate", unit="batch"):
        index = np.arange(start, min(start + batch, n))
        latents, noise = tile_noise(0, index, info.latent_shape, tables.num_steps, tables.stochastic, 0)
        decoded = backend.sample(latents, vectors[index], np.full(len(index), guidance, np.float32), noise)
        images += [to_uint8(im) for im in decoded.image]
        distances += list(decoded.distance[:, 0])
        classes += list(decoded.semantic.argmax(axis=1))
    backend.close()
    return table.counts, images, distances, classes


def reconstructed_maps(vqvae: Path, data: Path, index: list[int], batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(distance map, class-id map) of the autoencoder's reconstruction of each real tile in ``index``."""
    import torch

    from histosmith.training.data import TileStore
    from histosmith.training.vqvae import load_vqvae

    model, _ = load_vqvae(vqvae)
    store = TileStore.load(data, None, show_progress=False)
    maps = []
    with torch.no_grad():
        for start in tqdm(range(0, len(index), batch), desc="reconstruct", unit="batch"):
            out, _, _ = model(store.inputs(np.asarray(index[start:start + batch])))
            maps += list(zip(out.distance[:, 0].numpy(), out.logits.argmax(1).numpy(), strict=True))
    return maps


def touching(labels: list[np.ndarray], k: int) -> np.ndarray:
    """(K, 2): per class, nuclei that touch another nucleus (8-neighbourhood) and all nuclei."""
    out = np.zeros((k, 2), dtype=np.int64)
    for lab in labels:
        inst = np.asarray(lab[..., 0])
        classes = instance_classes(inst, np.asarray(lab[..., 1]), k)
        present = np.bincount(inst.ravel().astype(np.int64), minlength=len(classes)) > 0
        present[0] = False
        touched = touching_instances(inst)
        for c in range(k):
            of_class = present & (classes == c + 1)
            out[c] += (int(touched[of_class].sum()), int(of_class.sum()))
    return out


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    return float(np.corrcoef(x, y)[0, 1]) if np.std(x) > 0 and np.std(y) > 0 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", type=Path, required=True, help="EXPORT/unet.onnx (or another engine)")
    ap.add_argument("--data", type=Path, required=True, help="The real dataset the generator was trained on.")
    ap.add_argument("--h", default="0.1,0.15,0.2,0.25,0.3,0.4,0.5",
                    help="Marker depths to compare: numbers (0.1,0.2), or --marker-depth texts separated by ';' "
                         "(0.25;0.25,neoplastic=0.1;0.25,neoplastic>360).")
    ap.add_argument("--n", type=int, default=256, help="Generated tiles.")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--real-tiles", type=int, default=500, help="Real tiles (spread over the dataset).")
    ap.add_argument("--vqvae", type=Path, default=None,
                    help="The generator's autoencoder run: also score each setting on its reconstructions of the "
                         "real tiles.")
    ap.add_argument("--out", type=Path, required=True, help="Writes OUT.json and OUT.md.")
    args = ap.parse_args()
    hs = [MarkerDepth.parse(v) for v in args.h.split(";" if any(c in args.h for c in ";=>") else ",")]
    real = Dataset.open(args.data)
    names, k, margin = list(real.meta.class_names), real.meta.n_classes, real.meta.count_margin
    real_nuclei, _ = collect(real, args.real_tiles)
    p99 = [np.percentile(real_nuclei.of(c + 1, "area"), 99) for c in range(k)]
    median = [np.median(real_nuclei.of(c + 1, "area")) for c in range(k)]
    chosen = set(spread(len(real), args.real_tiles).tolist())
    truth = [np.asarray(lab, np.int32) for i, lab in enumerate(lab for _, _, ls in real.iter_shards() for lab in ls)
             if i in chosen]
    real_touch = touching(truth, k)
    recon = reconstructed_maps(args.vqvae, args.data, sorted(chosen), args.batch) if args.vqvae else []
    requested, images, distances, classes = generated_maps(args.engine, real, args.n, args.steps, args.guidance,
                                                           args.batch)
    rows = []
    for h in tqdm(hs, desc="h", unit="value"):
        post = h.config(names)
        table, measured, generated = NucleusTable(), [], []
        for image, dist, cls in zip(images, distances, classes, strict=True):
            labels = labels_from_maps(dist, cls, k, post)
            generated.append(labels)
            measured.append(count_nuclei(labels, k, margin))
            nucleus_features(image, labels, k, table)
        gen_touch = touching(generated, k)
        measured_arr = np.stack(measured)
        acc = ConicAccumulator(names, margin)
        for lab in truth:
            acc.add(lab, labels_from_maps(distance_map(lab[..., 0]), lab[..., 1], k, post))
        gt = acc.result()
        row = {"h": marker_depth_label(post, names), "real_roundtrip_pq": gt.pq,
               "real_roundtrip_mpq_plus": gt.mpq_plus, "classes": {}}
        if recon:
            acc = ConicAccumulator(names, margin)
            for lab, (dist, cls) in zip(truth, recon, strict=True):
                acc.add(lab, labels_from_maps(dist, cls, k, post))
            rt = acc.result()
            row |= {"vqvae_roundtrip_pq": rt.pq, "vqvae_roundtrip_mpq_plus": rt.mpq_plus,
                    "vqvae_roundtrip_class_pq": {n: v["pq"] for n, v in rt.per_class.items()}}
        for c, name in enumerate(names):
            area = table.of(c + 1, "area")
            row["classes"][name] = {
                "r": pearson(requested[:, c].astype(float), measured_arr[:, c].astype(float)),
                "mae": float(np.abs(requested[:, c] - measured_arr[:, c]).mean()),
                "median_area_ratio": float(np.median(area) / median[c]) if len(area) else None,
                "share_above_real_p99_area": float((area > p99[c]).mean()) if len(area) else None,
                "nuclei": len(area), "real_roundtrip_pq": gt.per_class[name]["pq"],
                "share_touching": float(gen_touch[c, 0] / max(gen_touch[c, 1], 1)),
                "real_share_touching": float(real_touch[c, 0] / max(real_touch[c, 1], 1))}
        rows.append(row)
    command = "python benchmarks/postprocess_h.py " + " ".join(sys.argv[1:])
    report = {"command": command, "engine": str(args.engine), "data": str(args.data),
              "vqvae": str(args.vqvae) if args.vqvae else None, "n_generated": args.n,
              "steps": args.steps, "guidance": args.guidance, "real_tiles": len(truth),
              "default_h": PostprocessConfig().h, "rows": rows}
    write_json_atomic(args.out.with_suffix(".json"), report)

    def fmt(v: float | None, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    head = "| h | real round-trip PQ | " + " | ".join(
        f"{n}: r / MAE / area ratio / > real p99" for n in names) + " |"
    lines = [f"`{command}`", "",
             f"{args.n} generated tiles (conditions drawn from the real data, {args.steps} DDIM steps, guidance "
             f"{args.guidance}); {len(truth)} real tiles for the area reference and the round trip. Default h = "
             f"{PostprocessConfig().h}.", "", head, "|---" * (2 + k) + "|"]
    for row in rows:
        cells = [f"{fmt(e['r'], '.3f')} / {e['mae']:.2f} / {fmt(e['median_area_ratio'], '.2f')} / "
                 f"{fmt(e['share_above_real_p99_area'], '.1%')}" for e in row["classes"].values()]
        lines.append(f"| {row['h']} | {row['real_roundtrip_pq']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "Share of nuclei touching another nucleus (8-neighbourhood), generated at each h; real "
              "(true labels): "
              + ", ".join(f"{n} {rows[0]['classes'][n]['real_share_touching']:.1%}" for n in names) + ".", "",
              "| h | " + " | ".join(names) + " |", "|---" * (1 + k) + "|"]
    lines += [f"| {row['h']} | " + " | ".join(f"{e['share_touching']:.1%}" for e in row["classes"].values()) + " |"
              for row in rows]
    if recon:
        lines += ["", f"Autoencoder round trip ({args.vqvae}): the same real tiles reconstructed, instances re-derived "
                  "at each setting, CoNIC PQ against their true labels.", "",
                  "| h | PQ | mPQ+ | " + " | ".join(f"PQ {n}" for n in names) + " |", "|---" * (3 + k) + "|"]
        lines += [f"| {row['h']} | {row['vqvae_roundtrip_pq']:.3f} | {row['vqvae_roundtrip_mpq_plus']:.3f} | "
                  + " | ".join(f"{v:.3f}" for v in row["vqvae_roundtrip_class_pq"].values()) + " |" for row in rows]
    write_text_atomic(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
