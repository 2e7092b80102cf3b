"""Checkpoints: one self-describing file per run, written atomically, loaded with ``weights_only=True``.

A checkpoint holds the model config (so loading never needs the training flags again), the training
config, weights, EMA weights, optimiser state, the step and the RNG states. An LDM checkpoint also
embeds the VQ autoencoder it was trained on, the noise schedule, the latent scale and the condition
spec, so sampling and export need nothing else.
"""

from __future__ import annotations

import io
import pickle
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histosmith.data.atomic import write_bytes_atomic
from histosmith.errors import HistoSmithError, file_error

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """Torch, numpy and Python RNG states in a form ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Serialise in memory, then write atomically (a crash never leaves a torn checkpoint)."""
    buf = io.BytesIO()
    torch.save(dict(payload, format_version=FORMAT_VERSION), buf)
    data = buf.getvalue()
    write_bytes_atomic(path, lambda f: f.write(data))


def resolve(path: Path) -> Path:
    """A run directory or a checkpoint file -> the checkpoint file."""
    return path / CHECKPOINT_FILE if path.is_dir() else path


def load_checkpoint(path: Path, kind: str | None = None) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) and check its kind and format."""
    file = resolve(path)
    if not file.exists():
        raise file_error(file, "checkpoint not found")
    if not file.is_file():
        raise file_error(file, "not a file")
    with open(file, "rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):  # torch's zip format, or a legacy pickle
        raise file_error(file, "not a PyTorch checkpoint file")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: the error below says enough
            warnings.simplefilter("ignore")
            ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise file_error(file, "refused: it holds objects that safe (weights_only) loading does not allow; "
                               "not a HistoSmith checkpoint") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise file_error(file, f"corrupt or unreadable checkpoint ({first[:160]})") from None
    if not isinstance(ckpt, dict) or "kind" not in ckpt or "model_config" not in ckpt:
        raise file_error(file, "not a HistoSmith checkpoint")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise file_error(file, f"checkpoint format {ckpt['format_version']} is newer than this HistoSmith")
    if kind is not None and ckpt["kind"] != kind:
        raise file_error(file, f"a {ckpt['kind']} checkpoint, expected {kind}")
    return ckpt


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict`` with a one-line error when the weights do not fit the architecture."""
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        line = str(exc).strip().splitlines()
        detail = line[1].strip() if len(line) > 1 else line[0]
        raise HistoSmithError(f"{what}: weights do not match the model config ({detail[:200]})") from None
