"""What every HistoSmith command shares: error reporting, logging, exit codes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import click

from histosmith.errors import HistoSmithError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _ClickEchoHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        click.echo(prefix + record.getMessage(), err=True)


def setup_logging(verbose: bool = False) -> None:
    root = logging.getLogger("histosmith")
    root.handlers[:] = [_ClickEchoHandler()]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def run(group: click.Command, args: list[str] | None = None) -> None:
    """Run a click command; user errors become one line on stderr and exit 2, Ctrl-C exits 130."""
    setup_logging()
    try:
        group.main(args=args, standalone_mode=False)
    except HistoSmithError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted: everything written so far is complete; rerun with --resume to continue", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(0)


def entry_point(group: click.Command) -> Callable[[], None]:
    """A console-script ``main`` for ``group``."""

    def main() -> None:
        run(group)

    return main


def output_path(path: Path) -> Path:
    """Check that the parent of an output file can be created; returns the path."""
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise HistoSmithError(f"{path}: parent {parent} is not a directory")
    return path
