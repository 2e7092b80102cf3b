"""Does the decoder's ONNX Runtime session spin-waiting slow generation? End-to-end tiles/s, A/B in one run.

Two ONNX Runtime backends of the same export, identical but for the decoder session's
``session.intra_op.allow_spinning`` (the runtime's setting: off; the ONNX Runtime default: on), generate the
same tiles through the runtime's ``generate`` loop, alternating A and B per repeat; medians per batch size.

    python benchmarks/bench_decoder_spin.py --export runs/reference/export --out benchmarks/results/decoder_spin
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from histosmith.benchmark.bench import BenchSession
from histosmith.data.atomic import write_json_atomic, write_text_atomic
from histosmith.runtime import conditions as cond
from histosmith.runtime.backends import onnx_backend
from histosmith.runtime.engine import EngineOptions, open_engine
from histosmith.runtime.generate import GenerationPlan, generate
from histosmith.runtime.schedule import Scheduler


def backend_with_decoder_spin(session, tables, threads: int | None, spin: bool):  # noqa: ANN001, ANN201
    """The runtime's ONNX backend, its decoder session rebuilt with ``spin``."""
    backend = session.backend(tables)
    backend.decoder = onnx_backend.make_session(session.path(session.variant.decoder), "cpu", threads, spin=spin)
    return backend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", type=Path, required=True)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--tiles", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, required=True, help="Writes OUT.json and OUT.md.")
    args = ap.parse_args()
    session = open_engine(args.export / "unet.onnx", EngineOptions(device="cpu", threads=args.threads))
    info = session.info
    tables = Scheduler(info.schedule).set_timesteps(args.steps, 0.0)
    table = cond.from_dataset(info, args.tiles, 7)
    backends = {"decoder spins (ONNX Runtime default)": backend_with_decoder_spin(session, tables, args.threads, True),
                "decoder does not spin (runtime)": backend_with_decoder_spin(session, tables, args.threads, False)}
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        rates: dict[str, list[float]] = {name: [] for name in backends}
        for rep in range(args.repeats + 1):  # the first round warms up both
            for name, backend in backends.items():
                with tempfile.TemporaryDirectory(prefix="hs-spin-") as tmp:
                    r = generate(BenchSession(info, backend), GenerationPlan(seed=0, steps=args.steps, batch=batch),
                                 table, Path(tmp) / "out", show_progress=False)
                if rep:
                    rates[name].append(r.generated / r.seconds)
        medians = {name: statistics.median(v) for name, v in rates.items()}
        spin, nospin = medians.values()
        rows.append({"batch": batch, "tiles_per_s": medians, "all": rates, "ratio_no_spin_vs_spin": nospin / spin})
        print(f"batch {batch}: " + ", ".join(f"{n} {v:.2f} tiles/s" for n, v in medians.items())
              + f"; ratio {nospin / spin:.2f}x", flush=True)
    command = "python benchmarks/bench_decoder_spin.py " + " ".join(sys.argv[1:])
    write_json_atomic(args.out.with_suffix(".json"), {"command": command, "tiles": args.tiles, "steps": args.steps,
                                                      "repeats": args.repeats, "rows": rows})
    names = list(backends)
    lines = [f"`{command}`", "", f"End-to-end tiles/s of `generate` ({args.tiles} tiles, {args.steps} DDIM steps, "
             f"ONNX Runtime fp32), medians of {args.repeats} alternating repeats.", "",
             f"| batch | {names[0]} | {names[1]} | ratio |", "|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['tiles_per_s'][names[0]]:.2f} | {r['tiles_per_s'][names[1]]:.2f} | "
              f"{r['ratio_no_spin_vs_spin']:.2f}x |" for r in rows]
    write_text_atomic(args.out.with_suffix(".md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
