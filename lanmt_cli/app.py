"""The `lanmt` command-line tool: one Typer app, one module per command.

Command modules import only typer and the standard library at top level; torch,
ray and sentencepiece are imported inside the command bodies, so `lanmt --help`
stays instant.
"""

from __future__ import annotations

import functools
import io
import os
import signal
import sys
from collections.abc import Callable

import typer
from typer.core import TyperArgument, TyperGroup

from lanmt_cli import __version__
from lanmt_cli.errors import LanmtError


class _Argument(TyperArgument):
    """A positional argument shown as click shows one: `FILE`, `[NAME]`, `[FILE]...`,
    without typer's type placeholders (`FILE <list[str]>`, `{bundle}`, `name <str>`)."""

    def _label(self) -> str:
        return self.metavar or (self.name or "").upper()

    def display_type_rich(self, ctx):  # the type is said by the metavar and the help
        return None

    def _rich_display_name(self) -> str:
        return self._label()

    def _usage_display_name(self) -> str:
        label = self._label() if self.required else f"[{self._label()}]"
        return label + ("..." if self.nargs != 1 else "")


class _Group(TyperGroup):
    """The command group: every command's arguments are shown the plain way (`_Argument`)."""

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        for param in getattr(command, "params", []):
            if type(param) is TyperArgument:
                param.__class__ = _Argument
        return command


app = typer.Typer(
    cls=_Group,
    name="lanmt",
    help="LaNMT: fast non-autoregressive translation with deterministic inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"lanmt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """LaNMT: fast non-autoregressive translation with deterministic inference."""


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C, so that temporary files are removed."""


def _terminate(signum, frame) -> None:
    raise Terminated


class StdoutError(LanmtError):
    """Standard output cannot be written: a full disk, /dev/full, closed (`>&-`)."""


class _Stdout(io.FileIO):
    """File descriptor 1, where a failed write is one `StdoutError` and later writes are
    dropped, so that the flush at exit stays quiet. A closed pipe stays a BrokenPipeError:
    the reader went away (`lanmt translate | head -1`)."""

    closed_at_start = False
    failed = False

    def write(self, data) -> int:
        if self.failed:
            return len(data)
        try:
            return super().write(data)
        except BrokenPipeError:
            raise
        except OSError as err:
            from lanmt_cli.textio import os_error_cause

            self.failed = True
            cause = "it is closed" if self.closed_at_start else os_error_cause(err)
            raise StdoutError(f"cannot write to standard output: {cause}") from None


def _guard_stdout() -> None:
    """Make every write to standard output, by any command, fail as one `StdoutError`.

    A closed stdout (`>&-`) gets file descriptor 1 opened read-only on /dev/null: no file
    opened later takes its place, and a write to it fails.
    """
    old = sys.stdout
    if old is not None and old is not sys.__stdout__:
        return  # already redirected (a test runner)
    closed = old is None
    if closed:
        fd = os.open(os.devnull, os.O_RDONLY)
        if fd != 1:
            os.dup2(fd, 1)
            os.close(fd)
    raw = _Stdout(1, "w", closefd=False)
    raw.closed_at_start = closed
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(raw),
        encoding=old.encoding if old else "utf-8",
        errors=old.errors if old else "strict",
        line_buffering=old.line_buffering if old else False,
        write_through=old.write_through if old else False,
    )


def _quiet_broken_pipe() -> None:
    """`lanmt translate | head -1`: the reader went away; end quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def user_errors(fn: Callable) -> Callable:
    """Turn user errors, Ctrl-C, SIGTERM and a closed pipe into one line and an exit status.

    SIGTERM unwinds the command like Ctrl-C (temporary files and folders are removed) and
    exits with 143, as the default action of the signal would.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            previous = signal.signal(signal.SIGTERM, _terminate)
        except ValueError:  # not the main thread
            previous = None
        try:
            return fn(*args, **kwargs)
        except LanmtError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Terminated:
            typer.echo("terminated", err=True)
            raise typer.Exit(128 + signal.SIGTERM) from None
        except BrokenPipeError:
            _quiet_broken_pipe()
            raise typer.Exit(0) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def _register() -> None:
    import importlib

    commands = ("prepare", "train", "translate", "decoders", "bench", "download", "models", "serve")
    for module in commands:
        try:
            mod = importlib.import_module(f"lanmt_cli.commands.{module}")
        except ModuleNotFoundError as err:  # a command still being written
            if err.name != f"lanmt_cli.commands.{module}":
                raise
            continue
        mod.register(app, user_errors)


_register()


def main() -> None:
    """`lanmt`: a failed write to standard output, anywhere, is one line and exit 1."""
    _guard_stdout()
    try:
        try:
            app()
        finally:
            sys.stdout.flush()  # what is still buffered fails here, not at exit
    except StdoutError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
