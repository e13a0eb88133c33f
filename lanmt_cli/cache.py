"""Converted and exported models kept for reuse: where they live, what names them, and the
check that a kept folder is still what was written.

A folder is named by the sha256 of the model's weights (`weights_key`), lives in `LANMT_CACHE`
or the platform's user cache (`cache_dir`), and holds a record, `lanmt.json`, of that key and
of the sha256 of every file (`write_record`, `intact`): a folder whose files differ from the
record is made again by its owner (`lanmt_cli.ct2`, `lanmt_cli.onnx_nat`,
`lanmt_cli.onnx_teacher`; `kept` does it for a folder of the cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

RECORD = "lanmt.json"  # {"key": ..., "files": {name: sha256}, ...} beside the files


def weights_key(model, salt: str) -> str:
    """sha256 of `salt` and the model's weights (names, shapes, float32 values)."""
    h = hashlib.sha256(salt.encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().float().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def cache_dir(kind: str) -> Path:
    """Where kept folders of `kind` (ctranslate2, onnx) are: `LANMT_CACHE`, else the user cache
    folder."""
    if os.environ.get("LANMT_CACHE"):
        return Path(os.environ["LANMT_CACHE"]).expanduser() / kind
    import platformdirs

    return Path(platformdirs.user_cache_dir("lanmt", appauthor=False)) / kind


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def file_sums(folder: Path, names: list[str] | None = None) -> dict[str, str]:
    """The sha256 of every file of a folder (or of those `names`), by name (the record aside)."""
    if names is None:
        names = sorted(p.name for p in folder.iterdir() if p.name != RECORD and p.is_file())
    return {name: sha256_file(folder / name) for name in names}


def write_record(folder: Path, key: str, **fields) -> None:
    """Record `key`, `fields` and the sha256 of every file now in `folder`."""
    record = {"key": key, **fields, "files": file_sums(folder)}
    (folder / RECORD).write_text(json.dumps(record, indent=2) + "\n")


def intact(folder: Path, key: str, names: list[str] | None = None) -> bool:
    """Whether `folder` holds what was written for `key`, every file (or those `names`) as
    recorded."""
    try:
        record = json.loads((folder / RECORD).read_text())
        if record["key"] != key:
            return False
        if names is None:
            return record["files"] == file_sums(folder)
        return {n: record["files"].get(n) for n in names} == file_sums(folder, names)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def kept(kind: str, key: str, files: list[str], make: Callable[[Path], object]) -> Path:
    """The cache folder of `kind` named by `key`: made by `make(folder)` (atomically) if it is
    missing, and made again if one of `files` differs from its record (stale or damaged)."""
    folder = cache_dir(kind) / key[:32]
    if not intact(folder, key, files):
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        make(folder)
    return folder
