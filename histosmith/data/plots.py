"""Matplotlib without a display, and figures saved atomically."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from histosmith.data.atomic import write_bytes_atomic  # noqa: E402


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 120) -> None:
    """Render ``fig`` to PNG in memory and write it atomically; closes the figure."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    data = buf.getvalue()
    write_bytes_atomic(path, lambda f: f.write(data))
