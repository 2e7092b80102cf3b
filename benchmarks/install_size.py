"""Disk size of the base install (the lean runtime) against the full one, each in a fresh virtual environment.

    python benchmarks/install_size.py            # writes benchmarks/results/install_size.{json,md}

Sizes are the bytes under the environment's site-packages (pip and setuptools themselves excluded), so
they do not depend on the Python installation. pip's cache makes the second run fast.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"base": "", "train": "[train]", "train+export": "[train,export]", "all": "[all]"}
NOT_COUNTED = ("pip", "setuptools", "_distutils_hack", "distutils-precedence.pth")


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def measure(extra: str, root: Path) -> dict[str, object]:
    """Install the package with ``extra`` into a new venv under ``root``; its size and distributions."""
    venv = root / (extra.strip("[]").replace(",", "_") or "base")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    started = time.monotonic()
    subprocess.run([python, "-m", "pip", "install", "--quiet", f"{REPO}{extra}"], check=True,
                   stderr=subprocess.DEVNULL)
    seconds = time.monotonic() - started
    site = next((venv / "lib").glob("python3*/site-packages"))
    size = sum(tree_bytes(p) if p.is_dir() else p.stat().st_size for p in site.iterdir()
               if not p.name.startswith(NOT_COUNTED))
    freeze = subprocess.run([python, "-m", "pip", "list", "--format=freeze", "--exclude", "pip",
                             "--exclude", "setuptools"], capture_output=True, text=True, check=True).stdout
    return {"mb": round(size / 1e6, 1), "install_s": round(seconds, 1), "packages": freeze.split()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "install_size")
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="hs-install-") as tmp:
        for name, extra in VARIANTS.items():
            rows[name] = measure(extra, Path(tmp))
            print(f"{name:<14} {rows[name]['mb']:>8.1f} MB  {len(rows[name]['packages'])} distributions")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    base = rows["base"]["mb"]
    lines = ["| install | MB on disk | vs base | distributions |", "|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| `pip install histosmith{VARIANTS[name]}` | {row['mb']:.1f} | {row['mb'] / base:.1f}x "
                     f"| {len(row['packages'])} |")
    args.out.with_suffix(".md").write_text(
        "Site-packages size of a fresh virtual environment per install (`python benchmarks/install_size.py`).\n\n"
        + "\n".join(lines) + "\n")
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
