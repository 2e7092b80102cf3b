"""Atomic file and directory writes.

Every file a user sees is complete: it is written under a temporary name in the same directory,
flushed to disk and renamed into place (``os.replace`` is atomic on POSIX within one filesystem).
A full disk or any other ``OSError`` removes the temporary and raises a one-line ``HistoSmithError``;
whatever was already in place is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from histosmith.errors import HistoSmithError, file_error


def describe_os_error(path: str | Path, exc: OSError) -> HistoSmithError:
    """Turn an ``OSError`` into the standard one-line error, naming full disks explicitly."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return HistoSmithError(f"{path}: disk full (no space left on device); nothing partial was kept")
    if exc.errno == errno.EFBIG:
        return HistoSmithError(f"{path}: file-size limit reached (ulimit -f); nothing partial was kept")
    if exc.errno is None and "requested and" in str(exc):  # numpy's short write: the disk filled up
        return HistoSmithError(f"{path}: disk full or file-size limit reached (short write: {exc}); "
                               "nothing partial was kept")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return HistoSmithError(f"{path}: not writable ({exc.strerror})")
    return HistoSmithError(f"{path}: {exc.strerror or exc}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode a plain ``open``/``mkdir`` would give (mkstemp/mkdtemp default to owner-only)."""
    return (0o777 if directory else 0o666) & ~_umask()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write a file through ``write(fileobj)`` and move it into place atomically."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise describe_os_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise describe_os_error(path, exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    data = text.encode("utf-8")
    write_bytes_atomic(path, lambda f: f.write(data))


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinities as ``null``: JSON has no such numbers (Python would write invalid JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write an indented JSON file atomically (always valid JSON: non-finite numbers become ``null``)."""
    write_text_atomic(path, json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def save_npy_atomic(path: str | Path, array: np.ndarray) -> None:
    """Save one array as ``.npy`` atomically."""
    write_bytes_atomic(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


@contextlib.contextmanager
def atomic_directory(final: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary directory that becomes ``final`` only if the block completes.

    ``final`` must not exist unless ``replace``; then the old directory is swapped out only after the new
    one is complete. On any error the temporary directory is removed, so a reader never sees a
    half-written directory.
    """
    final = Path(final)
    if final.exists() and not replace:
        raise HistoSmithError(f"{final}: already exists; refusing to overwrite")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    except OSError as exc:
        raise describe_os_error(final, exc) from None
    try:
        yield tmp
        os.chmod(tmp, default_mode(directory=True))
        if final.exists():
            old = final.with_name(f".{final.name}.old.{os.getpid()}.tmp")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise describe_os_error(final, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(final.parent)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json_object(path: str | Path, missing: str = "not found") -> dict[str, Any]:
    """A JSON object from ``path``; one-line errors for a missing, unreadable or non-object file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise file_error(path, missing) from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise file_error(path, f"unreadable JSON ({str(exc)[:120] or type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise file_error(path, "expected a JSON object")
    return data


def remove_stale_temporaries(directory: str | Path) -> int:
    """Delete leftovers of interrupted atomic writes (``.name.XXXX.tmp``) in ``directory``."""
    directory = Path(directory)
    removed = 0
    if not directory.is_dir():
        return 0
    for entry in directory.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
            removed += 1
    return removed
