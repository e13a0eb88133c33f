"""`lanmt download`, `lanmt pack` and `lanmt models` against a real HTTP mirror.

The mirror is an http.server on 127.0.0.1 started by the test, serving an archive
packed from the tiny LaNMT bundle (tests/conftest.py). It honours Range requests and
can cut a transfer off mid-file or slow it down.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lanmt_cli import archive
from lanmt_cli.app import app

runner = CliRunner()


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    """Serves files of `server.root`, with byte ranges; see `Mirror` for the knobs."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        mirror: Mirror = self.server.mirror
        path = mirror.root / urllib.parse.unquote(self.path.lstrip("/"))
        ranged = self.headers.get("Range") if mirror.ranges else None
        mirror.requests.append((self.path, self.headers.get("Range")))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(re.fullmatch(r"bytes=(\d+)-", ranged)[1]) if ranged else 0
        if start >= len(data) and ranged:
            self.send_error(416)
            return
        self.send_response(206 if ranged else 200)
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        is_archive = path.suffix == ".gz"
        index_reads = sum(p.endswith("index.json") for p, _ in mirror.requests)
        if not is_archive and index_reads >= mirror.gate_after:
            mirror.gate.set()
        if is_archive:
            mirror.gate.wait(30)
        body = data[start:]
        if mirror.cut_after is not None and is_archive:  # dies after cut_after bytes
            body, mirror.cut_after = body[: mirror.cut_after], None
        for i in range(0, len(body), 16384):
            self.wfile.write(body[i : i + 16384])
            if mirror.delay:
                time.sleep(mirror.delay)

    def log_message(self, *args):
        pass


class Mirror:
    """An HTTP server in a thread, serving `root` at `url`."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self.cut_after: int | None = None
        self.delay = 0.0  # seconds after each 16 KiB block
        self.ranges = True  # honour Range requests
        self.gate = threading.Event()  # archives are served once it is set
        self.gate_after = 0  # set it at this many index.json requests
        self.gate.set()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), MirrorHandler)
        self.server.mirror = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def archive_requests(self) -> list[str | None]:
        return [rng for path, rng in self.requests if path.endswith(".tar.gz")]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def packed(tiny_bundle, tmp_path_factory) -> tuple[Path, dict]:
    """The tiny bundle packed as `tiny.tar.gz`, with its index entry."""
    out = tmp_path_factory.mktemp("packed")
    entry = archive.pack(tiny_bundle, out, name="tiny", description="tiny test model")
    return out / entry["file"], entry


@pytest.fixture
def mirror_dir(packed, tmp_path) -> Path:
    """A mirror folder: the archive and an index.json listing it."""
    root = tmp_path / "mirror"
    root.mkdir()
    shutil.copy(packed[0], root)
    archive.add_to_index(root / "index.json", packed[1])
    return root


@pytest.fixture
def mirror(mirror_dir):
    server = Mirror(mirror_dir)
    yield server
    server.close()


def lanmt(*args: str):
    return runner.invoke(app, list(args))


def clean(home: Path) -> None:
    """No temporary folder, partial download, lock file or stray file is left behind."""
    for folder in (home / "models", home / "downloads"):
        left = [p.name for p in folder.iterdir()] if folder.exists() else []
        assert [n for n in left if n.startswith(".") or n.endswith(".part")] == []
    assert not (home / "locks").exists() or not any((home / "locks").iterdir())


def test_download_then_translate_offline(mirror, home, tiny_bundle, tiny_task, tmp_path):
    result = lanmt("download", "tiny", "--mirror", mirror.url)  # with the progress bar
    assert result.exit_code == 0, result.output
    installed = home / "models" / "tiny"
    assert result.stdout.strip() == str(installed)
    assert "downloading tiny" in result.stderr
    assert (installed / "teacher" / "model.safetensors").read_bytes() == (
        tiny_bundle / "teacher" / "model.safetensors"
    ).read_bytes()
    clean(home)
    listed = {row["name"]: row for row in json.loads(lanmt("models", "--json").stdout)}
    assert listed["tiny"]["description"] == "tiny test model"
    assert listed["tiny"]["source"] == f"{mirror.url}/tiny.tar.gz"
    mirror.close()  # the mirror is gone: translation must not need it, nor any network

    sources = [src for src, _ in tiny_task[:20]]
    offline = (
        "import socket, sys\n"
        "def refuse(*a, **k): raise OSError('network access attempted')\n"
        "socket.socket.connect = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "from lanmt_cli.app import main\n"
        "sys.argv[0] = 'lanmt'\n"
        "main()\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", offline, "translate", "--model", "tiny", "--decoder", "one-shot"],
        input="\n".join(sources) + "\n",
        capture_output=True,
        text=True,
        env={**os.environ, "LANMT_HOME": str(home)},
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    outputs = run.stdout.splitlines()
    assert len(outputs) == len(sources)
    refs = [ref for _, ref in tiny_task[:20]]
    exact = sum(out == ref for out, ref in zip(outputs, refs, strict=True))
    assert exact >= len(refs) // 2, list(zip(outputs, refs, strict=True))


def test_a_cut_transfer_is_resumed(mirror, packed, home):
    size = packed[1]["size"]
    mirror.cut_after = size // 2
    first = lanmt("download", "tiny", "--mirror", mirror.url, "-q")
    assert first.exit_code == 1
    assert f"{mirror.url}/tiny.tar.gz" in first.stderr
    assert "kept" in first.stderr and "resume" in first.stderr
    (part,) = (home / "downloads").iterdir()
    assert part.stat().st_size == size // 2
    assert not (home / "models" / "tiny").exists()

    second = lanmt("download", "tiny", "--mirror", mirror.url, "-q")
    assert second.exit_code == 0, second.output
    assert mirror.archive_requests() == [None, f"bytes={size // 2}-"]
    assert (home / "models" / "tiny" / "config.json").is_file()
    clean(home)


def test_a_server_without_ranges_sends_it_all_again(mirror, packed, home):
    part = home / "downloads" / f"{packed[1]['sha256'][:16]}-tiny.tar.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 1000)  # an earlier partial download
    mirror.ranges = False
    result = lanmt("download", "tiny", "--mirror", mirror.url, "-q")
    assert result.exit_code == 0, result.output
    assert mirror.archive_requests() == ["bytes=1000-"]  # answered with the whole file
    assert (home / "models" / "tiny" / "config.json").is_file()
    clean(home)


def test_a_wrong_checksum_is_refused_and_deleted(mirror, mirror_dir, packed, home):
    archive.add_to_index(mirror_dir / "index.json", {**packed[1], "sha256": "0" * 64})
    result = lanmt("download", "tiny", "--mirror", mirror.url, "-q")
    assert result.exit_code == 1
    assert "checksum mismatch" in result.stderr and "deleted" in result.stderr
    assert "Traceback" not in result.output
    assert not (home / "models" / "tiny").exists()
    clean(home)


def test_an_archive_escaping_its_folder_is_refused(mirror, mirror_dir, tiny_bundle, home):
    evil = mirror_dir / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(tiny_bundle, arcname="evil")
        info = tarfile.TarInfo("evil/../../../escaped.txt")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"owned\n"))
    entry = {
        "name": "evil",
        "file": evil.name,
        "size": evil.stat().st_size,
        "sha256": archive.sha256_file(evil),
        "languages": {},
        "description": "",
        "licence": "",
    }
    archive.add_to_index(mirror_dir / "index.json", entry)
    result = lanmt("download", "evil", "--mirror", mirror.url, "-q")
    assert result.exit_code == 1
    assert "refusing member 'evil/../../../escaped.txt'" in result.stderr
    assert not (home / "models" / "evil").exists()
    assert list(home.parent.rglob("escaped.txt")) == []
    clean(home)


def test_two_concurrent_downloads_install_once(mirror, home):
    # The first archive transfer waits until both runs have read the index (the last thing
    # before taking the lock), then lasts a second: the second run must wait for the lock.
    mirror.gate.clear()
    mirror.gate_after = 2
    mirror.delay = 0.01
    cmd = [sys.executable, "-m", "lanmt_cli.app", "download", "tiny", "--mirror", mirror.url, "-q"]
    env = {**os.environ, "LANMT_HOME": str(home)}
    pipe = subprocess.PIPE
    procs = [subprocess.Popen(cmd, env=env, stdout=pipe, stderr=pipe, text=True) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert [out.strip() for out, _ in results] == [str(home / "models" / "tiny")] * 2
    assert len(mirror.archive_requests()) == 1  # the second run waited, then found it installed
    assert "waiting for another lanmt process" in results[0][1] + results[1][1]
    assert sorted(p.name for p in (home / "models").iterdir()) == ["tiny"]
    assert archive.check_bundle(home / "models" / "tiny")["languages"] == {"src": "en", "tgt": "de"}
    clean(home)


def test_file_urls_and_plain_folders_are_mirrors(mirror_dir, home, monkeypatch):
    result = lanmt("download", "tiny", "--mirror", mirror_dir.as_uri(), "-q")
    assert result.exit_code == 0, result.output
    assert lanmt("models", "remove", "tiny").exit_code == 0
    monkeypatch.setenv("LANMT_MIRROR", str(mirror_dir))
    result = lanmt("download", "tiny", "-q")
    assert result.exit_code == 0, result.output
    again = lanmt("download", "tiny")
    assert again.exit_code == 0 and "already installed" in again.stderr
    clean(home)


def test_an_index_elsewhere_names_its_own_mirror(mirror, home):
    result = lanmt("download", "tiny", "--index", f"{mirror.url}/index.json", "-q")
    assert result.exit_code == 0, result.output
    assert (home / "models" / "tiny" / "config.json").is_file()


def test_names_that_cannot_be_downloaded(mirror, mirror_dir, packed, home):
    planned = lanmt("download", "wmt14_ende")
    assert planned.exit_code == 1
    assert "wmt14_ende is not published yet" in planned.stderr
    assert "lanmt prepare" in planned.stderr and "lanmt train" in planned.stderr
    assert "http" not in planned.stderr  # no dead address

    unknown = lanmt("download", "nope", "--mirror", mirror.url)
    assert unknown.exit_code == 1
    assert (
        "unknown model 'nope'" in unknown.stderr
        and "available for download: tiny" in unknown.stderr
    )

    no_mirror = lanmt("download", "tiny", "--index", str(mirror_dir / "index.json"))
    assert no_mirror.exit_code == 0  # the index's own folder is its mirror
    assert lanmt("models", "remove", "tiny").exit_code == 0

    (mirror_dir / packed[0].name).unlink()
    missing = lanmt("download", "tiny", "--mirror", mirror.url, "-q")
    assert missing.exit_code == 1
    assert f"{mirror.url}/tiny.tar.gz" in missing.stderr and "404" in missing.stderr

    index = str(mirror_dir / "index.json")
    dead = lanmt("download", "tiny", "--mirror", "http://127.0.0.1:9", "--index", index)
    assert dead.exit_code == 1 and "http://127.0.0.1:9/tiny.tar.gz" in dead.stderr


def test_pack_then_install_from_file_then_list_and_remove(tiny_bundle, home, tmp_path):
    out = tmp_path / "site"
    packed = lanmt(
        "pack", str(tiny_bundle), "--name", "mine", "-o", str(out), "--licence", "CC-BY-4.0",
        "--index", str(out / "index.json"),
    )  # fmt: skip
    assert packed.exit_code == 0, packed.output
    entry = json.loads(packed.stdout)
    assert entry["sha256"] == archive.sha256_file(out / "mine.tar.gz")
    assert entry["licence"] == "CC-BY-4.0"
    assert json.loads((out / "index.json").read_text())["models"] == [entry]

    wrong = lanmt("download", "--from", str(out / "mine.tar.gz"), "--sha256", "0" * 64)
    assert wrong.exit_code == 1 and "checksum mismatch" in wrong.stderr
    assert (out / "mine.tar.gz").exists()
    installed = lanmt("download", "--from", str(out / "mine.tar.gz"))
    assert installed.exit_code == 0, installed.output
    assert installed.stdout.strip() == str(home / "models" / "mine")

    offline = {row["name"]: row for row in json.loads(lanmt("models", "--json").stdout)}
    assert offline["mine"]["sha256"] == entry["sha256"]  # recorded at install
    assert offline["mine"]["source"] == str((out / "mine.tar.gz").resolve())
    listing = lanmt("models", "--json", "--mirror", str(out))
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows["mine"]["status"] == "installed" and rows["mine"]["sha256"] == entry["sha256"]
    assert rows["wmt14_ende"]["status"] == "planned"
    table = lanmt("models", "list")
    assert table.exit_code == 0
    assert re.search(r"^mine\s+en-de\s+installed", table.stdout, re.M)

    removed = lanmt("models", "remove", "mine")
    assert removed.exit_code == 0 and not (home / "models" / "mine").exists()
    gone = lanmt("models", "remove", "mine")
    assert gone.exit_code == 1 and "mine is not installed" in gone.stderr
