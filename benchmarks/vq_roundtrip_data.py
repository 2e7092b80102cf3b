"""How much of the synthetic tiles' gap is the autoencoder's? Real tiles through the VQ autoencoder, real labels.

Writes a dataset whose images are the VQ reconstructions of a seeded subset of a real dataset's ``train`` tiles
and whose labels are those tiles' true labels: what the generator's images could look like at best (its
decoder draws them) with labels that are right by construction. Train the downstream segmenter on it alone
(``hs-eval downstream --synthetic OUT --arms real,synthetic``) and compare with the generated tiles: if the
round-trip images alone already train a poor segmenter, the autoencoder's image fidelity bounds what synthetic
data can give; if they train a good one, the gap is the diffusion model's.

    python benchmarks/vq_roundtrip_data.py --checkpoint runs/reference/vqvae --data runs/reference/data \
        --n 300 --out runs/vq_roundtrip/data
    python benchmarks/vq_roundtrip_data.py ... --original --out runs/vq_roundtrip/original  # the tiles as they are
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from histosmith.data.meta import DatasetMeta
from histosmith.data.reader import Dataset
from histosmith.data.writer import DatasetWriter
from histosmith.training.data import TileStore
from histosmith.training.vqvae import load_vqvae


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="An hs-train vqvae run.")
    ap.add_argument("--data", type=Path, required=True, help="The real dataset (its train split is used).")
    ap.add_argument("--n", type=int, default=300, help="Tiles (a seeded subset of the train split).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--original", action="store_true",
                    help="Write the same tiles' original images instead (the control arm: same tiles, same labels).")
    ap.add_argument("--out", type=Path, required=True, help="A new dataset directory.")
    args = ap.parse_args()
    model, _ = load_vqvae(args.checkpoint)
    real = Dataset.open(args.data)
    store = TileStore.load(args.data, "train", show_progress=False)
    chosen = np.sort(np.random.default_rng(args.seed).permutation(len(store))[: args.n])
    rm = real.meta
    meta = DatasetMeta(class_names=list(rm.class_names), tissue_names=list(rm.tissue_names), tile_size=rm.tile_size,
                       count_margin=rm.count_margin,
                       source=f"{args.n} train tiles of {args.data} (seed {args.seed}), true labels, "
                       + ("original images" if args.original else f"images reconstructed by {args.checkpoint}"))
    writer = DatasetWriter(args.out, meta)
    for start in tqdm(range(0, len(chosen), 32), desc="VQ round trip", unit="batch"):
        index = chosen[start:start + 32]
        if args.original:
            rgb = store.images[index]
        else:
            out, _, _ = model(store.inputs(index))
            rgb = np.clip(np.round((out.image.numpy().transpose(0, 2, 3, 1) + 1) * 127.5), 0, 255).astype(np.uint8)
        for k, tile in enumerate(index):
            labels = np.stack([store.instances[tile], store.classes[tile]], axis=-1).astype(np.int32)
            tissue = rm.tissue_names[store.tissues[tile]] if store.tissues[tile] >= 0 else ""
            writer.add(rgb[k], labels, {"patch_info": f"vq-{int(tile):05d}", "tissue": tissue})
    writer.close()
    print(f"wrote {len(chosen)} tiles to {args.out}")


if __name__ == "__main__":
    main()
