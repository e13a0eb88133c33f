"""Named models: the index, where installed models live, download, install and removal.

- The **index** (`lanmt_cli/index.json`, shipped with the package) lists the models that
  exist as archives: name, languages, description, archive file name, size, sha256,
  licence. `--index` or `LANMT_INDEX` (a file or URL) replaces it.
- A **mirror** is a folder (http(s) URL, `file://` URL or plain directory) holding the
  archives under the file names of the index, and optionally an `index.json` of its own
  for models the main index does not list (`lanmt pack --index` writes one). Archives
  are looked for at `--mirror`, else `LANMT_MIRROR`, else the index's `"mirror"` field,
  else (for an index read from a file or URL) the folder the index lies in. The sha256
  of the main index wins: a mirror cannot change a model the main index lists.
- Installed models live in `DATA/models/NAME/` (DATA: `LANMT_HOME`, else the user data
  folder of platformdirs). The default model ships inside the package.

`resolve_model` turns `--model NAME|DIR` into a bundle folder without any network call.
Installs go through a temporary folder and a rename under a per-model lock, so a failed
or concurrent download never leaves half a model.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lanmt_cli import fetch
from lanmt_cli.archive import NAME_RE, check_bundle, check_name, sha256_file, unpack
from lanmt_cli.errors import LanmtError
from lanmt_cli.textio import atomic_file, is_disk_full, os_error_cause, replace_dir

SHIPPED_INDEX = Path(__file__).parent / "index.json"
DEFAULT_MODEL_DIR = Path(__file__).parent / "models" / "default"
DEFAULT_NAME = "default"  # the embedded model; no other model may take this name
DEFAULT_DESCRIPTION = (
    "English-German LaNMT with its Transformer teacher, trained on Multi30k image captions "
    "(ships inside lanmt)"
)
INDEX_FILE = "index.json"


@dataclass(frozen=True)
class Planned:
    """A model the project means to publish but cannot offer yet: how to make it meanwhile."""

    name: str
    languages: dict
    description: str
    how: str

    def message(self) -> str:
        return (
            f"{self.name} is not published yet: its weights have not been trained, so there "
            f"is nothing to download. Train it yourself: {self.how}"
        )


PLANNED = {
    p.name: p
    for p in [
        Planned(
            "wmt14_ende",
            {"src": "en", "tgt": "de"},
            "LaNMT on WMT14 English-German (the paper's setting)",
            "fetch the WMT14 En-De text, then `lanmt prepare --train-src train.en "
            "--train-tgt train.de -o wmt14` and `lanmt train --data wmt14 --out run`; "
            "the model is then run/finetune/best (see the README).",
        ),
    ]
}


@dataclass(frozen=True)
class ModelEntry:
    """One model of an index: what `lanmt download` needs to find and check its archive."""

    name: str
    file: str  # archive file name on the mirror
    size: int  # bytes
    sha256: str
    languages: dict = field(default_factory=dict)
    description: str = ""
    licence: str = ""

    @classmethod
    def from_dict(cls, data: dict, where: str) -> ModelEntry:
        try:
            entry = cls(**{k: data[k] for k in data if k in cls.__dataclass_fields__})
        except TypeError as err:
            raise LanmtError(f"{where}: {err}") from None
        sha = entry.sha256
        if not (
            isinstance(entry.name, str)
            and NAME_RE.fullmatch(entry.name)
            and entry.name != DEFAULT_NAME
            and isinstance(entry.file, str)
            and NAME_RE.fullmatch(entry.file)
            and isinstance(entry.size, int)
            and entry.size >= 0
            and isinstance(sha, str)
            and len(sha) == 64
            and all(c in "0123456789abcdef" for c in sha)
        ):
            raise LanmtError(f"{where}: needs a name, a plain file name, a size and a sha256")
        return entry


@dataclass
class Index:
    """The models of one index file, and the mirror its archives are fetched from."""

    source: str
    entries: dict[str, ModelEntry]
    mirror: str | None  # base location of the archives, when the index says or implies it


def read_index(location: str, *, required: bool = True) -> Index:
    """Read an index from a file or URL; a missing optional one is empty."""
    raw = fetch.read_small(location)
    if raw is None:
        if required:
            raise LanmtError(f"no model index at {location}")
        return Index(location, {}, None)
    try:
        data = json.loads(raw)
        models = data["models"]
        if not isinstance(models, list):
            raise TypeError
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise LanmtError(
            f"{location}: not a lanmt model index (JSON with a 'models' list)"
        ) from None
    entries = {}
    for i, item in enumerate(models):
        if not isinstance(item, dict):
            raise LanmtError(f"{location}: models[{i}] is not an object")
        entry = ModelEntry.from_dict(item, f"{location}: models[{i}]")
        entries[entry.name] = entry
    shipped = Path(location) == SHIPPED_INDEX
    mirror = data.get("mirror") if isinstance(data.get("mirror"), str) else None
    mirror = mirror or (None if shipped else fetch.parent(location))
    return Index(location, entries, mirror)


def check_mirror(mirror: str) -> None:
    """A mirror is an http(s) or file:// URL, or a folder that exists: say so clearly."""
    scheme = urllib.parse.urlsplit(mirror).scheme
    if len(scheme) > 1 and scheme not in fetch.URL_SCHEMES:
        raise LanmtError(
            f"cannot read the mirror {mirror}: {scheme}:// is not supported "
            "(use an http(s):// or file:// URL, or a folder)"
        )
    path = fetch.local_path(mirror)
    if path is not None and not path.is_dir():
        why = "not a folder" if path.exists() else "no such folder"
        raise LanmtError(f"cannot read the mirror {mirror}: {why}")


def _indexes(index: str | None, mirror: str | None, *, remote: bool) -> Iterator[Index]:
    """The indexes to look names up in, most trusted first; http ones only if `remote`."""
    main = index or os.environ.get("LANMT_INDEX") or str(SHIPPED_INDEX)
    mirror = mirror or os.environ.get("LANMT_MIRROR")
    if mirror:
        check_mirror(mirror)
    if remote or not fetch.is_remote(main):
        found = read_index(main)
        if mirror:
            found.mirror = mirror
        yield found
    if mirror and (remote or not fetch.is_remote(mirror)):
        extra = read_index(fetch.join(mirror, INDEX_FILE), required=False)
        extra.mirror = mirror
        yield extra


def find_model(
    name: str, *, index: str | None = None, mirror: str | None = None, remote: bool = True
) -> tuple[ModelEntry, str | None] | None:
    """The index entry of `name` and the mirror to fetch it from; None if no index has it."""
    for idx in _indexes(index, mirror, remote=remote):
        if name in idx.entries:
            return idx.entries[name], idx.mirror
    return None


def available(
    *, index: str | None = None, mirror: str | None = None, remote: bool = True
) -> dict[str, ModelEntry]:
    """Every model the indexes list, by name (the more trusted index wins)."""
    found: dict[str, ModelEntry] = {}
    for idx in _indexes(index, mirror, remote=remote):
        for name, entry in idx.entries.items():
            found.setdefault(name, entry)
    return found


# --- where installed models live -------------------------------------------------


def home() -> Path:
    """The lanmt data folder: `LANMT_HOME`, else the platform's user data folder."""
    if os.environ.get("LANMT_HOME"):
        return Path(os.environ["LANMT_HOME"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("lanmt", appauthor=False))


def models_dir() -> Path:
    return home() / "models"


def installed() -> dict[str, Path]:
    """Installed models by name, the embedded default model first (if this build has one)."""
    found = {}
    if (DEFAULT_MODEL_DIR / "config.json").is_file():
        found[DEFAULT_NAME] = DEFAULT_MODEL_DIR
    root = models_dir()
    if root.is_dir():
        for path in sorted(root.iterdir()):
            if not path.name.startswith(".") and (path / "config.json").is_file():
                found.setdefault(path.name, path)
    return found


def _names(names) -> str:
    return ", ".join(sorted(names)) or "none"


def _installed_names() -> str:
    """Installed models, without the embedded default (which is shipped, not installed)."""
    return _names(n for n in installed() if n != DEFAULT_NAME)


def _unknown(name: str, known: dict[str, ModelEntry], note: str = "") -> LanmtError:
    embedded = f"embedded: {DEFAULT_NAME}; " if DEFAULT_NAME in installed() else ""
    return LanmtError(
        f"unknown model {name!r}; {embedded}installed: {_installed_names()}; "
        f"available for download: {_names(known)}{note}; planned: {_names(PLANNED)} "
        "(see `lanmt models`)"
    )


def _not_listed(name: str, mirror: str | None, known: dict[str, ModelEntry]) -> LanmtError:
    """`lanmt download NAME` for a name no index lists, saying what was looked at."""
    mirror = mirror or os.environ.get("LANMT_MIRROR")
    where = ""
    if mirror:
        has_index = fetch.read_small(fetch.join(mirror, INDEX_FILE)) is not None
        where = f" (the mirror {mirror} {'lists' if has_index else 'has no'} {INDEX_FILE})"
    path = installed().get(name)
    if path is not None:
        return LanmtError(
            f"{name} is installed at {path}, but no model index lists it{where}, so it cannot "
            "be downloaded again; reinstall it from its archive with `lanmt download --from`"
        )
    return _unknown(name, known, where)


def resolve_model(spec: str | None) -> Path:
    """The bundle folder for `--model NAME|DIR` (None: the default model). No network."""
    if spec is None or spec == DEFAULT_NAME:
        if (DEFAULT_MODEL_DIR / "config.json").is_file():
            return DEFAULT_MODEL_DIR
        raise LanmtError(
            "no default model ships in this build of lanmt; pass --model with a model "
            "folder or the name of an installed model (`lanmt models` lists them; "
            "`lanmt download NAME` installs one)"
        )
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.is_file() and spec.endswith((".tar.gz", ".tar.xz", ".tgz")):
        raise LanmtError(
            f"{spec} is a model archive: install it with `lanmt download --from {spec}`"
        )
    if not NAME_RE.fullmatch(spec) or os.sep in spec or "/" in spec:
        raise LanmtError(f"{spec}: no such model folder, and not a model name")
    models = installed()
    if spec in models:
        return models[spec]
    known = available(remote=False)
    if spec in known:
        raise LanmtError(f"model {spec!r} is not installed; get it with `lanmt download {spec}`")
    if spec in PLANNED:
        raise LanmtError(PLANNED[spec].message())
    raise _unknown(spec, known)


# --- install, download, remove ---------------------------------------------------


@contextlib.contextmanager
def _locked(name: str, say: Callable[[str], None]) -> Iterator[None]:
    """Hold the lock of one model: one install or removal of it at a time, across processes."""
    from lanmt_cli.locks import hold

    lock_file = _folder(home() / "locks") / f"{name}.lock"  # the folder stays: others wait in it
    with hold(lock_file, f"{name} is being installed or removed", say):
        _clean_leftovers(name)
        yield


def _clean_leftovers(name: str) -> None:
    """Remove temporary folders of `name` left by a process that was killed (lock held)."""
    ours = re.compile(rf"\.{re.escape(name)}\.(tmp|old|removing)-[a-z0-9_]+")
    root = models_dir()
    if root.is_dir():
        for path in root.iterdir():
            if ours.fullmatch(path.name):
                shutil.rmtree(path, ignore_errors=True)


def _folder(path: Path) -> Path:
    """Create a folder of the data folder, or say clearly why it cannot be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LanmtError(
            f"cannot create {path}: {err.strerror} (LANMT_HOME picks another data folder)"
        ) from None
    return path


def _record_file(name: str) -> Path:
    """Where the index entry an installed model came from is kept (for `lanmt models`)."""
    return home() / "records" / f"{name}.json"


def _read_record(name: str) -> dict:
    try:
        record = json.loads(_record_file(name).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _install_locked(archive: Path, name: str, record: dict) -> Path:
    """Unpack, check and rename into place; nothing remains of a failed install."""
    root = _folder(models_dir())
    records = _folder(_record_file(name).parent)
    dest = root / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        bundle = unpack(archive, tmp)
        with atomic_file(records / f"{name}.json") as record_tmp:  # in place after the model
            record_tmp.write_text(json.dumps({**record, "name": name}, indent=2) + "\n")
            replace_dir(bundle, dest)
    except OSError as err:
        if is_disk_full(err):
            raise LanmtError(
                f"disk full while installing {name} into {root}; nothing was installed"
            ) from None
        raise LanmtError(f"cannot install {name} into {root}: {os_error_cause(err)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def install_archive(
    archive: str | Path,
    *,
    name: str | None = None,
    sha256: str | None = None,
    force: bool = False,
    say: Callable[[str], None] = _say,
) -> Path:
    """Install a local model archive as `name` (default: its top-level folder's name).

    When `sha256` is not given and the index lists `name`, the index's checksum is checked.
    """
    archive = Path(archive)
    if not archive.is_file():
        raise LanmtError(f"{archive}: no such archive")
    if name is None:
        name = _top_folder(archive)
    check_name(name)
    if name == DEFAULT_NAME:
        raise LanmtError(f"{DEFAULT_NAME!r} is the model shipped with lanmt; pick another name")
    listed = find_model(name, remote=False)
    record = asdict(listed[0]) if listed else {"name": name}
    got = sha256_file(archive)
    hint = ""
    if sha256 is None and listed:
        sha256 = listed[0].sha256
        hint = f" (the index lists {name} so; to install another model, give another --name)"
    if sha256 is not None and got != sha256.lower():
        raise LanmtError(
            f"{archive}: checksum mismatch: sha256 {got}, expected {sha256}{hint}; not installed"
        )
    record.update(file=archive.name, size=archive.stat().st_size, sha256=got)
    record["source"] = str(archive.resolve())
    with _locked(name, say):
        dest = models_dir() / name
        if dest.exists() and not force:
            say(f"{name} is already installed at {dest} (--force reinstalls it)")
            return dest
        return _install_locked(archive, name, record)


def _top_folder(archive: Path) -> str:
    import tarfile

    try:
        with tarfile.open(archive, "r:*") as tar:
            first = tar.next()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise LanmtError(f"{archive}: not a valid model archive ({err})") from None
    if first is None:
        raise LanmtError(f"{archive}: the archive is empty")
    parts = [p for p in first.name.split("/") if p not in ("", ".")]
    return parts[0] if parts else ""


def download(
    name: str,
    *,
    mirror: str | None = None,
    index: str | None = None,
    force: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = _say,
) -> Path:
    """Fetch the archive of `name` from a mirror, check its sha256, install it; its folder."""
    if name == DEFAULT_NAME:
        return resolve_model(None)  # shipped inside the package: nothing to fetch
    check_name(name)
    dest = models_dir() / name
    if dest.is_dir() and not force:  # no network call for what is already here
        say(f"{name} is already installed at {dest} (--force reinstalls it)")
        return dest
    found = find_model(name, index=index, mirror=mirror)
    if found is None:
        if name in PLANNED:
            raise LanmtError(PLANNED[name].message())
        raise _not_listed(name, mirror, available(index=index, mirror=mirror))
    entry, base = found
    if base is None:
        raise LanmtError(
            f"no mirror to download {name} from: pass --mirror URL or set LANMT_MIRROR "
            f"(an http(s) or file:// URL, or a folder, holding {entry.file})"
        )
    location = fetch.join(base, entry.file)
    part = _folder(home() / "downloads") / f"{entry.sha256[:16]}-{entry.file}.part"
    with _locked(name, say):
        if dest.is_dir() and not force:  # another process installed it while we waited
            say(f"{name} is already installed at {dest}")
            return dest
        say(f"downloading {name} ({entry.size / 1e6:.1f} MB) from {location}")
        fetch.fetch(location, part, size=entry.size, progress=progress, label=name)
        got = sha256_file(part)
        if got != entry.sha256:
            part.unlink(missing_ok=True)
            raise LanmtError(
                f"checksum mismatch for {location}: sha256 {got}, the index says "
                f"{entry.sha256}; the download was deleted"
            )
        try:
            return _install_locked(part, name, {**asdict(entry), "source": location})
        finally:
            part.unlink(missing_ok=True)


def remove(name: str, say: Callable[[str], None] = _say) -> Path:
    """Remove an installed model; its former folder."""
    if name == DEFAULT_NAME:
        raise LanmtError(f"{DEFAULT_NAME!r} ships inside lanmt and cannot be removed")
    check_name(name)
    dest = models_dir() / name
    with _locked(name, say):
        if not dest.is_dir():
            raise LanmtError(f"{name} is not installed (installed: {_installed_names()})")
        trash = models_dir() / f".{name}.removing-{os.getpid()}"
        try:
            os.replace(dest, trash)  # the model disappears at once, whole
            _record_file(name).unlink(missing_ok=True)
        except OSError as err:
            raise LanmtError(f"cannot remove {dest}: {err.strerror}") from None
        shutil.rmtree(trash, ignore_errors=True)
    return dest


def listing(
    *,
    index: str | None = None,
    mirror: str | None = None,
    remote: bool = True,
    say: Callable[[str], None] = _say,
) -> list[dict]:
    """One row per known model, by name; status: embedded, installed, damaged, available, planned.

    Every row has the same keys; those that do not apply are None.
    """
    blank = {
        k: None
        for k in ("languages", "description", "path", "source", "file", "size", "sha256", "licence")
    }
    rows: dict[str, dict] = {}
    for name, path in installed().items():
        row = rows[name] = {"name": name, "status": "installed", **blank}
        row.update({k: v for k, v in _read_record(name).items() if k in blank})
        row["path"] = str(path)
        try:
            meta = check_bundle(path)
        except LanmtError as err:
            row.update(status="damaged", description=str(err))
            continue
        if name == DEFAULT_NAME:
            row["status"] = "embedded"
        row["languages"] = meta.get("languages") or row["languages"] or {}
        own = (meta.get("info") or {}).get("description", "")
        fallback = DEFAULT_DESCRIPTION if name == DEFAULT_NAME else ""
        row["description"] = row["description"] or own or fallback
    try:
        known = available(index=index, mirror=mirror, remote=remote)
    except LanmtError as err:  # an unreachable index: still list what is installed
        say(f"warning: {err}")
        known = {}
    for name, entry in known.items():
        row = rows.setdefault(name, {"name": name, "status": "available", **blank})
        for key, value in asdict(entry).items():  # what is installed is shown as it is
            if row.get(key) in (None, "", {}):
                row[key] = value
    for name, plan in PLANNED.items():
        row = {"name": name, "status": "planned", **blank}
        row.update(languages=plan.languages, description=plan.description)
        rows.setdefault(name, row)
    return sorted(rows.values(), key=lambda r: r["name"])
