"""Model archives: pack a bundle into one `.tar.gz`/`.tar.xz`, unpack one safely.

An archive holds exactly one top-level folder, the bundle, named after the model:

    NAME/config.json  NAME/model.safetensors  NAME/spm.model  NAME/teacher/...

Packing is reproducible (sorted members, owner and times zeroed), so the same bundle
always gives the same sha256. Unpacking trusts nothing: every member is checked before
anything is written, and only plain files and folders that stay inside the target are
accepted; links, devices, absolute paths and `..` are refused.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import re
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from lanmt_cli.bundle import CONFIG_FILE, read_config, standalone_config
from lanmt_cli.cache import sha256_file  # noqa: F401  (re-exported: hub, tests)
from lanmt_cli.errors import LanmtError
from lanmt_cli.textio import atomic_file, copy_stream, writing

SUFFIXES = {"gz": ".tar.gz", "xz": ".tar.xz"}
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_BLOCK = 1 << 20
_BAD_ARCHIVE = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


def check_name(name: str) -> str:
    """A model name is one path component of letters, digits, `.`, `_`, `-`."""
    if not NAME_RE.fullmatch(name) or name.endswith((".part", ".lock")):
        raise LanmtError(
            f"{name!r} is not a valid model name (letters, digits, '.', '_', '-'; "
            "starting with a letter or digit)"
        )
    return name


def check_bundle(path: Path) -> dict:
    """Validate a bundle and its nested teacher (no torch); return its config."""
    meta = read_config(path)  # also checks that the teacher lies inside the bundle
    if meta.get("teacher"):
        read_config(path / meta["teacher"])
    return meta


def index_entry(
    meta: dict, name: str, archive: Path, description: str | None, licence: str | None
) -> dict:
    """The index entry of an archive: what `lanmt download` needs to find and check it."""
    info = meta.get("info") or {}
    languages = meta.get("languages") or {}
    pair = "-".join(languages[k] for k in ("src", "tgt") if k in languages)
    kind = {"lanmt": "LaNMT", "transformer": "Transformer"}[meta["model"]["kind"]]
    default = " ".join(word for word in (kind, pair, "model") if word)
    return {
        "name": name,
        "languages": languages,
        "description": description or info.get("description") or default,
        "file": archive.name,
        "size": archive.stat().st_size,
        "sha256": sha256_file(archive),
        "licence": licence or info.get("licence") or info.get("license") or "unspecified",
    }


def _members(bundle: Path, name: str) -> list[tuple[Path, str]]:
    """(file on disk, name in the archive) for the bundle folder and all it holds, sorted."""
    found = [(bundle, name)]
    for root, dirs, files in os.walk(bundle):
        dirs.sort()
        for d in dirs:
            if (Path(root) / d).is_symlink():
                raise LanmtError(f"{Path(root) / d}: a linked folder cannot be packed")
        for entry in sorted(dirs + files):
            path = Path(root) / entry
            found.append((path, f"{name}/{path.relative_to(bundle).as_posix()}"))
    return found


def _archive_members(bundle: Path, name: str) -> list[tuple[Path | bytes, str]]:
    """`_members`, but a teacher sharing its outer bundle's tokenizer gets its own copy."""
    members: list[tuple[Path | bytes, str]] = list(_members(bundle, name))
    meta, tokenizer = standalone_config(bundle)
    if meta["tokenizer"] != read_config(bundle)["tokenizer"]:
        config, text = f"{name}/{CONFIG_FILE}", json.dumps(meta, indent=2) + "\n"
        members = [(text.encode(), a) if a == config else (m, a) for m, a in members]
        members += [(f, f"{name}/{n}") for n, f in tokenizer.items() if not (bundle / n).exists()]
    return members


def _write_tar(raw: BinaryIO, members: list[tuple[Path | bytes, str]]) -> None:
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, arcname in members:
            info = tarfile.TarInfo(arcname)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if isinstance(path, bytes):
                info.mode, info.size = 0o644, len(path)
                tar.addfile(info, io.BytesIO(path))
                continue
            if path.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
                continue
            info.mode, info.size = 0o644, path.stat().st_size  # links are followed
            with open(path, "rb") as f:
                tar.addfile(info, f)


def pack(
    bundle: str | Path,
    out: str | Path = ".",
    *,
    name: str | None = None,
    compression: str = "gz",
    description: str | None = None,
    licence: str | None = None,
) -> dict:
    """Pack a bundle into `out/NAME.tar.gz` (or `.tar.xz`); return its index entry."""
    bundle = Path(bundle)
    meta = check_bundle(bundle)
    name = check_name(name or bundle.resolve().name)
    if compression not in SUFFIXES:
        raise LanmtError(f"unknown compression {compression!r} (known: {', '.join(SUFFIXES)})")
    out = Path(out)
    if out.resolve().is_relative_to(bundle.resolve()):
        raise LanmtError(f"{out}: write the archive outside the bundle it packs")
    archive = out / f"{name}{SUFFIXES[compression]}"
    members = _archive_members(bundle, name)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    # Permissions as any new file (0644 under the usual umask), so a web server can serve it.
    with atomic_file(archive) as tmp, open(tmp, "wb") as raw:
        if compression == "gz":
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped:
                _write_tar(zipped, members)
        else:
            with lzma.LZMAFile(raw, "wb", preset=6) as zipped:
                _write_tar(zipped, members)
    return index_entry(meta, name, archive, description, licence)


def add_to_index(index_file: Path, entry: dict) -> None:
    """Add `entry` to an index.json (created if missing), replacing one of the same name."""
    index_file = Path(index_file)
    data = {"format_version": 1, "models": []}
    if index_file.exists():
        try:
            data = json.loads(index_file.read_text())
            models = [m for m in data["models"] if m.get("name") != entry["name"]]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise LanmtError(f"{index_file}: not a lanmt index") from None
        data["models"] = models
    data["models"] = sorted([*data["models"], entry], key=lambda m: m["name"])
    with atomic_file(index_file) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def _member_parts(member: tarfile.TarInfo, archive: Path) -> tuple[str, ...]:
    """The path of a member as checked components; refuse anything that is not safe."""
    name = member.name
    parts = tuple(p for p in PurePosixPath(name).parts if p != ".")
    if name.startswith(("/", "\\")) or ".." in parts or not parts:
        raise LanmtError(f"{archive}: refusing member {name!r}: its path leaves the model folder")
    if member.issym() or member.islnk():
        raise LanmtError(f"{archive}: refusing member {name!r}: archives may not hold links")
    if not (member.isfile() or member.isdir()):
        raise LanmtError(f"{archive}: refusing member {name!r}: not a plain file or folder")
    return parts


def unpack(archive: str | Path, dest: str | Path) -> Path:
    """Unpack a model archive into the existing folder `dest`; return the bundle folder.

    All members are checked before the first byte is written. The caller removes `dest`
    on failure.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = [(m, _member_parts(m, archive)) for m in tar.getmembers()]
            tops = {parts[0] for _, parts in members}
            if len(tops) != 1 or any(len(p) == 1 and m.isfile() for m, p in members):
                raise LanmtError(f"{archive}: a model archive holds exactly one top-level folder")
            root = dest.resolve()
            for member, parts in members:
                target = dest.joinpath(*parts)
                if not target.resolve().is_relative_to(root):  # never true without links
                    raise LanmtError(f"{archive}: refusing member {member.name!r}")
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                with open(target, "wb") as f:
                    copy_stream(src, f)
    except _BAD_ARCHIVE as err:
        raise LanmtError(f"{archive}: not a valid model archive ({err})") from None
    bundle = dest / tops.pop()
    try:
        check_bundle(bundle)
    except LanmtError as err:
        raise LanmtError(f"{archive}: the archive holds no valid model bundle ({err})") from None
    return bundle
