"""Progress on stderr, one way for every command: a rich bar on a terminal.

`bar()` makes the rich `Progress` (items or bytes; an optional `info` field) that prepare
and the training display drive themselves; `counter()` wraps one bar over `total` items and
yields `advance(n)` (translate, download, distillation). Without a terminal (stderr piped or
redirected) a display stays quiet, unless its command asked otherwise: `tty_only=False`
prints the final state once (download), `plain_every` prints a plain line every so many
seconds (distillation, whose runs go in the background). Where stdout carries data
(translate), the bar leaves it alone.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


def stderr_console() -> Console:
    """The console all displays write to: stderr, no highlighting, long lines kept whole."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def bar(
    *,
    console: Console | None = None,
    nbytes: bool = False,
    info: bool = False,
    time_left: bool = True,
    transient: bool = False,
    tty_only: bool = True,
    redirect_stdout: bool = True,
) -> Progress:
    """A rich progress display: description, bar, done/total (or bytes and speed), time left.

    `info` adds the text field `info` (`add_task(..., info="")`); `time_left=False` leaves
    out rich's estimate (the caller says it in `info`); `tty_only` disables the display
    where `console` is not a terminal. While it is shown, prints to stdout appear above it
    (on stderr) unless `redirect_stdout=False` (where stdout carries data: translate).
    """
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = console or stderr_console()
    if nbytes:
        amounts = (DownloadColumn(), TransferSpeedColumn())
    else:
        amounts = (MofNCompleteColumn(), TaskProgressColumn())
    extra = (TextColumn("{task.fields[info]}"),) if info else ()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        *amounts,
        *((TimeRemainingColumn(),) if time_left else ()),
        *extra,
        console=console,
        transient=transient,
        disable=tty_only and not console.is_terminal,
        redirect_stdout=redirect_stdout,
    )


def format_duration(seconds: float) -> str:
    """1:02:03 for hours, 2:03 below an hour."""
    seconds = int(max(0, round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@contextlib.contextmanager
def counter(
    total: int | None,
    description: str,
    done: int = 0,
    *,
    show: bool = True,
    nbytes: bool = False,
    tty_only: bool = True,
    plain_every: float | None = None,
    redirect_stdout: bool = True,
    console: Console | None = None,
) -> Iterator[Callable[[int], None]]:
    """Progress over `total` items (None: unknown), `done` of them already; yields `advance(n)`.

    `show=False` shows nothing. On a terminal, a rich bar; elsewhere nothing, the final bar
    once (`tty_only=False`) or a plain line at most every `plain_every` seconds and at the end.
    """
    if not show:
        yield lambda n: None
        return
    console = console or stderr_console()
    if console.is_terminal or plain_every is None:
        kind = {"nbytes": nbytes, "tty_only": tty_only, "redirect_stdout": redirect_stdout}
        with bar(console=console, **kind) as progress:
            task = progress.add_task(description, total=total, completed=done)
            yield lambda n: progress.advance(task, n)
        return
    first = done
    start = shown = time.monotonic()

    def advance(n: int) -> None:
        nonlocal done, shown
        done += n
        now = time.monotonic()
        if now - shown >= plain_every or (total is not None and done >= total):
            rate = (done - first) / max(now - start, 1e-9)
            left = (total - done) / rate if total is not None and rate > 0 else 0
            of = f"/{total:,}" if total is not None else ""
            console.print(
                f"{description}: {done:,}{of} ({rate:,.1f}/s, {format_duration(left)} left)",
                markup=False,
            )
            shown = now

    yield advance
