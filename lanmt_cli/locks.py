"""One writer at a time: a lock per training stage, per `lanmt prepare` output folder and
per installed model.

`hold(lock_file, what)` takes the lock or fails at once with one line that says who holds
it (pid, host, since when, doing what); `hold(..., wait=say)` says so and waits instead.
The lock is `flock` on `lock_file`, which records its holder and is removed on release;
the kernel drops the lock of a process that dies, so a killed run never blocks the next
one. Where `fcntl` is missing (Windows) the `filelock` package takes its place, without
naming the holder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from lanmt_cli.errors import LanmtError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


def _holder(lock_file: Path) -> str:
    """`pid 123 on host h, since 2025-01-01 12:00:00, running: lanmt train ...`, if known."""
    try:
        info = json.loads(lock_file.read_text(encoding="utf-8"))
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} on {info['host']}, since {since}, running: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _record(fd: int) -> None:
    """Write who holds the lock into it; on a full disk the holder just stays unnamed."""
    command = " ".join(["lanmt", *sys.argv[1:]]) if sys.argv else "lanmt"
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({**info, "command": command}).encode())


def _busy(lock_file: Path, what: str) -> LanmtError:
    return LanmtError(
        f"{what} by another lanmt process ({_holder(lock_file)}); wait for it to end or "
        f"stop it (lock file: {lock_file})"
    )


@contextlib.contextmanager
def hold(lock_file: Path, what: str, wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold `lock_file` for the block, or raise a LanmtError naming the holder.

    `what` says what the lock protects, as in "{what} by another lanmt process (...)":
    for example "data/en-de is being prepared". With `wait`, a lock held elsewhere is
    waited for, after `wait(message)` has said so.

    Folders on the way to `lock_file` are created and, if still empty afterwards, removed.
    """
    from lanmt_cli.textio import writing

    lock_file = Path(lock_file)
    created = [p for p in [lock_file.parent, *lock_file.parent.parents] if not p.exists()]
    with writing(lock_file):
        lock_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        if fcntl is None:
            with _filelock(lock_file, what, wait):
                yield
        else:
            with _flock(lock_file, what, wait):
                yield
    finally:
        for parent in created:  # innermost first
            with contextlib.suppress(OSError):
                parent.rmdir()


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _waiting(lock_file: Path, what: str) -> str:
    return f"waiting for another lanmt process ({_holder(lock_file)}): {what}"


@contextlib.contextmanager
def _flock(lock_file: Path, what: str, wait: Callable[[str], None] | None) -> Iterator[None]:
    from lanmt_cli.textio import writing

    said = False
    while True:
        with writing(lock_file):
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if not _try_flock(fd):
                if wait is None:
                    raise _busy(lock_file, what)
                if not said:
                    wait(_waiting(lock_file, what))
                    said = True
                fcntl.flock(fd, fcntl.LOCK_EX)  # Ctrl-C and SIGTERM still end the wait
        except BaseException:
            os.close(fd)
            raise
        try:  # the previous holder may have removed the file after we opened it: retry
            same = os.path.samestat(os.stat(lock_file), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        _record(fd)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_file)  # still held: whoever opened it now will see it is stale
        os.close(fd)


@contextlib.contextmanager
def _filelock(lock_file: Path, what: str, wait: Callable[[str], None] | None) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = FileLock(lock_file)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if wait is None:
            raise _busy(lock_file, what) from None
        wait(_waiting(lock_file, what))
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def beside(path: Path) -> Path:
    """The lock file of output folder `path`: `.NAME.lock` next to it."""
    path = Path(os.path.abspath(path))
    return path.parent / f".{path.name}.lock"
