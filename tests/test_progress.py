"""The one progress helper: a rich bar on a terminal, quiet (or plain lines) when piped."""

import io
import sys

from rich.console import Console

from lanmt_cli.progress import bar, counter, format_duration


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=100), out


def test_quiet_when_piped():
    console, out = _console(terminal=False)
    with counter(10, "translating", console=console) as advance:
        for _ in range(10):
            advance(1)
    assert out.getvalue() == ""
    assert bar(console=console).disable


def test_a_bar_on_a_terminal():
    console, out = _console(terminal=True)
    with counter(10, "translating", 4, console=console) as advance:
        advance(6)
    assert "translating" in out.getvalue() and "10/10" in out.getvalue()
    assert not bar(console=console).disable


def test_stdout_left_alone_where_it_carries_data():
    console, out = _console(terminal=True)
    before = sys.stdout
    with counter(1, "translating", redirect_stdout=False, console=console):
        assert sys.stdout is before
    with counter(1, "download", console=console):
        assert sys.stdout is not before  # prints appear above the bar
    assert sys.stdout is before


def test_nothing_at_all_when_not_shown():
    console, out = _console(terminal=True)
    with counter(10, "translating", show=False, console=console) as advance:
        advance(10)
    assert out.getvalue() == ""


def test_the_final_state_once_when_piped_where_asked():
    console, out = _console(terminal=False)
    with counter(2048, "tiny", nbytes=True, tty_only=False, console=console) as advance:
        advance(1024)
        advance(1024)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tiny") and "2.0/2.0 kB" in lines[0]


def test_plain_lines_when_piped_where_asked():
    console, out = _console(terminal=False)
    with counter(10, "distilling train", 2, plain_every=3600, console=console) as advance:
        advance(3)  # too soon for a line
        advance(5)  # the end: always a line
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distilling train: 10/10 (")


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.6, 125, 3723)] == ["0:00", "1:00", "2:05", "1:02:03"]
