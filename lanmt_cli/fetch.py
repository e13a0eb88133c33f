"""Fetching files from a mirror: http(s), `file://` URLs and plain directories alike.

`fetch` appends to a `.part` file and resumes it with an HTTP range request, so an
interrupted transfer goes on where it stopped. The progress bar goes to stderr.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

from lanmt_cli import __version__
from lanmt_cli.errors import LanmtError
from lanmt_cli.progress import counter
from lanmt_cli.textio import copy_stream, is_disk_full

URL_SCHEMES = ("http", "https", "file")
TIMEOUT_S = 30.0  # per socket operation, not for the whole transfer
_HEADERS = {"User-Agent": f"lanmt/{__version__}"}


def is_remote(location: str) -> bool:
    return urllib.parse.urlsplit(location).scheme in ("http", "https")


def local_path(location: str) -> Path | None:
    """The file a `file://` URL or plain path names; None for http(s)."""
    parts = urllib.parse.urlsplit(location)
    if parts.scheme == "file":
        return Path(urllib.request.url2pathname(parts.path))
    if parts.scheme in URL_SCHEMES:
        return None
    return Path(location).expanduser()  # a plain path (also `C:\\...` on Windows)


def join(base: str, file: str) -> str:
    """The location of `file` inside the mirror `base` (a URL or a directory)."""
    if urllib.parse.urlsplit(base).scheme in URL_SCHEMES:
        return base.rstrip("/") + "/" + urllib.parse.quote(file)
    return str(Path(base).expanduser() / file)


def parent(location: str) -> str:
    """The folder a URL or path lies in (where an index's archives are looked for)."""
    if urllib.parse.urlsplit(location).scheme in URL_SCHEMES:
        return location.rsplit("/", 1)[0]
    return str(Path(location).expanduser().parent)


def read_small(location: str) -> bytes | None:
    """The bytes of a small file such as an index; None when it does not exist."""
    path = local_path(location)
    try:
        if path is not None:
            return path.read_bytes() if path.is_file() else None
        request = urllib.request.Request(location, headers=_HEADERS)
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.read()
    except urllib.error.HTTPError as err:
        if err.code in (404, 410):
            return None
        raise LanmtError(f"cannot read {location}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None) or err
        raise LanmtError(f"cannot read {location}: {reason}") from None


def _open_remote(url: str, offset: int) -> tuple[BinaryIO, int, int | None]:
    """Open `url` from byte `offset`: (stream, offset it really starts at, total size)."""
    headers = dict(_HEADERS)
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S
        )
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the partial file does not fit: start over
            return _open_remote(url, 0)
        hint = "; is the file on the mirror?" if err.code == 404 else ""
        raise LanmtError(f"cannot download {url}: HTTP {err.code} {err.reason}{hint}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None) or err
        raise LanmtError(f"cannot download {url}: {reason}") from None
    length = response.headers.get("Content-Length")
    if response.status == 206:
        # Content-Range: bytes START-END/TOTAL
        span, _, total = response.headers.get("Content-Range", "").partition("/")
        start = span.split()[-1].split("-")[0] if span else ""
        if start != str(offset):
            response.close()
            return _open_remote(url, 0)
        return response, offset, int(total) if total.isdigit() else None
    return response, 0, None if length is None else int(length)  # no range support


def _open(location: str, offset: int) -> tuple[BinaryIO, int, int | None]:
    path = local_path(location)
    if path is None:
        return _open_remote(location, offset)
    try:
        f = open(path, "rb")  # noqa: SIM115 (the caller closes it)
    except OSError as err:
        raise LanmtError(f"cannot read {location}: {err.strerror}") from None
    total = os.fstat(f.fileno()).st_size
    offset = offset if offset <= total else 0
    f.seek(offset)
    return f, offset, total


def fetch(
    location: str,
    part: Path,
    *,
    size: int | None = None,
    progress: bool = True,
    label: str = "download",
) -> Path:
    """Download `location` into `part`, resuming what `part` already holds.

    On a network failure the partial file is kept (the error says so); on a full disk
    it is deleted. Returns `part`, complete but not yet checked.
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        have = 0
    if size is not None and have == size:
        return part  # finished earlier; the caller checks it
    stream, start, total = _open(location, have)
    total = total if total is not None else size
    done = start

    def copied(n: int) -> None:
        nonlocal done
        done += n
        advance(n)

    try:
        with (
            stream,
            open(part, "r+b" if part.exists() else "wb") as out,
            counter(total, label, start, show=progress, nbytes=True, tty_only=False) as advance,
        ):
            out.truncate(start)
            out.seek(start)
            copy_stream(stream, out, copied, size=1 << 16)
    except OSError as err:
        if is_disk_full(err):
            part.unlink(missing_ok=True)
            raise LanmtError(
                f"disk full while downloading {location} into {part.parent}; "
                "the partial download was deleted"
            ) from None
        raise _broken(location, part, done, total, err) from None
    except http.client.HTTPException as err:
        raise _broken(location, part, done, total, err) from None
    if total is not None and done < total:
        raise _broken(location, part, done, total, "the connection closed early")
    return part


def _broken(location: str, part: Path, done: int, total: int | None, why) -> LanmtError:
    of = f" of {total}" if total is not None else ""
    return LanmtError(
        f"download of {location} broke off after {done}{of} bytes ({why}); "
        f"the partial file {part} is kept: run the same command again to resume"
    )
