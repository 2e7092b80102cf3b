"""HistoSmith: labelled histology tiles from a latent diffusion model.

This top-level package imports nothing heavy: ``histosmith.runtime`` and ``histosmith.data`` must stay
importable without torch (see tests/test_dependencies.py).
"""

__version__ = "0.1.0"

__all__ = ["Generator", "QCPolicy", "Tiles", "__version__"]


def __getattr__(name: str):  # noqa: ANN202 — the API is imported on first use (PEP 562)
    if name in ("Generator", "QCPolicy", "Tiles"):
        from histosmith import api

        return getattr(api, name)
    raise AttributeError(f"module 'histosmith' has no attribute {name!r}")
