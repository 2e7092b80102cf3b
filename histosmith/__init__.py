"""HistoSmith: labelled histology tiles from a latent diffusion model.

This top-level package imports nothing heavy: ``histosmith.runtime`` and ``histosmith.data`` must stay
importable without torch (see tests/test_dependencies.py).
"""

__version__ = "0.1.0"
