"""The one exception type that reaches users as a single line and exit code 2."""

from __future__ import annotations

from pathlib import Path


class HistoSmithError(Exception):
    """A problem with the user's input or environment, reported without a traceback.

    Library code raises it with a message that names the file and the problem; the CLI prints
    ``error: <message>`` and exits with code 2.
    """


def file_error(path: str | Path, problem: str) -> HistoSmithError:
    """Build the standard ``<path>: <problem>`` error."""
    return HistoSmithError(f"{path}: {problem}")
