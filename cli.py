"""The ``embedstore`` command line: thin typer wrappers, one library call per command.

Every command's work is a function of the library; this module only parses options, calls it and
prints. Errors the user can cause are :class:`~embedstore.errors.EmbedstoreError` and are printed as
one line with a non-zero exit (``--debug`` shows the traceback).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from embedstore import __version__
from embedstore.errors import EmbedstoreError

app = typer.Typer(
    name="embedstore",
    help="Extract every layer of pretrained audio encoders into a chunked store, then probe, "
    "analyse and fine-tune on it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_DEBUG = False

StoreOption = Annotated[
    Optional[Path],
    typer.Option(
        "--store",
        envvar="EMBEDSTORE_STORE",
        help="Store path (default ./embedstore.zarr; a path ending in .h5/.hdf5 selects HDF5).",
    ),
]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"embedstore {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    global _DEBUG
    _DEBUG = debug


# ---- commands are registered below, one section per area ------------------------------------


def main() -> None:
    """Console entry point: run the app, turning user errors into one line and exit code 2."""
    try:
        app(standalone_mode=False)
    except EmbedstoreError as exc:
        if _DEBUG:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted; everything written so far is kept", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:  # click usage errors are handled here in standalone_mode=False
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if _DEBUG:
            raise
        typer.echo(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
