"""`lanmt download NAME` installs a named model; `lanmt pack DIR` makes a model archive."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def download(
    name: str = typer.Argument(
        None,
        metavar="NAME",
        help="Model to install (see `lanmt models`); with --from, the name to install as.",
    ),
    mirror: str = typer.Option(
        None,
        "--mirror",
        metavar="URL|DIR",
        help="Where the archives lie: http(s) or file:// URL, or a folder [env: LANMT_MIRROR].",
    ),
    index: str = typer.Option(
        None,
        "--index",
        metavar="FILE|URL",
        help="Model index (file or URL) to use instead of the shipped one [env: LANMT_INDEX].",
    ),
    from_file: Path = typer.Option(
        None,
        "--from",
        metavar="ARCHIVE",
        help="Install this local archive (made by `lanmt pack`) instead.",
    ),
    sha256: str = typer.Option(
        None, "--sha256", metavar="HEX", help="Expected sha256 of the --from archive."
    ),
    force: bool = typer.Option(False, "--force", help="Reinstall a model already installed."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Download a named model, check its sha256 and install it; print its folder.

    Installed models live in the lanmt data folder (LANMT_HOME overrides it) and are used
    by `--model NAME` with no network access.
    """
    from lanmt_cli import hub
    from lanmt_cli.errors import LanmtError

    if from_file is not None:
        path = hub.install_archive(from_file, name=name, sha256=sha256, force=force)
    elif name is None:
        raise LanmtError("give a model name (see `lanmt models`) or --from ARCHIVE")
    else:
        if sha256 is not None:
            raise LanmtError("--sha256 goes with --from; downloads are checked against the index")
        path = hub.download(name, mirror=mirror, index=index, force=force, progress=not quiet)
    typer.echo(str(path))


def pack(
    bundle: Path = typer.Argument(
        ..., metavar="BUNDLE", help="Model bundle folder (config.json, weights, ...)."
    ),
    name: str = typer.Option(
        None, "--name", metavar="NAME", help="Model name [default: the folder's name]."
    ),
    out: Path = typer.Option(
        Path("."), "--out", "-o", metavar="DIR", help="Folder to write the archive into."
    ),
    xz: bool = typer.Option(False, "--xz", help="Make a .tar.xz (smaller, slower) not .tar.gz."),
    description: str = typer.Option(
        None, "--description", metavar="TEXT", help="One line for `lanmt models`."
    ),
    licence: str = typer.Option(
        None, "--licence", "--license", metavar="NAME", help="Licence of the weights."
    ),
    index: Path = typer.Option(
        None,
        "--index",
        metavar="FILE",
        help="Also add the entry to this index.json (created if missing).",
    ),
) -> None:
    """Pack a model bundle into an archive for a mirror; print its index entry (JSON).

    Put the archive and an index.json holding the entry in one folder or web folder,
    and `lanmt download NAME --mirror THERE` installs it.
    """
    from lanmt_cli import archive, ct2

    teacher = ct2.teacher_folder(bundle)
    if teacher is not None:  # the teacher ships converted for CTranslate2 too
        ct2.store_in_bundle(teacher)
    entry = archive.pack(
        bundle,
        out,
        name=name,
        compression="xz" if xz else "gz",
        description=description,
        licence=licence,
    )
    if index is not None:
        archive.add_to_index(index, entry)
    typer.echo(f"wrote {out / entry['file']} ({entry['size']} bytes)", err=True)
    typer.echo(json.dumps(entry, indent=2))


def register(app: typer.Typer, wrap) -> None:
    app.command("download")(wrap(download))
    app.command("pack")(wrap(pack))
