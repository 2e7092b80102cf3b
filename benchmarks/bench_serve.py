"""Tiles/s of ``hs-serve`` under 1, 4 and 16 concurrent clients against offline ``hs-generate``, one run.

    python benchmarks/bench_serve.py --export runs/demo/export --tiles 64 --steps 20

Every client sends one-tile requests back to back (tile indices never repeat); the server batches
concurrent requests up to ``--max-batch``. Offline = ``hs-generate`` with ``--batch`` = ``--max-batch`` on
the same tiles. Both use the same threads, so the ratio is what the serving path costs or gains.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.http as http

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _client_module():
    spec = importlib.util.spec_from_file_location("triton_client", REPO / "examples" / "triton_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def offline(export: Path, tiles: int, steps: int, batch: int, counts: str, tissue: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        subprocess.run([str(BIN / "hs-generate"), "--engine", str(export / "unet.onnx"), "--n", str(tiles),
                        "--steps", str(steps), "--batch", str(batch), "--counts", counts, "--tissue", tissue,
                        "--out", f"{tmp}/gen"], check=True, capture_output=True)
        return tiles / (time.monotonic() - started)


def served(client_mod, url: str, tiles: int, clients: int, counts: np.ndarray, tissue: str) -> tuple[float, float]:
    """(tiles/s, p50 latency in s) with ``clients`` threads sharing ``tiles`` one-tile requests."""
    next_index, lock, latencies = [0], threading.Lock(), []

    def worker() -> None:
        client = http.InferenceServerClient(url, network_timeout=600)
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= tiles:
                return
            t = time.monotonic()
            client_mod.request_tiles(client, counts[None], [tissue], np.array([0]), np.array([i]))
            latencies.append(time.monotonic() - t)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tiles / (time.monotonic() - started), float(np.median(latencies))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, required=True)
    ap.add_argument("--tiles", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve_cpu")
    args = ap.parse_args()
    manifest = json.loads((args.export / "manifest.json").read_text())["condition"]
    counts = np.array([max(0, m // 2) for m in manifest["count_max"]])
    tissue = manifest["tissue_names"][0]
    text = ",".join(f"{c}={n}" for c, n in zip(manifest["class_names"], counts, strict=True))
    client_mod = _client_module()
    base = offline(args.export, args.tiles, args.steps, args.max_batch, text, tissue)
    print(f"offline hs-generate --batch {args.max_batch}: {base:.2f} tiles/s")
    port, grpc, metrics = free_ports(3)
    proc = subprocess.Popen([str(BIN / "hs-serve"), "--export", str(args.export), "--port", str(port),
                             "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--steps", str(args.steps),
                             "--max-batch", str(args.max_batch)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"127.0.0.1:{port}"
    rows = []
    try:
        probe = http.InferenceServerClient(url)
        for _ in range(600):
            try:
                if probe.is_model_ready("histosmith"):
                    break
            except Exception:  # not up yet
                pass
            time.sleep(0.5)
        served(client_mod, url, 2, 1, counts, tissue)  # warm-up
        for n_clients in (int(c) for c in args.clients.split(",")):
            rate, p50 = served(client_mod, url, args.tiles, n_clients, counts, tissue)
            rows.append({"clients": n_clients, "tiles_per_s": round(rate, 3), "latency_p50_s": round(p50, 3),
                         "vs_offline": round(rate / base, 3)})
            print(f"{n_clients:>3} clients: {rate:.2f} tiles/s ({rate / base:.2f}x offline), p50 {p50:.2f} s")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    result = {"export": str(args.export), "tiles": args.tiles, "steps": args.steps, "max_batch": args.max_batch,
              "offline_tiles_per_s": round(base, 3), "served": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"`python benchmarks/bench_serve.py --export {args.export} --tiles {args.tiles} --steps {args.steps}`",
             "", f"Offline `hs-generate --batch {args.max_batch}`: {base:.2f} tiles/s.", "",
             "| clients | tiles/s | vs offline | p50 latency s |", "|---|---|---|---|"]
    lines += [f"| {r['clients']} | {r['tiles_per_s']:.2f} | {r['vs_offline']:.2f}x | {r['latency_p50_s']:.2f} |"
              for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
