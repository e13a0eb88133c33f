"""`lanmt models` lists installed and available models; `lanmt models remove NAME`."""

from __future__ import annotations

import json

import typer

_JSON = typer.Option(False, "--json", help="Print a JSON list instead of a table.")
_INDEX = typer.Option(
    None,
    "--index",
    metavar="FILE|URL",
    help="Model index (file or URL) instead of the shipped one [env: LANMT_INDEX].",
)
_MIRROR = typer.Option(
    None,
    "--mirror",
    metavar="URL|DIR",
    help="Also list the models in this mirror's index.json [env: LANMT_MIRROR].",
)


def _languages(langs: dict) -> str:
    return "-".join(langs[k] for k in ("src", "tgt") if k in langs) or "?"


def _size(row: dict) -> str:
    return f"{row['size'] / 1e6:.1f} MB" if row.get("size") is not None else "-"


def list_models(as_json: bool = _JSON, index: str = _INDEX, mirror: str = _MIRROR) -> None:
    """List installed, embedded, available and planned models."""
    from lanmt_cli import hub

    rows = hub.listing(index=index, mirror=mirror)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = [("NAME", "LANGUAGES", "STATUS", "SIZE", "DESCRIPTION")]
    for row in rows:
        table.append(
            (
                row["name"],
                _languages(row["languages"]),
                row["status"],
                _size(row),
                row["description"],
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(4)]
    for *cells, description in table:
        typer.echo(
            "".join(c.ljust(w + 2) for c, w in zip(cells, widths, strict=True)) + description
        )
    typer.echo(f"\nmodels folder: {hub.models_dir()}", err=True)


def models(
    ctx: typer.Context, as_json: bool = _JSON, index: str = _INDEX, mirror: str = _MIRROR
) -> None:
    """Installed and available models (`lanmt models list`), and their removal."""
    if ctx.invoked_subcommand is None:
        list_models(as_json=as_json, index=index, mirror=mirror)


def remove(
    name: str = typer.Argument(..., metavar="NAME", help="Installed model to remove."),
) -> None:
    """Remove an installed model."""
    from lanmt_cli import hub

    path = hub.remove(name)
    typer.echo(f"removed {name} ({path})", err=True)


def register(app: typer.Typer, wrap) -> None:
    sub = typer.Typer(cls=app.info.cls, no_args_is_help=False, rich_markup_mode=None)
    sub.callback(invoke_without_command=True)(wrap(models))
    sub.command("list")(wrap(list_models))
    sub.command("remove")(wrap(remove))
    app.add_typer(sub, name="models")
