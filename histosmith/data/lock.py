"""One writer per output directory: an exclusive lock held for the life of a job.

The lock is ``flock(2)`` on a file beside the directory (``<parent>/.<name>.lock``, holding the writer's pid
and command): the kernel releases it when the process ends however it ends, so a killed writer leaves no
lock to clear by hand — the file may stay behind, but nothing holds it and the next writer takes it over.
The second writer is refused before it reads or writes anything in the directory. File locks are advisory
and local: they do not guard a directory on a network file system shared by several machines.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from histosmith.errors import HistoSmithError


def lock_path(directory: Path) -> Path:
    directory = Path(os.path.abspath(directory))
    return directory.parent / f".{directory.name}.lock"


@contextlib.contextmanager
def exclusive(directory: Path, what: str = "output") -> Iterator[Path]:
    """Hold the lock of ``directory`` (which need not exist yet) for the block; refuse when another process
    holds it. The lock file is removed on release."""
    path = lock_path(directory)
    if not path.parent.is_dir():
        yield path  # nothing can be written there anyway: the caller's own checks say why
        return
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # a read-only parent: the caller's writability check reports it
            yield path
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise HistoSmithError(f"{directory}: another writer is using this {what} ({holder}); wait for it to "
                                  "finish or choose another directory") from None
        try:  # the file may have been unlinked by a writer that just released it: lock the current one
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}: {' '.join(os.path.basename(a) for a in sys.argv[:2])}".encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)  # releases the lock
