"""`lanmt translate`: stdin or files in, one output line per input line, streaming.

Lines are read into a window (up to `--window` lines), translated when the window is full,
when the input pauses (a pipe with nobody writing for a moment) or ends; from a terminal each
line is answered at once. Within a window, the `Translator` sorts by length and batches by
token count. Every input line gives exactly one output line, in order.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO, Annotated

import typer

from lanmt_cli.commands.options import (
    BatchTokensOption,
    Device,
    DeviceOption,
    ModelOption,
    SeedOption,
    TeacherOption,
    ThreadsOption,
)
from lanmt_cli.errors import LanmtError
from lanmt_cli.textio import count_lines, strip_bom

IDLE_SECONDS = 0.05  # a pause this long on a pipe flushes the window
MAX_WARNINGS = 20
_IDLE = object()  # "no input for a moment"


class Format(str, Enum):
    text = "text"
    jsonl = "jsonl"


@dataclass
class Line:
    text: str
    where: str  # "FILE line N", for warnings


class Warner:
    """Warnings on stderr, at most MAX_WARNINGS of them."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, message: str) -> None:
        self.count += 1
        if self.count <= MAX_WARNINGS:
            typer.echo(f"warning: {message}", err=True)
        elif self.count == MAX_WARNINGS + 1:
            typer.echo("warning: further warnings are not shown", err=True)


# --- input -------------------------------------------------------------------------------


def _read_fd(fd: int, out: queue.Queue) -> None:
    """Reader thread: lines (bytes, without the newline) from a file descriptor, then None.

    Plain os.read holds no Python-level lock, so the interpreter can exit while this thread
    still waits for input (Ctrl-C, a closed output pipe).
    """
    parts: list[bytes] = []
    try:
        while chunk := os.read(fd, 1 << 16):
            start = 0
            while (end := chunk.find(b"\n", start)) >= 0:
                parts.append(chunk[start:end])
                out.put(b"".join(parts))
                parts, start = [], end + 1
            if start < len(chunk):
                parts.append(chunk[start:])
        if parts:
            out.put(b"".join(parts))
    except OSError as err:
        out.put(err)
    out.put(None)


def _stdin_lines() -> Iterator[bytes | object]:
    """Lines of stdin as they arrive, and _IDLE whenever the input pauses."""
    if sys.stdin is None:  # stdin closed (`<&-`): no lines
        return
    stream = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):  # a file-like object (tests): no pauses
        for raw in stream:
            yield raw.rstrip(b"\n") if isinstance(raw, bytes) else raw.rstrip("\n").encode()
        return
    lines: queue.Queue = queue.Queue(maxsize=10_000)
    threading.Thread(target=_read_fd, args=(fd, lines), daemon=True).start()
    while True:
        try:
            item = lines.get(timeout=IDLE_SECONDS)
        except queue.Empty:
            yield _IDLE
            continue
        if item is None:
            return
        if isinstance(item, OSError):
            raise LanmtError(f"<stdin>: {item.strerror or item}")
        yield item


def _file_lines(path: Path) -> Iterator[bytes]:
    from lanmt_cli.textio import open_binary

    with open_binary(path) as f:
        try:
            for raw in f:
                yield raw.rstrip(b"\n")
        except (OSError, EOFError) as err:  # also a damaged gzip stream
            raise LanmtError(f"{path}: cannot read ({err})") from None


def _decode(raw: bytes, where: str, first: bool, warn: Warner) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        warn(f"{where}: bytes that are not UTF-8 were replaced with U+FFFD")
    if first:
        text = strip_bom(text)
    return text.removesuffix("\r")


def read_input(inputs: list[str], warn: Warner) -> Iterator[Line | object]:
    """Decoded lines of every input in turn (`-` is stdin), with _IDLE markers from stdin."""
    for name in inputs:
        is_stdin = name == "-"
        label = "<stdin>" if is_stdin else name
        raws = _stdin_lines() if is_stdin else _file_lines(Path(name))
        number = 0
        for raw in raws:
            if raw is _IDLE:
                yield _IDLE
                continue
            number += 1
            where = f"{label} line {number}"
            yield Line(_decode(raw, where, number == 1, warn), where)


# --- output ------------------------------------------------------------------------------


def _finite(value):
    """`value` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _format(result, options: dict, fmt: Format) -> str:
    if fmt is Format.text:
        return result.translation.replace("\n", " ")
    r = result.as_dict()
    order = ("source", "translation", "decoder", "score", "length", "pieces", "truncated")
    record = {**{k: r[k] for k in order}, "options": options, "candidates": r["candidates"]}
    return json.dumps(_finite(record), ensure_ascii=False, allow_nan=False)  # strict JSON


@contextlib.contextmanager
def _output(target: str) -> Iterator[IO[bytes]]:
    """stdout, or a file that appears (atomically) only once it is complete; a device or
    FIFO is written directly, a symlink's target replaced (see `textio.atomic_file`)."""
    if target == "-":
        yield sys.stdout.buffer if hasattr(sys.stdout, "buffer") else sys.stdout
        return
    from lanmt_cli.textio import atomic_file

    path = Path(target)
    if path.is_dir():
        raise LanmtError(f"{path} is a directory, not an output file")
    if not path.parent.is_dir():
        raise LanmtError(f"{path.parent}: no such directory for the output file")
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        yield f


# --- the command -------------------------------------------------------------------------


def translate(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="FILE",
            help="Input files (plain or .gz), one sentence a line; - or none: stdin.",
        ),
    ] = None,
    output: Annotated[
        str, typer.Option("--output", "-o", metavar="FILE", help="Output file; - is stdout.")
    ] = "-",
    model: ModelOption = None,
    decoder: Annotated[
        str | None,
        typer.Option(
            "--decoder",
            "-d",
            metavar="NAME[:KEY=VALUE,...]",
            help="Decoder (see `lanmt decoders`): one-shot, refine1, refine3, latent-search, "
            "teacher-rescore, beam, ..., with options as in `lanmt bench -d` "
            "(e.g. latent-search:samples=20). Default: refine1 (beam for a Transformer model).",
        ),
    ] = None,
    opt: Annotated[
        list[str] | None,
        typer.Option(
            "--opt",
            metavar="KEY=VALUE",
            help="A decoder option, e.g. samples=20 (the same as -d NAME:samples=20). "
            "Repeatable; a key given both here and in --decoder is an error.",
        ),
    ] = None,
    teacher: TeacherOption = None,
    device: DeviceOption = Device.auto,
    threads: ThreadsOption = None,
    seed: SeedOption = 0,
    batch_tokens: BatchTokensOption = 4096,
    window: Annotated[
        int,
        typer.Option(
            "--window", min=1, help="Lines read ahead and sorted by length before batching."
        ),
    ] = 1000,
    output_format: Annotated[
        Format,
        typer.Option(
            "--output-format",
            help="text: one translation a line; jsonl: source, translation, decoder, options, "
            "score, length, pieces and candidates as one JSON object a line.",
        ),
    ] = Format.text,
    max_input_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-input-tokens",
            min=1,
            help="Split longer lines into pieces (default: the longest the model takes).",
        ),
    ] = None,
    truncate: Annotated[
        bool,
        typer.Option("--truncate", help="Cut overlong lines instead of splitting them."),
    ] = False,
) -> None:
    """Translate lines from stdin or files: exactly one output line per input line.

    The embedded default model (English to German) was trained on image captions, Multi30k's
    short everyday descriptions of a photo ("A dog runs across the grass."), and translates
    such sentences best. Other text (news, technical or long sentences) gets poorer
    translations: give --model a model trained on your kind of text (lanmt prepare, lanmt
    train).

    Example: cat in.txt | lanmt translate --decoder refine1 > out.txt
    """
    inputs = inputs or ["-"]
    for name in inputs:
        if name != "-" and not Path(name).is_file():
            what = "is a directory" if Path(name).is_dir() else "no such file"
            raise LanmtError(f"{name}: {what}")
    from lanmt_cli.progress import counter, stderr_console
    from lanmt_cli.registry import parse_options
    from lanmt_cli.translator import Translator

    translator = Translator(
        model,
        decoder,
        parse_options(opt),
        device=device.value,
        batch_tokens=batch_tokens,
        seed=seed,
        teacher=teacher,
        threads=threads,
        max_input_tokens=max_input_tokens,
        truncate=truncate,
    )
    warn = Warner()
    interactive = "-" in inputs and sys.stdin is not None and sys.stdin.isatty()
    console = stderr_console()
    show = "-" not in inputs and console.is_terminal  # progress of files, on a terminal only
    total = sum(count_lines(Path(name), check=False) for name in inputs) if show else 0
    limit = 1 if interactive else window
    with (
        counter(total, "translating", show=show, redirect_stdout=False, console=console) as advance,
        _output(output) as out,
    ):
        pending: list[Line] = []

        def flush() -> None:
            results = translator.translate([line.text for line in pending])
            for line, result in zip(pending, results, strict=True):
                if result.truncated:
                    warn(
                        f"{line.where}: longer than {translator.max_input_tokens} tokens; truncated"
                    )
                elif result.pieces > 1:
                    warn(
                        f"{line.where}: longer than {translator.max_input_tokens} tokens; "
                        f"translated in {result.pieces} pieces"
                    )
                text = _format(result, translator.options, output_format)
                out.write(text.encode("utf-8", errors="replace") + b"\n")
            out.flush()
            advance(len(pending))
            pending.clear()

        for item in read_input(inputs, warn):
            if item is not _IDLE:
                pending.append(item)
            if pending and (item is _IDLE or len(pending) >= limit):
                flush()
        if pending:
            flush()


def register(app: typer.Typer, wrap) -> None:
    app.command("translate")(wrap(translate))
