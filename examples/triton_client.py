"""Ask a running ``hs-serve`` (or ``tritonserver`` on an ``hs-export --triton-repo`` repository) for tiles.

    hs-serve --export runs/demo/export --port 8000 &
    python examples/triton_client.py --url 127.0.0.1:8000 --counts 3,5,2 --tissue stroma --n 8 --out tiles.npz

Each tile is one row of the request: counts per class (in the manifest's class order), tissue name, seed
and tile index; tile ``(seed, i)`` equals tile ``i`` of ``hs-generate --seed seed``. Only ``tritonclient``
and numpy are needed on the client side.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tritonclient.http as http

OUTPUTS = ("image", "instance", "class", "counts")


def request_tiles(client: http.InferenceServerClient, counts: np.ndarray, tissues: list[str], seeds: np.ndarray,
                  indices: np.ndarray, steps: int | None = None, guidance: float | None = None,
                  model: str = "histosmith") -> dict[str, np.ndarray]:
    """One request for ``len(counts)`` tiles; returns image (B, H, W, 3) uint8, instance and class maps
    (B, H, W) int32 and measured counts (B, K) int32. Raises tritonclient's InferenceServerException with
    the server's message for a bad request."""
    n = len(counts)
    arrays = [("counts", np.asarray(counts, np.int32).reshape(n, -1), "INT32"),
              ("tissue", np.array([[t.encode()] for t in tissues], dtype=object), "BYTES"),
              ("seed", np.asarray(seeds, np.int64).reshape(n, 1), "INT64"),
              ("index", np.asarray(indices, np.int64).reshape(n, 1), "INT64")]
    if steps is not None:
        arrays.append(("steps", np.full((n, 1), steps, np.int32), "INT32"))
    if guidance is not None:
        arrays.append(("guidance", np.full((n, 1), guidance, np.float32), "FP32"))
    inputs = []
    for name, value, dtype in arrays:
        tensor = http.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    result = client.infer(model, inputs, outputs=[http.InferRequestedOutput(o, binary_data=True) for o in OUTPUTS])
    return {name: result.as_numpy(name) for name in OUTPUTS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="127.0.0.1:8000")
    ap.add_argument("--counts", required=True, help="comma-separated nuclei per class, manifest class order")
    ap.add_argument("--tissue", required=True)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--out", type=Path, default=Path("tiles.npz"))
    args = ap.parse_args()
    counts = np.array([int(c) for c in args.counts.split(",")])
    client = http.InferenceServerClient(args.url)
    tiles = request_tiles(client, np.tile(counts, (args.n, 1)), [args.tissue] * args.n, np.full(args.n, args.seed),
                          np.arange(args.n), args.steps, args.guidance)
    np.savez_compressed(args.out, **tiles)
    print(f"{args.n} tiles -> {args.out}; measured counts per tile:\n{tiles['counts']}")


if __name__ == "__main__":
    main()
