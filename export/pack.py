"""``hs-export --pack DIR``: an export in the form the package ships its pretrained models in — the U-Net and
decoder of one ONNX variant, a manifest that lists only them (fused step graphs, torch programs and TensorRT
engines left out: they are rebuilt on the target), and a model card."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from histosmith.data.atomic import atomic_directory, write_text_atomic
from histosmith.errors import HistoSmithError, file_error
from histosmith.runtime.manifest import Manifest
from histosmith.runtime.pretrained import CARD_FILE


def pack_export(export: Path, out: Path, precision: str = "fp32", card: Path | None = None) -> Path:
    """Write the packed form of ``export``'s ONNX ``precision`` variant to ``out`` (new directory)."""
    manifest = Manifest.load(export)
    variant = next((v for v in manifest.variants if v.format == "onnx" and v.precision == precision
                    and v.guided_unet), None)
    if variant is None:
        have = sorted({v.precision for v in manifest.variants if v.format == "onnx"})
        raise file_error(export, f"no ONNX {precision} U-Net to pack (it has: {', '.join(have) or 'none'})")
    if out.exists():
        raise file_error(out, "already exists; choose a new directory for --pack")
    kept = replace(variant, entry=variant.guided_unet, fused_step="", calibration=variant.calibration)
    names = (kept.guided_unet, kept.decoder)
    for name in names:
        manifest.verify_file(export, name)
    graphs = {role: spec for role, spec in manifest.graphs.items() if role != "step"}
    packed = replace(manifest, variants=(kept,), files={n: manifest.files[n] for n in names}, graphs=graphs)
    with atomic_directory(out) as tmp:
        for name in names:
            shutil.copy2(export / name, tmp / name)
        packed.save(tmp)
        if card is not None:
            if not card.is_file():
                raise HistoSmithError(f"--card {card}: not found")
            shutil.copy2(card, tmp / CARD_FILE)
        else:
            write_text_atomic(tmp / CARD_FILE, default_card(packed))
    return out


def default_card(manifest: Manifest) -> str:
    """A model card with the facts the manifest holds; the training data's licence and the limits are the
    author's to add."""
    info, s = manifest.info, manifest.sampling
    return (f"# Model card\n\n* Classes: {', '.join(info.spec.class_names)}\n"
            f"* Tissues: {', '.join(info.spec.tissue_names)}\n* Tile size: {info.tile_size} px\n"
            f"* Source checkpoint: {manifest.source.checkpoint} (step {manifest.source.step})\n"
            f"* Default sampling: {s.sampler}, {s.steps} steps, guidance {s.guidance:g}\n"
            "* Training data and its licence: (fill in)\n* Limits: (fill in)\n")
