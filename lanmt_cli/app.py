"""The `lanmt` command-line tool: one Typer app, one module per command.

Command modules import only typer and the standard library at top level; torch,
ray and sentencepiece are imported inside the command bodies, so `lanmt --help`
stays instant.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

import typer

from lanmt_cli.errors import LanmtError

app = typer.Typer(
    name="lanmt",
    help="LaNMT: fast non-autoregressive translation with deterministic inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    """LaNMT: fast non-autoregressive translation with deterministic inference."""


def _quiet_broken_pipe() -> None:
    """`lanmt translate | head -1`: the reader went away; end quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def user_errors(fn: Callable) -> Callable:
    """Turn user errors, Ctrl-C and a closed pipe into one line and an exit status."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LanmtError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            _quiet_broken_pipe()
            raise typer.Exit(0) from None

    return wrapper


def _register() -> None:
    import importlib

    for module in ("prepare", "train", "translate", "decoders", "bench", "download", "models"):
        try:
            mod = importlib.import_module(f"lanmt_cli.commands.{module}")
        except ModuleNotFoundError as err:  # a command still being written
            if err.name != f"lanmt_cli.commands.{module}":
                raise
            continue
        mod.register(app, user_errors)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
