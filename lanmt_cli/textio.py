"""Line-aligned parallel text, plain or gzip, read as a stream; atomic output paths.

Every problem a user can cause (missing or empty file, misaligned files, bytes that
are not UTF-8, a broken gzip file) becomes one `LanmtError` line naming the file and,
where it helps, the line number. Lines end at "\\n" only: other Unicode line breaks
(U+2028, form feed, ...) stay inside a line, so source and target stay aligned.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import io
import itertools
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from lanmt_cli.errors import LanmtError

GZIP_MAGIC = b"\x1f\x8b"
_BLOCK = 1 << 20  # bytes read at a time when counting lines


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def _check_file(path: Path) -> None:
    if not path.exists():
        raise LanmtError(f"{path}: no such file")
    if path.is_dir():
        raise LanmtError(f"{path} is a directory, not a text file")


def open_binary(path: Path) -> BinaryIO:
    """Open `path` for reading bytes, decompressing gzip (detected by its magic bytes)."""
    path = Path(path)
    _check_file(path)
    try:
        if _is_gzip(path):
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return open(path, "rb")
    except OSError as err:
        raise LanmtError(f"{path}: {err.strerror or err}") from None


@contextlib.contextmanager
def _gzip_errors(path: Path) -> Iterator[None]:
    """Report a damaged gzip stream as a user error naming the file."""
    try:
        yield
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise LanmtError(f"{path}: not a valid gzip file ({err})") from None


def _find_bad_line(path: Path) -> int:
    """1-based number of the first line of `path` that is not valid UTF-8."""
    with open_binary(path) as f, _gzip_errors(path):
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 0  # an incomplete character at the very end of the file


def _not_utf8(path: Path) -> LanmtError:
    line = _find_bad_line(path)
    where = f"line {line}" if line else "end of file"
    return LanmtError(f"{path} {where}: not valid UTF-8")


def count_lines(path: Path) -> int:
    """Number of lines in `path`, checking that it is non-empty UTF-8 text.

    Reads 1 MiB blocks, so memory stays flat for files of any size. A last line
    without a final newline counts as a line.
    """
    path = Path(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = 0
    last = b""
    with open_binary(path) as f, _gzip_errors(path):
        while block := f.read(_BLOCK):
            try:
                decoder.decode(block)
            except UnicodeDecodeError:
                raise _not_utf8(path) from None
            lines += block.count(b"\n")
            last = block[-1:]
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
    if not last:
        raise LanmtError(f"{path} is empty")
    return lines + (last != b"\n")


def check_parallel(src: Path, tgt: Path) -> int:
    """Check that `src` and `tgt` are non-empty UTF-8 files of equal line count; return it."""
    n_src = count_lines(src)
    n_tgt = count_lines(tgt)
    if n_src != n_tgt:
        raise LanmtError(f"{src} has {n_src} lines but {tgt} has {n_tgt}")
    return n_src


def read_lines(path: Path, chunk_lines: int = 100_000) -> Iterator[list[str]]:
    """Yield the lines of `path` (newline removed) in lists of at most `chunk_lines`."""
    path = Path(path)
    with open_binary(path) as raw, _gzip_errors(path):
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="\n")
        try:
            while chunk := list(itertools.islice(text, chunk_lines)):
                yield [line.rstrip("\r\n") for line in chunk]
        except UnicodeDecodeError:
            raise _not_utf8(path) from None


def iter_lines(path: Path) -> Iterator[str]:
    """Yield the lines of `path` one by one, newline removed."""
    for chunk in read_lines(path):
        yield from chunk


def read_parallel(
    src: Path, tgt: Path, chunk_lines: int = 100_000
) -> Iterator[tuple[list[str], list[str]]]:
    """Yield aligned chunks `(src_lines, tgt_lines)` of at most `chunk_lines` pairs.

    Raises `LanmtError` when one file ends before the other; for a clear message
    before any work, call `check_parallel` first.
    """
    seen = 0
    src_chunks = read_lines(src, chunk_lines)
    tgt_chunks = read_lines(tgt, chunk_lines)
    for src_chunk, tgt_chunk in itertools.zip_longest(src_chunks, tgt_chunks, fillvalue=[]):
        if len(src_chunk) != len(tgt_chunk):
            n_src = seen + len(src_chunk) + sum(map(len, src_chunks))
            n_tgt = seen + len(tgt_chunk) + sum(map(len, tgt_chunks))
            raise LanmtError(f"{src} has {n_src} lines but {tgt} has {n_tgt}")
        seen += len(src_chunk)
        yield src_chunk, tgt_chunk


# --- output that is never left half-written ---------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_sibling(target: Path, kind: str) -> Path:
    """A fresh, empty temporary directory next to `target` (same filesystem, so rename works)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}-", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; give it the usual permissions
    return tmp


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary path next to `target`; it becomes `target` only if the block succeeds."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished directory `tmp` to `target`, replacing what was there."""
    if not target.exists():
        os.rename(tmp, target)
        return
    old = _temp_sibling(target, "old")
    os.rename(target, old / "old")
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces `target` only if the block succeeds.

    On any error (or Ctrl-C) the temporary directory is removed, along with parent
    directories this call had to create, and `target` is left as it was.
    """
    target = Path(target)
    created = [p for p in [target.parent, *target.parent.parents] if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(target, "tmp")
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in created:  # innermost first
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
