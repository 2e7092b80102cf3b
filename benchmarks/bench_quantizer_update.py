"""What the codebook's EMA update costs a VQ training step: one-hot matmul vs scatter-add, A/B in one run.

A ``reference``-sized autoencoder (random weights, random inputs, the preset's batch of 12) runs full
training steps — forward, loss, backward, optimiser, codebook update — alternately with the quantiser's
update as the runtime has it (``bincount`` + ``index_add_``) and as it was (a ``(N, n_codes)`` one-hot
matrix multiplied into the latents); medians per codebook size and their ratio.

    OMP_NUM_THREADS=2 python benchmarks/bench_quantizer_update.py --out benchmarks/results/quantizer_update
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from histosmith.config import vq_config
from histosmith.data.atomic import write_json_atomic, write_text_atomic
from histosmith.models.quantizer import VectorQuantizer
from histosmith.models.vqvae import VQAutoencoder


@torch.no_grad()
def onehot_update(self: VectorQuantizer, flat: torch.Tensor, idx: torch.Tensor) -> None:
    """The former update: per-code counts and sums through a dense one-hot matrix (the rest unchanged)."""
    onehot = F.one_hot(idx, self.n_codes).type_as(flat)
    count = onehot.sum(0)
    self.ema_count.mul_(self.decay).add_(count, alpha=1 - self.decay)
    self.ema_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
    self.usage.mul_(self.decay).add_(count / flat.shape[0], alpha=1 - self.decay)
    n = self.ema_count.sum()
    smoothed = (self.ema_count + self.eps) / (n + self.n_codes * self.eps) * n
    self.codebook.copy_(self.ema_sum / smoothed[:, None])


def step_seconds(model: VQAutoencoder, opt: torch.optim.Optimizer, x: torch.Tensor) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _, commit = model(x)
        loss = (out.image.float() - x[:, :3]).abs().mean() + 0.25 * commit
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codebooks", default="1024,4096")
    ap.add_argument("--latent-channels", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=20, help="Steps per variant and codebook (after 3 warm-up).")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for n_codes in (int(c) for c in args.codebooks.split(",")):
        cfg = dataclasses.replace(vq_config("reference", 3, 64), codebook_size=n_codes,
                                  latent_channels=args.latent_channels)
        model = VQAutoencoder(cfg).train().to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(12, cfg.in_channels, 64, 64).to(memory_format=torch.channels_last)
        quantizer = model.quantizer
        times: dict[str, list[float]] = {"scatter": [], "onehot": []}
        for i in range(args.repeats + 3):
            for name in times:  # alternate A and B so drift hits both
                if name == "onehot":
                    quantizer._update = onehot_update.__get__(quantizer)
                else:
                    quantizer.__dict__.pop("_update", None)
                seconds = step_seconds(model, opt, x)
                if i >= 3:
                    times[name].append(seconds)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        rows.append({"codebook": n_codes, "latent_channels": args.latent_channels, "steps": args.repeats,
                     "onehot_ms": med["onehot"], "scatter_ms": med["scatter"],
                     "speedup": med["onehot"] / med["scatter"]})
    command = "python benchmarks/bench_quantizer_update.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "quantizer_update.json", {"command": command,
                                                           "threads": torch.get_num_threads(), "rows": rows})
    lines = [f"`{command}` ({torch.get_num_threads()} threads)", "",
             "| codebook | latent channels | step, one-hot update (ms) | step, scatter-add update (ms) | speed-up |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['codebook']} | {r['latent_channels']} | {r['onehot_ms']:.1f} | {r['scatter_ms']:.1f} | "
              f"{r['speedup']:.2f}× |" for r in rows]
    write_text_atomic(args.out / "quantizer_update.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
