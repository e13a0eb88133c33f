"""Model archives, installation and name resolution (lanmt_cli/archive.py, lanmt_cli/hub.py).

The bundle packed here is the real tiny LaNMT bundle with its teacher (tests/conftest.py);
hostile archives are written member by member with tarfile.
"""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import tarfile
from pathlib import Path

import pytest

from lanmt_cli import archive, fetch, hub
from lanmt_cli.errors import LanmtError


@pytest.fixture(autouse=True)
def home(home, tmp_path, monkeypatch) -> Path:
    """conftest's private data folder, for every test here; and no embedded default model."""
    monkeypatch.setattr(hub, "DEFAULT_MODEL_DIR", tmp_path / "no-default-model")
    return home


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="module")
def packed(tiny_bundle, tmp_path_factory) -> tuple[Path, dict]:
    """The tiny bundle packed as `tiny.tar.gz`, and its index entry."""
    out = tmp_path_factory.mktemp("packed")
    entry = archive.pack(tiny_bundle, out, name="tiny", description="tiny test model")
    return out / entry["file"], entry


def leftovers(home: Path) -> list[str]:
    """Hidden (temporary) entries in the models folder."""
    models = home / "models"
    return (
        sorted(p.name for p in models.iterdir() if p.name.startswith("."))
        if models.exists()
        else []
    )


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def hostile_archive(path: Path, bundle: Path, extra: list[tarfile.TarInfo]) -> Path:
    """A .tar.gz holding the bundle as `tiny/`, then the `extra` members."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(bundle, arcname="tiny")
        for info in extra:
            data = b"owned\n" if info.isfile() else None
            if data is not None:
                info.size = len(data)
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return path


# --- packing ----------------------------------------------------------------------


def test_pack_makes_one_top_folder_and_a_true_entry(packed, tiny_bundle):
    path, entry = packed
    assert entry["name"] == "tiny" and entry["file"] == "tiny.tar.gz"
    assert entry["languages"] == {"src": "en", "tgt": "de"}
    assert entry["size"] == path.stat().st_size
    assert entry["sha256"] == archive.sha256_file(path)
    assert entry["description"] == "tiny test model" and entry["licence"] == "unspecified"
    with tarfile.open(path) as tar:
        names = tar.getnames()
        assert all(m.isfile() or m.isdir() for m in tar.getmembers())
    assert {n.split("/")[0] for n in names} == {"tiny"}
    assert "tiny/teacher/config.json" in names and "tiny/model.safetensors" in names


def test_pack_is_reproducible_and_xz_works(packed, tiny_bundle, tmp_path):
    again = archive.pack(tiny_bundle, tmp_path, name="tiny", description="tiny test model")
    assert again["sha256"] == packed[1]["sha256"]
    xz = archive.pack(tiny_bundle, tmp_path, name="tiny", compression="xz")
    assert xz["file"] == "tiny.tar.xz"
    installed = hub.install_archive(tmp_path / xz["file"])
    assert files_of(installed) == files_of(tiny_bundle)


def test_pack_refuses_what_is_not_a_bundle(tmp_path, tiny_bundle_copy):
    (tmp_path / "junk").mkdir()
    with pytest.raises(LanmtError, match="missing config.json"):
        archive.pack(tmp_path / "junk", tmp_path)
    with pytest.raises(LanmtError, match="outside the bundle"):
        archive.pack(tiny_bundle_copy, tiny_bundle_copy / "dist")
    assert not (tiny_bundle_copy / "dist").exists()
    with pytest.raises(LanmtError, match="not a valid model name"):
        archive.check_name("../evil")


def test_add_to_index_replaces_an_entry_of_the_same_name(packed, tmp_path):
    index = tmp_path / "index.json"
    entry = packed[1]
    archive.add_to_index(index, entry)
    archive.add_to_index(index, {**entry, "description": "newer"})
    archive.add_to_index(index, {**entry, "name": "other"})
    models = json.loads(index.read_text())["models"]
    assert [(m["name"], m["description"]) for m in models] == [
        ("other", entry["description"]),
        ("tiny", "newer"),
    ]
    loaded = hub.read_index(str(index))
    assert loaded.entries["tiny"].sha256 == entry["sha256"]
    assert loaded.mirror == str(tmp_path)  # archives are looked for beside the index


# --- installing -------------------------------------------------------------------


def test_install_archive_installs_a_faithful_copy(packed, tiny_bundle, home):
    path = hub.install_archive(packed[0])
    assert path == home / "models" / "tiny"
    assert files_of(path) == files_of(tiny_bundle)
    assert hub.installed() == {"tiny": path}
    assert leftovers(home) == []


def test_install_again_keeps_or_replaces(packed, home):
    path = hub.install_archive(packed[0])
    (path / "marker").write_text("kept")
    hub.install_archive(packed[0])  # already installed: left alone
    assert (path / "marker").exists()
    hub.install_archive(packed[0], force=True)
    assert not (path / "marker").exists() and (path / "config.json").is_file()
    assert leftovers(home) == []


def test_install_under_another_name_and_checksums(packed, home):
    path = hub.install_archive(packed[0], name="renamed", sha256=packed[1]["sha256"])
    assert path.name == "renamed" and (path / "teacher" / "config.json").is_file()
    with pytest.raises(LanmtError, match="checksum mismatch"):
        hub.install_archive(packed[0], name="other", sha256="0" * 64)
    assert packed[0].exists()  # the user's archive is never deleted
    with pytest.raises(LanmtError, match="shipped with lanmt"):
        hub.install_archive(packed[0], name="default")


@pytest.mark.parametrize(
    "member, why",
    [
        (tarfile.TarInfo("../evil.txt"), "leaves the model folder"),
        (tarfile.TarInfo("tiny/../../evil.txt"), "leaves the model folder"),
        (tarfile.TarInfo("/tmp/evil.txt"), "leaves the model folder"),
        ((tarfile.SYMTYPE, "tiny/link", "/etc/passwd"), "links"),
        ((tarfile.LNKTYPE, "tiny/hard", "tiny/config.json"), "links"),
        ((tarfile.FIFOTYPE, "tiny/fifo", ""), "not a plain file"),
        (tarfile.TarInfo("other/file.txt"), "exactly one top-level folder"),
        (tarfile.TarInfo("loose.txt"), "exactly one top-level folder"),
    ],
)
def test_hostile_archives_are_refused_whole(member, why, tiny_bundle, tmp_path, home):
    if isinstance(member, tuple):
        kind, name, target = member
        member = tarfile.TarInfo(name)
        member.type, member.linkname = kind, target
    bad = hostile_archive(tmp_path / "bad.tar.gz", tiny_bundle, [member])
    with pytest.raises(LanmtError, match=why):
        hub.install_archive(bad, name="tiny")
    assert not (home / "models" / "tiny").exists()
    assert leftovers(home) == []
    assert not (home / "evil.txt").exists() and not (home / "models" / "evil.txt").exists()


def test_archives_without_a_valid_bundle_are_refused(tmp_path, home):
    not_tar = tmp_path / "x.tar.gz"
    not_tar.write_bytes(b"this is not an archive")
    with pytest.raises(LanmtError, match="not a valid model archive"):
        hub.install_archive(not_tar, name="x")
    empty_model = tmp_path / "m"
    (empty_model / "m").mkdir(parents=True)
    (empty_model / "m" / "readme.txt").write_text("no model here")
    with tarfile.open(tmp_path / "m.tar.gz", "w:gz") as tar:
        tar.add(empty_model / "m", arcname="m")
    with pytest.raises(LanmtError, match="no valid model bundle"):
        hub.install_archive(tmp_path / "m.tar.gz")
    assert leftovers(home) == [] and hub.installed() == {}


def test_a_full_disk_during_install_leaves_nothing(packed, home, monkeypatch):
    real_copy = archive.copy_stream

    def copy_until_full(src, dst, on_block=None):
        if dst.name.endswith("model.safetensors"):
            dst.write(src.read(100))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(src, dst, on_block)

    monkeypatch.setattr(archive, "copy_stream", copy_until_full)
    with pytest.raises(LanmtError, match="disk full while installing tiny.*nothing was installed"):
        hub.install_archive(packed[0])
    assert hub.installed() == {}
    assert leftovers(home) == []


def test_a_full_disk_during_download_deletes_the_partial_file(packed, tmp_path, monkeypatch):
    def full(src, dst, on_block=None, size=1 << 16):
        dst.write(src.read(10))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fetch, "copy_stream", full)
    part = tmp_path / "dl" / "tiny.part"
    with pytest.raises(LanmtError, match="disk full.*deleted"):
        fetch.fetch(str(packed[0]), part, size=packed[1]["size"], progress=False)
    assert not part.exists()


def test_leftovers_of_a_killed_install_are_cleaned_next_time(packed, home):
    stale = home / "models" / ".tiny.tmp-dead"
    (stale / "tiny").mkdir(parents=True)
    neighbour = home / "models" / ".tiny.v2.tmp-busy"  # model tiny.v2, being installed
    neighbour.mkdir()
    hub.install_archive(packed[0])
    assert leftovers(home) == [neighbour.name]


def test_remove(packed, home):
    hub.install_archive(packed[0])
    assert hub.remove("tiny") == home / "models" / "tiny"
    assert hub.installed() == {} and leftovers(home) == []
    with pytest.raises(LanmtError, match="tiny is not installed"):
        hub.remove("tiny")
    with pytest.raises(LanmtError, match="cannot be removed"):
        hub.remove("default")


# --- resolution: --model NAME|DIR -------------------------------------------------


def test_resolve_without_a_default_model_says_so(no_network):
    with pytest.raises(LanmtError, match="no default model ships in this build"):
        hub.resolve_model(None)


def test_resolve_the_embedded_default(tiny_bundle, monkeypatch, no_network):
    monkeypatch.setattr(hub, "DEFAULT_MODEL_DIR", tiny_bundle)
    assert hub.resolve_model(None) == tiny_bundle
    assert hub.resolve_model("default") == tiny_bundle
    rows = {r["name"]: r for r in hub.listing()}
    assert rows["default"]["status"] == "embedded"
    assert rows["default"]["languages"] == {"src": "en", "tgt": "de"}


def test_resolve_folders_and_installed_names_offline(packed, tiny_bundle, home, no_network):
    assert hub.resolve_model(str(tiny_bundle)) == tiny_bundle
    hub.install_archive(packed[0])
    assert hub.resolve_model("tiny") == home / "models" / "tiny"


def test_resolve_explains_names_it_cannot_use(packed, tmp_path, monkeypatch, no_network):
    index = tmp_path / "index.json"
    archive.add_to_index(index, packed[1])
    monkeypatch.setenv("LANMT_INDEX", str(index))
    monkeypatch.setenv("LANMT_MIRROR", "https://example.invalid/models")  # never contacted
    with pytest.raises(LanmtError, match="not installed; get it with `lanmt download tiny`"):
        hub.resolve_model("tiny")
    with pytest.raises(LanmtError, match="wmt14_ende is not published yet.*lanmt prepare"):
        hub.resolve_model("wmt14_ende")
    with pytest.raises(LanmtError, match="unknown model 'nope'.*available for download: tiny"):
        hub.resolve_model("nope")
    with pytest.raises(LanmtError, match="no such model folder"):
        hub.resolve_model("./missing/model")


def test_index_entries_are_checked(tmp_path):
    good = {"name": "m", "file": "m.tar.gz", "size": 1, "sha256": "a" * 64}
    for bad in (
        {**good, "sha256": "xyz"},
        {**good, "file": "../m.tar.gz"},
        {**good, "name": "default"},
        {k: v for k, v in good.items() if k != "size"},
    ):
        (tmp_path / "index.json").write_text(json.dumps({"models": [bad]}))
        with pytest.raises(LanmtError, match="models\\[0\\]"):
            hub.read_index(str(tmp_path / "index.json"))
    (tmp_path / "index.json").write_text("[]")
    with pytest.raises(LanmtError, match="not a lanmt model index"):
        hub.read_index(str(tmp_path / "index.json"))


def test_the_shipped_index_offers_no_download_yet():
    """No model is published for download (2026-12-07): the shipped index lists none and
    names no mirror, so `lanmt models` shows the planned ones (and the embedded model, which
    this file's fixture hides). Publishing a model changes this test: list it with the
    mirror its archive comes from, and check its size and sha256 against the archive."""
    assert json.loads(hub.SHIPPED_INDEX.read_text()) == {
        "format_version": 1,
        "mirror": None,
        "models": [],
    }
    shipped = hub.read_index(str(hub.SHIPPED_INDEX))
    assert (shipped.entries, shipped.mirror) == ({}, None)
    rows = [(r["name"], r["status"]) for r in hub.listing()]
    assert rows == [(name, "planned") for name in sorted(hub.PLANNED)]


def test_listing_shows_every_kind_of_model(packed, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive.add_to_index(mirror / "index.json", {**packed[1], "name": "remote_only"})
    hub.install_archive(packed[0])
    rows = {r["name"]: r for r in hub.listing(mirror=str(mirror))}
    assert rows["tiny"]["status"] == "installed" and rows["tiny"]["path"]
    assert rows["remote_only"]["status"] == "available"
    assert rows["remote_only"]["sha256"] == packed[1]["sha256"]
    assert rows["wmt14_ende"]["status"] == "planned"
    assert len({tuple(r) for r in rows.values()}) == 1  # the same keys in every row
    (tmp_path / "home" / "models" / "tiny" / "spm.model").unlink()
    damaged = {r["name"]: r for r in hub.listing()}["tiny"]
    assert damaged["status"] == "damaged" and "missing file spm.model" in damaged["description"]


def test_fetch_from_a_plain_folder_resumes_a_partial_file(packed, tmp_path):
    source, entry = packed
    part = tmp_path / "dl" / "x.part"
    part.parent.mkdir()
    part.write_bytes(source.read_bytes()[:1000])
    fetch.fetch(str(source), part, size=entry["size"], progress=False)
    assert part.read_bytes() == source.read_bytes()
    assert fetch.join(f"file://{tmp_path}", "a b.tar.gz").endswith("/a%20b.tar.gz")
    assert (
        fetch.local_path(fetch.join(f"file://{tmp_path}", "a b.tar.gz")) == tmp_path / "a b.tar.gz"
    )
    assert os.path.samefile(fetch.local_path(fetch.join(str(tmp_path), "dl")), part.parent)
