"""Outputs never destroy anything, and every failed write is one clean line (issue 14).

`lanmt translate -o`, `lanmt bench --json/--output-dir`, `lanmt pack`, bundles and prepared
folders all write through `lanmt_cli.textio`: a temporary file renamed into place for a
regular file or a new path; a symlink's target written that way, the link kept; a character
device or FIFO opened and written directly. Write failures are made for real, in ways that
stop root too: /dev/full (disk full), /proc (takes no new files), /sys (permission denied).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lanmt_cli.app import app
from lanmt_cli.errors import LanmtError
from lanmt_cli.textio import atomic_dir, atomic_file, check_writable, os_error_cause
from tests.processes import cli, wait_for

ROOT = Path(__file__).resolve().parent.parent
LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, /sys, /dev/full")
INPUT = "red dog\nbig cat\n"


def lanmt(*args, input: str | None = None):
    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def translate(bundle: Path, *args, input: str = INPUT):
    return lanmt("translate", "-m", bundle, "-d", "one-shot", *args, input=input)


@pytest.fixture(scope="module")
def expected(tiny_bundle) -> str:
    """What `lanmt translate` prints for INPUT on stdout."""
    result = translate(tiny_bundle)
    assert result.exit_code == 0, result.output
    return result.stdout


def char_device(tmp_path: Path) -> Path:
    """A character device to write to: a private copy of /dev/null where we may make one
    (root), so that a regression could never replace the system's; else /dev/null itself."""
    if os.geteuid() == 0:
        dev = tmp_path / "null"
        try:
            os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            with open(dev, "wb") as f:
                f.write(b"probe")
            return dev
        except OSError:  # a filesystem mounted nodev
            dev.unlink(missing_ok=True)
    return Path("/dev/null")


def unwritable_dir(tmp_path: Path) -> Path:
    """A folder this process may not create files in, root or not."""
    if os.geteuid() == 0:
        return Path("/sys")  # sysfs: EACCES even for root
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return locked


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- special files, links and regular files -----------------------------------------------


@LINUX
def test_a_character_device_is_written_not_replaced(tiny_bundle, tmp_path):
    dev = char_device(tmp_path)
    result = translate(tiny_bundle, "-o", dev)
    assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(os.stat(dev).st_mode)  # still a device, not a regular file
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert hidden(tmp_path) == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_a_fifo_gets_every_byte_and_stays_a_fifo(tiny_bundle, tmp_path, expected):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    result = translate(tiny_bundle, "-o", fifo)
    reader.join(60)
    if reader.is_alive():  # nobody wrote to the FIFO: release the reader, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert result.exit_code == 0, result.output
    assert got == [expected]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert hidden(tmp_path) == []


def test_a_symlink_is_kept_and_its_target_written(tiny_bundle, tmp_path, expected):
    target = tmp_path / "real.txt"
    target.write_text("old\n")
    link = tmp_path / "link.txt"
    link.symlink_to(target.name)
    result = translate(tiny_bundle, "-o", link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and os.readlink(link) == target.name
    assert target.read_text() == expected
    dangling = tmp_path / "dangling.txt"
    dangling.symlink_to("new.txt")  # a link to a file that does not exist yet
    assert translate(tiny_bundle, "-o", dangling).exit_code == 0
    assert dangling.is_symlink() and (tmp_path / "new.txt").read_text() == expected
    assert hidden(tmp_path) == []


def test_a_regular_file_is_replaced_whole_keeping_its_permissions(tiny_bundle, tmp_path, expected):
    out = tmp_path / "out.txt"
    out.write_text("old\n")
    out.chmod(0o640)
    result = translate(tiny_bundle, "-o", out)
    assert result.exit_code == 0, result.output
    assert out.read_text() == expected
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert hidden(tmp_path) == []


def test_atomic_dir_follows_a_link_and_can_refuse_to_replace(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "old.txt").write_text("old")
    link = tmp_path / "link"
    link.symlink_to(real.name)
    with atomic_dir(link) as tmp:
        (tmp / "new.txt").write_text("new")
    assert link.is_symlink() and sorted(p.name for p in real.iterdir()) == ["new.txt"]
    with pytest.raises(LanmtError, match="already exists"), atomic_dir(link, replace=False) as tmp:
        (tmp / "newer.txt").write_text("newer")
    assert sorted(p.name for p in real.iterdir()) == ["new.txt"]
    assert hidden(tmp_path) == []


# --- failed writes: one line, exit 1, nothing left ------------------------------------------


@LINUX
@pytest.mark.parametrize("case", ["disk full", "no new files", "permission denied"])
def test_a_failed_write_is_one_line_and_leaves_nothing(tiny_bundle, tmp_path, case):
    out, cause = {
        "disk full": (Path("/dev/full"), "disk full"),
        "no new files": (Path("/proc/lanmt-test-out.txt"), "/proc does not take new files"),
        "permission denied": (unwritable_dir(tmp_path) / "out.txt", "permission denied"),
    }[case]
    result = translate(tiny_bundle, "-o", out)
    assert result.exit_code == 1
    assert result.stderr == f"error: cannot write {out}: {cause}\n"
    assert not out.exists() or out == Path("/dev/full")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    assert hidden(out.parent if out.parent.is_relative_to(tmp_path) else tmp_path) == []


def test_every_os_error_has_a_short_cause():
    assert os_error_cause(OSError(errno.EROFS, "Read-only file system")) == "read-only file system"
    assert os_error_cause(OSError(errno.ENOSPC, "No space left on device")) == "disk full"
    assert os_error_cause(OSError(errno.EACCES, "Permission denied")) == "permission denied"
    assert os_error_cause(OSError(errno.EDQUOT, "Disk quota exceeded")) == "disk quota exceeded"
    assert os_error_cause(OSError(errno.EFBIG, "File too large")) == "file too large"

    class SafetensorError(Exception):  # how safetensors reports an OSError of its own
        pass

    wrapped = SafetensorError("Error while serializing: I/O error: No space left (os error 28)")
    assert os_error_cause(wrapped) == "disk full"


@LINUX
def test_atomic_file_and_check_writable_name_the_path_and_cause(tmp_path):
    full = pytest.raises(LanmtError, match=r"^cannot write /dev/full: disk full$")
    with full, atomic_file(Path("/dev/full")) as tmp:
        tmp.write_text("x")
    with pytest.raises(LanmtError, match=r"^--json /proc/x.json: /proc does not take new files$"):
        check_writable(Path("/proc/x.json"), "--json")
    blocked = unwritable_dir(tmp_path)
    with pytest.raises(LanmtError, match=r"^--output-dir .*: permission denied$"):
        check_writable(blocked / "new" / "dir", "--output-dir", folder=True)
    check_writable(tmp_path / "a" / "b", folder=True)  # made later: its ancestor is writable
    check_writable(Path("/dev/full"), "--json")  # a device is written directly: allowed


# --- signals ------------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_removes_the_temporary_output_and_exits_143(tiny_bundle, tmp_path):
    out = tmp_path / "out.txt"
    p = cli("translate", "-m", tiny_bundle, "-d", "one-shot", "-o", out,
             stdin=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        p.stdin.write(b"red dog\n")
        p.stdin.flush()  # stdin stays open: lanmt waits for more, its output half-written
        wait_for(lambda: hidden(tmp_path), what="the temporary output file")
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 143
        err = p.stderr.read()
        assert err.endswith(b"terminated\n") and b"Traceback" not in err
        assert list(tmp_path.iterdir()) == []  # neither out.txt nor .out.txt.tmp-*
    finally:
        p.kill()
        p.wait()


# --- bench: check outputs first, print the table before writing ---------------------------


@pytest.fixture(scope="module")
def sources(tiny_task, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bench-src") / "test.en"
    path.write_text("".join(f"{s}\n" for s, _ in tiny_task[:6]))
    return path


BENCH = ["-d", "one-shot", "--max-sentences", 4, "--latency-sentences", 2, "--warmup", 0]


@LINUX
@pytest.mark.parametrize("option", ["--json", "--plot", "--output-dir"])
def test_bench_checks_every_output_before_loading_a_model(sources, tmp_path, option):
    path = Path("/proc/lanmt-bench/out") if option == "--output-dir" else Path("/proc/b.json")
    if option == "--plot":
        path = unwritable_dir(tmp_path) / "plot.png"
    extra = ["--evaluate", "--ref", sources] if option == "--plot" else []
    # a model that does not exist: the output is refused before any model is looked for
    result = lanmt("bench", "-m", tmp_path / "no-model", "--src", sources, option, path, *extra)
    assert result.exit_code == 1
    cause = "permission denied" if option == "--plot" else "/proc does not take new files"
    assert result.stderr == f"error: {option} {path}: {cause}\n"


@LINUX
def test_bench_prints_its_table_before_a_write_fails(tiny_bundle, sources):
    result = lanmt("bench", "-m", tiny_bundle, "--src", sources, *BENCH, "--json", "/dev/full")
    assert result.exit_code == 1
    assert "one-shot" in result.stdout and "beam (baseline)" in result.stdout  # the results
    assert result.stderr.endswith("error: cannot write /dev/full: disk full\n")
    assert "Traceback" not in result.output


@pytest.mark.parametrize("existing", [False, True], ids=["new folder", "existing folder"])
def test_bench_translations_that_run_out_of_room_leave_no_part(
    tiny_bundle, sources, full_disk, existing
):
    """Room for two of the three files (sources, one-shot, beam): none of them is kept, and
    a folder that was there keeps what it held."""
    filler = full_disk / "filler"
    out = full_disk / "out"
    if existing:
        os.truncate(filler, filler.stat().st_size - 4096)
        out.mkdir()
        (out / "notes.txt").write_text("mine\n")
    os.truncate(filler, filler.stat().st_size - 8192)  # two pages of the tmpfs
    result = lanmt("bench", "-m", tiny_bundle, "--src", sources, *BENCH, "--output-dir", out)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.endswith(f"error: cannot write {out}: disk full\n")
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler", "out"][: 1 + existing]
    if existing:
        assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_bench_writes_its_json_through_a_symlink(tiny_bundle, sources, tmp_path):
    target = tmp_path / "bench.json"
    link = tmp_path / "latest.json"
    link.symlink_to(target.name)
    result = lanmt("bench", "-m", tiny_bundle, "--src", sources, *BENCH, "--json", link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and json.loads(target.read_text())["decoders"]
    assert hidden(tmp_path) == []


# --- pack: archives any web server can serve ----------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_pack_writes_archives_with_the_usual_permissions(tiny_bundle, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        result = lanmt("pack", tiny_bundle, "--name", "m", "-o", tmp_path)
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((tmp_path / "m.tar.gz").stat().st_mode) == mode
    assert hidden(tmp_path) == []


@LINUX
def test_pack_into_an_unwritable_folder_is_one_line(tiny_bundle):
    result = lanmt("pack", tiny_bundle, "--name", "m", "-o", "/proc")
    assert result.exit_code == 1
    assert result.stderr == "error: cannot write /proc/m.tar.gz: /proc does not take new files\n"
