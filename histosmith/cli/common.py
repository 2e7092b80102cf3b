"""What every HistoSmith command shares: error reporting, logging, exit codes."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from histosmith.errors import HistoSmithError
from histosmith.extras import error_for_missing_module

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
SEED = click.IntRange(0, 2**63 - 1)  # every --seed: numpy's SeedSequence and torch take non-negative seeds


def marker_depth_option(f: Callable) -> Callable:
    """``--marker-depth``: the watershed's h, for every command that turns generated maps into labels; the
    command receives a :class:`histosmith.runtime.postprocess.MarkerDepth` (checked before any model loads)."""

    def parse(ctx: click.Context, param: click.Parameter, value: str) -> object:
        from histosmith.runtime.postprocess import MarkerDepth

        try:
            return MarkerDepth.parse(value)
        except HistoSmithError as exc:
            raise click.BadParameter(str(exc).removeprefix("--marker-depth").lstrip(": ")) from None

    return click.option(
        "--marker-depth", default="0.4", show_default=True, callback=parse,
        metavar="H[,CLASS=H...][,CLASS>PX...,split=H]",
        help="Watershed marker depth h on the distance map: a maximum seeds its own nucleus only when it rises "
             "this much above the saddle to its neighbour (lower splits more). One number, optionally per class "
             "(0.25,neoplastic=0.1); hs-eval vqvae recommends both for an autoencoder. CLASS>PX: a nucleus of "
             "that class larger than PX pixels is seeded again at the depth split=H (default 0.1) and split "
             "where that finds several domes (0.25,neoplastic>360).")(f)


class _ClickEchoHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        click.echo(prefix + record.getMessage(), err=True)


def setup_logging(verbose: bool = False) -> None:
    root = logging.getLogger("histosmith")
    root.handlers[:] = [_ClickEchoHandler()]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def _close_progress_bars() -> None:
    """End any live tqdm bar on its own line, so that the next message is not glued to it."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def click_error_line(exc: click.ClickException) -> str:
    """A click usage error as ``<what>: <problem>`` (click itself prints usage, a hint and the message)."""
    if isinstance(exc, click.BadParameter) and exc.param is not None:
        names = getattr(exc.param, "opts", None) or [exc.param.name or "argument"]
        if isinstance(exc, click.MissingParameter):
            return f"{names[0]}: missing (required)"
        return f"{names[0]}: {exc.message}"
    if isinstance(exc, click.UsageError) and exc.ctx is not None:
        return f"{exc.ctx.command_path}: {exc.format_message()}"
    return exc.format_message()


def run(group: click.Command, args: list[str] | None = None) -> None:
    """Run a click command; user errors become one line on stderr and exit 2, Ctrl-C exits 130."""
    setup_logging()
    try:
        group.main(args=args, standalone_mode=False)
    except BrokenPipeError:
        sys.exit(0)
    except HistoSmithError as exc:
        _close_progress_bars()
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except ModuleNotFoundError as exc:  # an optional dependency the command reached for: name its extra
        missing = error_for_missing_module(exc)
        if missing is None:
            raise
        click.echo(f"error: {missing}", err=True)
        sys.exit(EXIT_USAGE)
    except (click.exceptions.Abort, KeyboardInterrupt):
        _close_progress_bars()
        click.echo("interrupted: everything written so far is complete; rerun with --resume to continue", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        click.echo(f"error: {click_error_line(exc)}", err=True)
        sys.exit(EXIT_USAGE)
    except OSError as exc:  # a full disk or a file-size limit hit outside the atomic writers
        _close_progress_bars()
        from histosmith.data.atomic import describe_os_error

        click.echo(f"error: {describe_os_error(getattr(exc, 'filename', None) or 'writing', exc)}", err=True)
        sys.exit(EXIT_USAGE)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)

    sys.exit(0)


def entry_point(group: click.Command) -> Callable[[], None]:
    """A console-script ``main`` for ``group``."""

    def main() -> None:
        run(group)

    return main


def output_path(path: Path | None) -> Path | None:
    """Check, before any work, that an output file can be written there; returns the path."""
    if path is None:
        return None
    if path.is_dir():
        raise HistoSmithError(f"{path}: is a directory; give a file name")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise HistoSmithError(f"{path}: cannot be created: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HistoSmithError(f"{path}: not writable ({parent} does not allow it)")
    return path
