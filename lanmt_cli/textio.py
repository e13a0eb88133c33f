"""Line-aligned parallel text, plain or gzip, read as a stream; atomic output paths.

Every problem a user can cause (missing or empty file, misaligned files, bytes that
are not UTF-8, a broken gzip file) becomes one `LanmtError` line naming the file and,
where it helps, the line number. Lines end at "\\n" only: other Unicode line breaks
(U+2028, form feed, ...) stay inside a line, so source and target stay aligned.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import glob
import gzip
import io
import itertools
import os
import re
import shutil
import stat
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


def count_lines(path: Path, *, check: bool = True) -> int:
    """Number of lines in `path`; with `check`, checking that it is non-empty UTF-8 text.

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
                if check:
                    decoder.decode(block)
            except UnicodeDecodeError:
                raise _not_utf8(path) from None
            lines += block.count(b"\n")
            last = block[-1:]
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
    if not last and check:
        raise LanmtError(f"{path} is empty")
    return lines + (last not in (b"", b"\n"))


def check_parallel(src: Path, tgt: Path) -> int:
    """Check that `src` and `tgt` are non-empty UTF-8 files of equal line count; return it."""
    n_src = count_lines(src)
    n_tgt = count_lines(tgt)
    if n_src != n_tgt:
        raise LanmtError(f"{src} has {n_src} lines but {tgt} has {n_tgt}")
    return n_src


def copy_stream(src: BinaryIO, dst: BinaryIO, on_block=None, size: int = _BLOCK) -> int:
    """Copy `src` to `dst` in blocks of at most `size` bytes, calling `on_block(n)` after
    each; return the bytes copied."""
    copied = 0
    while block := src.read(size):
        dst.write(block)
        copied += len(block)
        if on_block is not None:
            on_block(len(block))
    return copied


def strip_bom(text: str) -> str:
    """The first line of a file without its byte-order mark (it is not text)."""
    return text.removeprefix("\ufeff")


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


@contextlib.contextmanager
def read_once(paths: list[Path], folder: Path) -> Iterator[list[Path]]:
    """Inputs to read several times (count, train, binarize), in the order given.

    A pipe or process substitution (`<(zcat a.gz)`, `/dev/stdin`) gives its lines only
    once: it is copied as it is into a hidden folder inside `folder` (removed when the
    block ends) and read from there. Errors name the input as the user gave it.
    """
    paths = [Path(p) for p in paths]
    spool = Path(folder) / ".inputs"
    copies: dict[Path, Path] = {}
    try:
        for i, path in enumerate(paths):
            try:
                st = os.stat(path)
            except OSError:
                continue  # reading it later says what is wrong
            if path in copies or stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                continue
            spool.mkdir(exist_ok=True)
            copies[path] = spool / f"input-{i}"
            with open(path, "rb") as src, open(copies[path], "wb") as dst:
                copy_stream(src, dst)
        yield [copies.get(p, p) for p in paths]
    except LanmtError as err:
        text = str(err)
        for given, copy in copies.items():
            text = text.replace(str(copy), str(given))
        if text == str(err):
            raise
        raise LanmtError(text) from None
    finally:
        shutil.rmtree(spool, ignore_errors=True)


# --- output that is never left half-written, and never replaces what is not a file ------
#
# A regular file (or a new path) is written under a temporary name next to it and renamed
# into place, so readers never see half of it. A symlink is followed: its target is written
# that way and the link stays. A character device (/dev/null), a FIFO or a socket is opened
# and written directly, as `sort -o` and `cp` do: renaming over it would destroy it.
# Every OSError on the way becomes one `LanmtError` line naming the path and the cause.

_CAUSES = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied (operation not permitted)",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EISDIR: "is a directory",
    errno.EFBIG: "file too large",
    errno.EIO: "input/output error",
}
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(err: BaseException) -> bool:
    """Whether `err` says the disk (or the user's quota) is full."""
    return getattr(err, "errno", None) in DISK_FULL


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def os_error_cause(err: BaseException) -> str:
    """A short cause for an OSError (or a library's I/O error naming `os error N`)."""
    code = getattr(err, "errno", None)
    if code is None:  # e.g. safetensors: "I/O error: No space left on device (os error 28)"
        found = _OS_ERROR.search(str(err))
        code = int(found.group(1)) if found else None
    if code in _CAUSES:
        return _CAUSES[code]
    text = getattr(err, "strerror", None) or (os.strerror(code) if code else str(err))
    return text[:1].lower() + text[1:]


class WriteError(LanmtError):
    """An output that could not be written: `cannot write PATH: CAUSE`."""

    def __init__(self, path: Path | str, cause: str):
        super().__init__(f"cannot write {path}: {cause}")
        self.path, self.cause = Path(path), cause


def write_error(path: Path | str, err: BaseException) -> WriteError:
    """The one-line error for a write of `path` that failed with `err`."""
    cause = os_error_cause(err)
    folder = Path(path).parent
    if getattr(err, "errno", None) == errno.ENOENT and folder.is_dir():
        cause = f"{folder} does not take new files"  # /proc, for one
    return WriteError(path, cause)


def is_io_error(err: BaseException) -> bool:
    """An OSError, or a library error wrapping one (safetensors' SafetensorError)."""
    if isinstance(err, LanmtError):
        return False
    return isinstance(err, OSError) or bool(_OS_ERROR.search(str(err)))


def _temporary_of(path: Path, out: Path) -> bool:
    """Whether `path` is, or lies in, a temporary sibling `.NAME.*` of output `out`."""
    return any(
        part.parent == out.parent and part.name.startswith(f".{out.name}.")
        for part in (path, *path.parents)
    )


def _concerns(name: str, outputs: list[Path]) -> bool:
    """Whether an error about file `name` is about one of `outputs`: the output itself, a
    folder on its way, a file inside it, or one of its temporary siblings."""
    path = Path(os.path.abspath(name))
    for out in (Path(os.path.abspath(o)) for o in outputs):
        if path == out or path in out.parents or out in path.parents or _temporary_of(path, out):
            return True
    return False


@contextlib.contextmanager
def writing(path: Path | str, *also: Path) -> Iterator[None]:
    """Turn a failed write of output `path` into a one-line `LanmtError`.

    An OSError that names a file other than the output (or `also`) is not about this
    output and passes through; so does a closed pipe (the reader went away).
    """
    try:
        yield
    except BrokenPipeError:
        raise
    except WriteError as err:  # a write inside this output's temporary folder: name the output
        where = Path(os.path.abspath(err.path))
        if any(_temporary_of(where, Path(os.path.abspath(o))) for o in [path, *also]):
            raise WriteError(path, err.cause) from None
        raise
    except Exception as err:
        if not is_io_error(err):
            raise
        name = getattr(err, "filename", None)
        if name is not None and not _concerns(str(name), [Path(path), *also]):
            raise
        raise write_error(path, err) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _resolve_output(target: Path) -> tuple[Path, os.stat_result | None]:
    """The path really written (symlinks followed) and its status (None: it does not exist)."""
    real = Path(os.path.realpath(target))
    try:
        return real, os.stat(real)
    except (FileNotFoundError, NotADirectoryError):
        return real, None


def is_special(st: os.stat_result | None) -> bool:
    """Something that is neither a regular file nor a folder: a device, FIFO or socket."""
    return st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode)


def _temp_sibling(target: Path, kind: str) -> Path:
    """A fresh, empty temporary directory next to `target` (same filesystem, so rename works)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}-", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; give it the usual permissions
    return tmp


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield the path to write for `target`; see the rules above.

    For a regular file or a new path, a temporary file next to it that becomes `target`
    only if the block succeeds (keeping the permissions of the file it replaces); for a
    character device, FIFO or socket, the file itself. A failed write raises a one-line
    `LanmtError` naming `target` and the cause, and leaves no temporary file behind.
    """
    target = Path(target)
    real, st = _resolve_output(target)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise LanmtError(f"{target} is a directory, not a file")
    if is_special(st):
        with writing(target, real):
            yield real
        return
    tmp = None
    try:
        with writing(target, real):
            fd, name = tempfile.mkstemp(prefix=f".{real.name}.tmp-", dir=real.parent)
            os.close(fd)
            tmp = Path(name)
            os.chmod(tmp, stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask())
            yield tmp
            os.replace(tmp, real)
            tmp = None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def remove_leftovers(target: Path) -> None:
    """Remove the temporary folders a killed writer of `target` left next to it
    (`.NAME.tmp-*`, `.NAME.old-*`). Only for a caller that holds `target`'s lock: nobody
    else may be writing them."""
    target = Path(os.path.abspath(target))
    for kind in ("tmp", "old"):
        for path in target.parent.glob(f".{glob.escape(target.name)}.{kind}-*"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)


def replace_dir(tmp: Path, target: Path, *, replace: bool = True) -> None:
    """Move the finished directory `tmp` to `target`, replacing what was there (if `replace`)."""
    if not target.exists() and not target.is_symlink():
        os.rename(tmp, target)
        return
    if not replace:
        raise LanmtError(f"{target} already exists; use --force to replace it")
    old = _temp_sibling(target, "old")
    os.rename(target, old / "old")
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old / "old", target)  # put the earlier one back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces `target` only if the block succeeds.

    A symlink to a folder is followed: the folder it points to is replaced, the link
    stays. On any error (or Ctrl-C) the temporary directory is removed, along with parent
    directories this call had to create, and `target` is left as it was; a failed write
    raises a one-line `LanmtError` naming `target` and the cause. With `replace=False`, a
    `target` that appeared meanwhile is not replaced (an error says so).
    """
    target = Path(target)
    real, st = _resolve_output(target)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise LanmtError(f"{target} exists and is not a directory")
    created = [p for p in [real.parent, *real.parent.parents] if not p.exists()]
    tmp = None
    try:
        with writing(target, real):
            real.parent.mkdir(parents=True, exist_ok=True)
            tmp = _temp_sibling(real, "tmp")
            yield tmp
            replace_dir(tmp, real, replace=replace)
            tmp = None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            for parent in created:  # innermost first
                with contextlib.suppress(OSError):
                    parent.rmdir()


def check_writable(
    path: Path, option: str = "", *, folder: bool = False, whole: bool = False
) -> None:
    """Fail now, with one line, when `path` (a file, or with `folder` a folder) cannot be
    written: before any slow work whose results would then be lost. A folder written
    `whole` (by `atomic_dir`) is made next to it: its parent must take new files.

    Creates and removes a probe file where the output will go; a device or FIFO is only
    checked for write permission (opening a FIFO would wait for a reader).
    """
    path = Path(path)
    label = f"{option} {path}" if option else f"cannot write {path}"
    real, st = _resolve_output(path)
    if folder:
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise LanmtError(f"{label}: exists and is not a directory")
        where = real.parent if whole else real
        while not where.exists():  # the folder is created later: probe its nearest ancestor
            where = where.parent
    else:
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise LanmtError(f"{label}: is a directory, not a file")
        if is_special(st):
            if not os.access(real, os.W_OK):
                raise LanmtError(f"{label}: permission denied")
            return
        where = real.parent
        if not where.is_dir():
            raise LanmtError(f"{label}: no such directory {path.parent}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".lanmt-probe-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        cause = os_error_cause(err)
        if err.errno == errno.ENOENT:
            cause = f"{where} does not take new files"
        raise LanmtError(f"{label}: {cause}") from None
