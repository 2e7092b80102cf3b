"""Generators that ship inside the package (``histosmith/pretrained/<name>/``): an export in packed form —
``manifest.json``, the U-Net and decoder graphs of one ONNX variant, ``MODEL_CARD.md``.

``hs-generate`` without ``--engine`` and :func:`histosmith.api.Generator.from_pretrained` use
:data:`DEFAULT_MODEL`; ``--engine NAME`` names a shipped one. ``hs-export --pack DIR`` writes a user's own
model in the same form (:mod:`histosmith.export.pack`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from histosmith.errors import HistoSmithError

DEFAULT_MODEL = "hgsc-64"
CARD_FILE = "MODEL_CARD.md"


def pretrained_root() -> Path:
    """The folder that holds the shipped models."""
    return Path(str(resources.files("histosmith.pretrained")))


def available() -> list[str]:
    """Names of the shipped models (folders with a manifest)."""
    root = pretrained_root()
    return sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file()) if root.is_dir() else []


def packed_entry(directory: Path) -> Path:
    """The engine file of a packed export: the entry of its one ONNX variant."""
    from histosmith.runtime.manifest import Manifest

    manifest = Manifest.load(directory)
    onnx = [v for v in manifest.variants if v.format == "onnx"]
    if not onnx:
        raise HistoSmithError(f"{directory}: a packed model holds an ONNX variant; this one has none")
    return directory / onnx[0].entry


def resolve_engine(engine: str | Path | None) -> tuple[Path, str | None]:
    """``(engine file, shipped model name or None)`` for ``--engine``: None -> the default shipped model; a name
    of a shipped model -> its engine; anything else is a path, returned as it is."""
    if engine is None or (str(engine) in available() and not Path(engine).exists()):
        name = DEFAULT_MODEL if engine is None else str(engine)
        if name not in available():
            raise HistoSmithError(f"the shipped model {name!r} is not in this installation "
                                  f"({pretrained_root()}); pass --engine EXPORT/unet.onnx")
        return packed_entry(pretrained_root() / name), name
    return Path(engine), None
